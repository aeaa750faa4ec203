"""Use cases on payment retry plans: record a failure, read, pause, resume, cancel, add a
payment method, and the decision step shared with the billing job."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from refundretry.v1 import events_pb2, retry_plan_pb2
from repository import payments, retries, settings
from repository.database import Connection, Database
from repository.ids import uuid7
from repository.settings import schedule_from_row
from service import changes, convert, dunning, validation
from service.auth import Principal
from service.domain.decline_codes import (
    CardNetwork,
    Classification,
    Decline,
    DeclineClass,
    classify,
    classify_codes,
    stored_network,
    validate_decline,
)
from service.domain.money import Money
from service.domain.network_rules import NetworkLimits, PastAttempt
from service.domain.retry_plan import (
    Action,
    Decision,
    Method,
    PlanState,
    PlanStatus,
    check_plan_transition,
    decide,
    plan_sources_of,
)
from service.domain.retry_schedule import DEFAULT_PAYMENT_SCHEDULE, RetrySchedule, validate_code
from service.domain.retry_timing import Rate, SuccessStats, buckets, validate_time_zone
from service.errors import (
    AlreadyPaid,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SubscriptionCancelled,
)
from service.gateways.base import GATEWAYS

log = logging.getLogger(__name__)

# Network rules look back at most this far (Visa's rolling 30 days, with a margin).
HISTORY_WINDOW = timedelta(days=31)
STATS_CACHE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RecordFailure:
    request_id: str
    payment_id: str
    billing_event_id: str
    customer_id: str
    subscription_id: str
    amount: Money
    gateway: str
    method: Method
    decline: Decline
    failed_at: datetime
    time_zone: str
    wallet: tuple[Method, ...] = ()
    schedule_code: str = DEFAULT_PAYMENT_SCHEDULE
    metadata: dict[str, str] = field(default_factory=dict)


def network_of(text: str, field_name: str) -> CardNetwork:
    try:
        return CardNetwork(text.upper() or "OTHER")
    except ValueError:
        known = ", ".join(n.value for n in CardNetwork)
        raise InvalidArgument(
            field_name, f"unknown card network {text!r}; known: {known}"
        ) from None


def _validate(cmd: RecordFailure) -> None:
    changes.validate_request_id(cmd.request_id)
    validation.identifier(cmd.payment_id, "payment_id")
    validation.identifier(cmd.billing_event_id, "billing_event_id", required=False)
    validation.identifier(cmd.customer_id, "customer_id")
    validation.identifier(cmd.subscription_id, "subscription_id", required=False)
    if cmd.gateway not in GATEWAYS:
        raise InvalidArgument("gateway", f"unknown gateway; known: {', '.join(GATEWAYS)}")
    validation.identifier(cmd.method.payment_method_id, "payment_method.payment_method_id")
    for index, method in enumerate(cmd.wallet):
        validation.identifier(method.payment_method_id, f"wallet[{index}].payment_method_id")
    validate_decline(cmd.decline, "decline")
    validate_time_zone(cmd.time_zone, "time_zone")
    validate_code(cmd.schedule_code, "retry_schedule_code")
    if cmd.failed_at > datetime.now(UTC) + timedelta(minutes=5):
        raise InvalidArgument("failure_time", "is in the future")
    if len(cmd.metadata) > 50:
        raise InvalidArgument("metadata", "at most 50 keys")


def slot_of(at: datetime, zone: ZoneInfo, first_failed_at: datetime) -> tuple[int, int, int]:
    """(local hour, day of month, days since the first failure) of an attempt: the buckets
    the smart schedule learns by."""
    return buckets(at, first_failed_at, zone)


class StatsCache:
    """Success rates by decline class, read from attempt_stats at most once a minute per
    process (they are derived data: a stale read only changes which good slot is chosen)."""

    def __init__(self) -> None:
        self._value: dict[DeclineClass, SuccessStats] = {}
        self._read_at = -STATS_CACHE_SECONDS

    async def get(self, conn: Connection) -> dict[DeclineClass, SuccessStats]:
        if time.monotonic() - self._read_at < STATS_CACHE_SECONDS:
            return self._value
        buckets: dict[DeclineClass, dict[str, dict[int, Rate]]] = {}
        for row in await retries.stats(conn):
            try:
                decline_class = DeclineClass(row["decline_class"])
            except ValueError:
                continue
            per = buckets.setdefault(decline_class, {})
            per.setdefault(row["dimension"], {})[row["bucket"]] = Rate(
                int(row["successes"]), int(row["attempts"])
            )
        self._value = {
            decline_class: SuccessStats(
                by_hour=per.get("hour", {}),
                by_day_of_month=per.get("day_of_month", {}),
                by_days_since_failure=per.get("days_since_failure", {}),
                overall=per.get("overall", {}).get(0, Rate(0, 0)),
            )
            for decline_class, per in buckets.items()
        }
        self._read_at = time.monotonic()
        return self._value


@dataclass(frozen=True, slots=True)
class RetryContext:
    """What every retry decision needs besides the plan: the network limits in force and the
    success statistics (cached per process, per database)."""

    limits: NetworkLimits = field(default_factory=NetworkLimits)
    stats: StatsCache = field(default_factory=StatsCache)


def past_attempts(rows: Sequence[asyncpg.Record]) -> list[PastAttempt]:
    out = []
    for row in rows:
        approved = row["outcome"] == "SUCCEEDED"
        declined = row["outcome"] in ("DECLINED", "REQUIRES_ACTION")
        if not (approved or declined):
            continue  # never reached the issuer: the networks do not count it
        network = stored_network(row["network"])
        out.append(
            PastAttempt(
                at=row["attempted_at"],
                card=row["payment_method_id"],
                network=network,
                approved=approved,
                classification=None
                if approved
                else classify_codes(
                    row["decline_code"], network, row["visa_response_code"], row["mc_advice_code"]
                ),
            )
        )
    return out


async def plan_methods(conn: Connection, plan_id: uuid.UUID) -> tuple[Method, ...]:
    return tuple(
        Method(r["payment_method_id"], stored_network(r["network"]))
        for r in await retries.methods(conn, plan_id)
    )


async def card_history(
    conn: Connection, methods: Sequence[Method], now: datetime
) -> list[PastAttempt]:
    return (await CardHistories.read(conn, [methods], now)).of(methods)


class CardHistories:
    """The card history of many wallets read in one query (a billing job chunk): what
    ``card_history`` gives for one wallet, for any of them."""

    def __init__(self, attempts: list[PastAttempt]) -> None:
        self._by_card: dict[str, list[PastAttempt]] = {}
        for attempt in attempts:
            self._by_card.setdefault(attempt.card, []).append(attempt)

    @classmethod
    async def read(
        cls, conn: Connection, wallets: Sequence[Sequence[Method]], now: datetime
    ) -> CardHistories:
        cards = sorted({m.payment_method_id for wallet in wallets for m in wallet})
        return cls(past_attempts(await retries.card_history(conn, cards, now - HISTORY_WINDOW)))

    def of(self, wallet: Sequence[Method]) -> list[PastAttempt]:
        cards = {m.payment_method_id for m in wallet}
        found = [a for card in cards for a in self._by_card.get(card, ())]
        return sorted(found, key=lambda a: a.at) if len(cards) > 1 else found


def decide_for(
    plan: asyncpg.Record,
    schedule: RetrySchedule,
    methods: tuple[Method, ...],
    *,
    last: Classification,
    decline_code: str,
    failed_at: datetime,
    attempts_made: int,
    history: list[PastAttempt],
    stats: dict[DeclineClass, SuccessStats],
    now: datetime,
    limits: NetworkLimits,
) -> Decision:
    """``decide`` for a plan row (no I/O: the caller has read the wallet, history, stats)."""
    return decide(
        schedule=schedule,
        state=PlanState(
            attempts_made=attempts_made,
            first_failed_at=plan["first_failed_at"],
            methods=methods,
            method_index=plan["method_index"],
            zone=ZoneInfo(plan["time_zone"]),
        ),
        last=last,
        decline_code=decline_code,
        failed_at=failed_at,
        history=history,
        stats=stats,
        now=now,
        limits=limits,
    )


async def decide_and_apply(
    conn: Connection,
    plan: asyncpg.Record,
    *,
    last: Classification,
    decline_code: str,
    failed_at: datetime,
    attempts_made: int,
    actor: str,
    now: datetime,
    context: RetryContext,
    announce: bool = True,
) -> Decision:
    """Decide the plan's next step after a failure, store the decision with its reason, move
    the plan (next attempt, wallet position, or EXHAUSTED) and, with ``announce``, write the
    event and audit row."""
    schedule_row = await settings.get_schedule(conn, plan["schedule_code"])
    assert schedule_row is not None  # a foreign key
    methods = await plan_methods(conn, plan["plan_id"])
    decision = decide_for(
        plan,
        schedule_from_row(schedule_row),
        methods,
        last=last,
        decline_code=decline_code,
        failed_at=failed_at,
        attempts_made=attempts_made,
        history=await card_history(conn, methods, now),
        stats=await context.stats.get(conn),
        now=now,
        limits=context.limits,
    )
    return await store_decision(
        conn,
        plan,
        decision,
        attempts_made=attempts_made,
        actor=actor,
        announce=announce,
        methods=methods,
    )


async def store_decision(
    conn: Connection,
    plan: asyncpg.Record,
    decision: Decision,
    *,
    attempts_made: int,
    actor: str,
    announce: bool = True,
    methods: tuple[Method, ...] | None = None,
) -> Decision:
    """Store ``decision`` and move the plan by it (``methods``: the wallet, when the caller has
    just read it); with ``announce`` also write its event and audit row (RecordPaymentFailure
    announces after the dunning steps due with the failure). The billing job stores the
    decisions of a whole chunk at once (``service.jobs.retry_job``)."""
    plan_id = plan["plan_id"]
    if methods is None:
        methods = await plan_methods(conn, plan_id)
    method_id = methods[decision.method_index].payment_method_id if methods else ""
    await retries.add_decision(
        conn,
        plan_id,
        action=decision.action.value,
        next_attempt_at=decision.at,
        payment_method_id=method_id,
        reason=decision.reason,
        rule_ids=decision.rule_ids,
        data=decision.data,
    )
    await retries.update_plan(
        conn,
        plan,
        next_attempt_at=decision.at,
        method_index=decision.method_index,
        waiting_for_method=decision.action is Action.WAIT_FOR_PAYMENT_METHOD,
        attempt_count=attempts_made,
    )
    if decision.action is Action.STOP:
        check_plan_transition(PlanStatus(plan["status"]), PlanStatus.EXHAUSTED)
        await retries.set_status(
            conn,
            plan_id,
            PlanStatus.EXHAUSTED,
            sorted(plan_sources_of(PlanStatus.EXHAUSTED)),
            decision.reason,
        )
    if announce:
        await announce_decision(conn, plan_id, decision, actor=actor)
    return decision


async def announce_decision(
    conn: Connection, plan_id: uuid.UUID, decision: Decision, *, actor: str
) -> None:
    """The event and audit row of the plan's latest decision, read back from the database."""
    row = await view(conn, plan_id)
    await announce(
        conn,
        decision,
        plan=convert.retry_plan_state(row, row["methods"]),
        latest=convert.retry_decision(row["decisions"][-1]),
        actor=actor,
    )


async def announce(
    conn: Connection,
    decision: Decision,
    *,
    plan: retry_plan_pb2.RetryPlan,
    latest: retry_plan_pb2.RetryDecision,
    actor: str,
) -> None:
    """The event and audit row of ``decision``, stored as ``latest``, for ``plan`` as it now
    is: retry.scheduled, or retry.exhausted and the dunning campaign's end."""
    plan_id = plan.plan_id
    if decision.action is Action.STOP:
        await changes.record(
            conn,
            actor=actor,
            action="retry.exhausted",
            entity_type="retry_plan",
            entity_id=plan_id,
            data={
                "decision": latest.sequence,
                "reason": decision.reason,
                "rule_ids": list(decision.rule_ids),
            },
            event_field="retry_plan_exhausted",
            event_payload=events_pb2.RetryPlanExhausted(plan=plan, reason=decision.reason),
        )
        await dunning.on_exhausted(conn, uuid.UUID(plan_id), actor=actor)
        return
    await changes.record(
        conn,
        actor=actor,
        action="retry.scheduled",
        entity_type="retry_plan",
        entity_id=plan_id,
        data={
            "decision": latest.sequence,
            "action": decision.action.value,
            "next_attempt_at": decision.at.isoformat() if decision.at else None,
            "payment_method_id": latest.payment_method_id,
            "rule_ids": list(decision.rule_ids),
        },
        event_field="retry_scheduled",
        event_payload=events_pb2.RetryScheduled(plan=plan, decision=latest),
    )


async def view(conn: Connection, plan_id: uuid.UUID) -> asyncpg.Record:
    row = await retries.view(conn, plan_id)
    if row is None:
        raise NotFound(f"retry plan {plan_id} does not exist")
    return row


def amount_due(plan: asyncpg.Record) -> int:
    """What a plan has left to collect, in minor units of its currency: its amount less what
    payments have paid of it (an int, not Money: the billing job asks once per attempt)."""
    due: int = plan["amount"] - plan["amount_paid"]
    return due


async def _paid_before(conn: Connection, cmd: RecordFailure) -> int:
    """What payments recorded before the failure was reported paid of it (a payment.failed can
    be handled after the payment.succeeded of the same invoice: the queues are consumed
    independently). A new plan collects only the rest. Raises AlreadyPaid when nothing is
    left to collect (retrying would charge the customer twice), or when a payment of it is in
    another currency (the amounts cannot be compared: a person must look)."""

    def paid_already(how: str) -> AlreadyPaid:
        return AlreadyPaid(
            f"payment {cmd.payment_id!r} is paid already ({how}): a failure reported after "
            "that starts no retries"
        )

    recovered = await retries.recovered_already(conn, cmd.payment_id, cmd.billing_event_id)
    if recovered is not None:
        raise paid_already(recovered)
    paid = 0
    for row in await retries.payments_of(conn, cmd.payment_id, cmd.billing_event_id):
        how = (
            f"payment {row['payment_id']} was recorded as captured at "
            f"{row['captured_at'].isoformat()}, {Money(row['currency'], row['captured_amount'])}"
        )
        if row["currency"] != cmd.amount.currency:
            raise paid_already(f"{how}, not in {cmd.amount.currency}: check it")
        paid += row["captured_amount"]
        if paid >= cmd.amount.minor_units:
            raise paid_already(how)
    return paid


def _same_payment(plan: asyncpg.Record, cmd: RecordFailure) -> None:
    """Another failure of a payment with an open plan must describe the same payment: its
    amount, customer and gateway (the plan charges its customer's methods through its
    gateway), and its subscription when both name one."""

    def differs(field: str, open_value: str, given: str) -> InvalidArgument:
        return InvalidArgument(
            field,
            f"payment {cmd.payment_id!r} has an open plan for {open_value}, not {given}",
        )

    if (plan["currency"], plan["amount"]) != (cmd.amount.currency, cmd.amount.minor_units):
        raise differs("amount", str(Money(plan["currency"], plan["amount"])), str(cmd.amount))
    if plan["customer_id"] != cmd.customer_id:
        raise differs("customer_id", f"customer {plan['customer_id']!r}", repr(cmd.customer_id))
    if plan["gateway"] != cmd.gateway:
        raise differs("gateway", f"gateway {plan['gateway']!r}", repr(cmd.gateway))
    if plan["subscription_id"] and cmd.subscription_id not in ("", plan["subscription_id"]):
        raise differs(
            "subscription_id",
            f"subscription {plan['subscription_id']!r}",
            repr(cmd.subscription_id),
        )


async def record_payment_failure(
    db: Database, principal: Principal, cmd: RecordFailure, *, context: RetryContext
) -> asyncpg.Record:
    """Start the failed payment's retry plan, or advance its open plan, and decide the next
    step. Returns the plan (its last decision is this failure's)."""
    _validate(cmd)
    digest = changes.fingerprint(
        "RecordPaymentFailure",
        {k: getattr(cmd, k) for k in cmd.__dataclass_fields__ if k != "request_id"},
    )
    new_plan_id = uuid7()
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "RecordPaymentFailure", cmd.request_id, digest, str(new_plan_id)
        )
        if first is not None:
            return await view(conn, uuid.UUID(first))
        if await settings.get_schedule(conn, cmd.schedule_code) is None:
            raise InvalidArgument("retry_schedule_code", f"no schedule {cmd.schedule_code!r}")
        # A payment of it being recorded at the same time ends first (and recovers an open
        # plan), or waits for this failure's plan to commit and then recovers it.
        # So does a cancellation of its subscription (which cancels the subscription's plans).
        await payments.lock_settling(
            conn, cmd.payment_id, cmd.billing_event_id, cmd.subscription_id
        )
        plan = await retries.open_plan_for_payment(conn, cmd.payment_id)
        if plan is None:
            # A payment.failed handled after the payment.succeeded that settled it (the two
            # queues are consumed independently), or a late duplicate: retrying would charge
            # the customer twice.
            amount_paid = await _paid_before(conn, cmd)
            if cmd.subscription_id:
                cancelled = await retries.cancellation(conn, cmd.subscription_id)
                if cancelled is not None:
                    # Its subscription.cancelled came first (the queues are independent):
                    # a cancelled subscription's invoices are not collected any more.
                    raise SubscriptionCancelled(
                        f"subscription {cmd.subscription_id!r} was cancelled (cancel time "
                        f"{cancelled['cancelled_at'].isoformat()}): the failures of its "
                        "payments start no retries"
                    )
            await retries.insert_plan(
                conn,
                plan_id=new_plan_id,
                payment_id=cmd.payment_id,
                billing_event_id=cmd.billing_event_id,
                customer_id=cmd.customer_id,
                subscription_id=cmd.subscription_id,
                currency=cmd.amount.currency,
                amount=cmd.amount.minor_units,
                gateway=cmd.gateway,
                schedule_code=cmd.schedule_code,
                time_zone=cmd.time_zone,
                first_failed_at=cmd.failed_at,
                metadata=cmd.metadata,
                amount_paid=amount_paid,
            )
            plan = await retries.lock(conn, new_plan_id)
            assert plan is not None
            await dunning.assign_campaign(conn, plan)
            plan = await retries.lock(conn, new_plan_id)
            assert plan is not None
        else:
            _same_payment(plan, cmd)
        plan_id = plan["plan_id"]
        for method in (cmd.method, *cmd.wallet):
            await retries.add_method(conn, plan_id, method.payment_method_id, method.network)
        methods = await plan_methods(conn, plan_id)
        index = next(
            i for i, m in enumerate(methods) if m.payment_method_id == cmd.method.payment_method_id
        )
        if index != plan["method_index"]:
            await retries.update_plan(conn, plan, method_index=index)
            plan = await retries.lock(conn, plan_id)
            assert plan is not None
        classification = classify(cmd.decline)
        now = datetime.now(UTC)
        attempt_number = await retries.next_attempt_number(conn, plan_id)
        hour, day, days = slot_of(
            cmd.failed_at, ZoneInfo(plan["time_zone"]), plan["first_failed_at"]
        )
        await retries.insert_attempt(
            conn,
            retries.NewAttempt(
                plan_id=plan_id,
                attempt_number=attempt_number,
                source="FAILURE",
                attempted_at=cmd.failed_at,
                payment_method_id=cmd.method.payment_method_id,
                network=cmd.method.network.value,
                outcome="DECLINED",
                idempotency_key=f"failure-{plan_id}-{attempt_number}",
                local_hour=hour,
                day_of_month=day,
                days_since_failure=days,
                amount=cmd.amount.minor_units,  # the same as the plan's (_same_payment)
                decline_code=cmd.decline.code,
                visa_response_code=cmd.decline.visa_response_code,
                mc_advice_code=cmd.decline.mc_advice_code,
                decline_class=classification.decline_class.value,
                message=classification.reason,
            ),
        )
        decision = await decide_and_apply(
            conn,
            plan,
            last=classification,
            decline_code=cmd.decline.code,
            failed_at=cmd.failed_at,
            attempts_made=plan["attempt_count"] + 1,
            actor=principal.name,
            now=now,
            context=context,
            announce=False,
        )
        # Dunning steps due by now run with the failure (the first notice can go out at once);
        # the decision is announced after them, so a notice precedes an exhaustion and its
        # final action, and a RETRY step due now has already brought the attempt forward.
        await dunning.run_due_steps(conn, plan_id, now=now, actor=principal.name)
        await announce_decision(conn, plan_id, decision, actor=principal.name)
        return await view(conn, plan_id)


async def get_plan(db: Database, plan_id_text: str) -> asyncpg.Record:
    plan_id = validation.uuid_id(plan_id_text, "plan_id", "retry plan")
    async with db.connection() as conn:
        return await view(conn, plan_id)


@dataclass(frozen=True, slots=True)
class ListPlans:
    page_size: int = 0
    page_token: str = ""
    status: PlanStatus | None = None
    customer_id: str = ""
    subscription_id: str = ""
    payment_id: str = ""


async def list_plans(db: Database, query: ListPlans) -> tuple[list[asyncpg.Record], str]:
    size = validation.page_size(query.page_size)
    for name in ("customer_id", "subscription_id", "payment_id"):
        validation.identifier(getattr(query, name), name, required=False)
    filters = (query.status, query.customer_id, query.subscription_id, query.payment_id)
    after = validation.keyset_after(query.page_token, filters)
    async with db.connection() as conn:
        rows = await retries.list_views(
            conn,
            status=query.status.value if query.status else None,
            customer_id=query.customer_id or None,
            subscription_id=query.subscription_id or None,
            payment_id=query.payment_id or None,
            after=after,
            limit=size + 1,
        )
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], validation.keyset_token(last["created_at"], last["plan_id"], filters)


async def _locked_plan(conn: Connection, plan_id: uuid.UUID) -> asyncpg.Record:
    plan = await retries.lock(conn, plan_id)
    if plan is None:
        raise NotFound(f"retry plan {plan_id} does not exist")
    return plan


def _no_attempt_in_flight(plan: asyncpg.Record) -> None:
    lease = plan["lease_expires_at"]
    if lease is not None and lease > datetime.now(UTC):
        raise FailedPrecondition(
            "an attempt of this plan is running; its outcome is recorded in a moment"
        )


async def change_status(
    db: Database,
    principal: Principal,
    *,
    scope: str,
    request_id: str,
    plan_id_text: str,
    target: PlanStatus,
    reason: str,
    context: RetryContext,
) -> asyncpg.Record:
    """Pause, cancel or resume (ACTIVE) a plan. Resuming decides afresh: a paused plan's old
    attempt time may have passed, or a network rule may now ask to wait."""
    changes.validate_request_id(request_id)
    plan_id = validation.uuid_id(plan_id_text, "plan_id", "retry plan")
    validation.text(reason, "reason")
    digest = changes.fingerprint(scope, str(plan_id), target.value, reason)
    async with db.transaction() as conn:
        if await changes.replayed(conn, scope, request_id, digest, str(plan_id)):
            return await view(conn, plan_id)
        plan = await _locked_plan(conn, plan_id)
        current = PlanStatus(plan["status"])
        check_plan_transition(current, target)
        _no_attempt_in_flight(plan)
        pending = await retries.open_attempt(conn, plan_id)
        if pending is not None and target is PlanStatus.CANCELED:
            raise FailedPrecondition(
                f"the outcome of attempt {pending['attempt_number']} is not known yet (the "
                "gateway may have charged); the billing job replays it with the same key"
            )
        await retries.set_status(conn, plan_id, target, [current], reason)
        if target is PlanStatus.ACTIVE and not plan["waiting_for_method"]:
            plan = await _locked_plan(conn, plan_id)
            await redecide(conn, plan, actor=principal.name, context=context)
        return await _announce_status(
            conn,
            plan_id,
            target,
            actor=principal.name,
            data={"from": current.value, "reason": reason},
        )


_STATUS_ACTIONS = {
    PlanStatus.PAUSED: "retry.paused",
    PlanStatus.CANCELED: "retry.canceled",
    PlanStatus.ACTIVE: "retry.resumed",
}


async def _announce_status(
    conn: Connection, plan_id: uuid.UUID, target: PlanStatus, *, actor: str, data: dict[str, Any]
) -> asyncpg.Record:
    """The event (``RetryPlanChanged``) and audit row of a plan moved to ``target`` by a person
    or a cancellation; returns the plan's view."""
    row = await view(conn, plan_id)
    await changes.record(
        conn,
        actor=actor,
        action=_STATUS_ACTIONS[target],
        entity_type="retry_plan",
        entity_id=str(plan_id),
        data=data,
        event_field="retry_plan_changed",
        event_payload=events_pb2.RetryPlanChanged(
            plan=convert.retry_plan_state(row, row["methods"])
        ),
    )
    return row


async def _last_failure(conn: Connection, plan_id: uuid.UUID) -> dict[str, Any]:
    """The plan's latest declined attempt, as the view's JSON gives it."""
    row = await view(conn, plan_id)
    failures: list[dict[str, Any]] = [a for a in row["attempts"] if a["decline_class"]]
    assert failures, "a plan starts with a failure"
    return failures[-1]


async def redecide(
    conn: Connection, plan: asyncpg.Record, *, actor: str, context: RetryContext
) -> Decision:
    """Decide again from the plan's last failure: after resume, or when the billing job's guard
    refuses a due attempt (the new time then respects the allowed hours and the span too)."""
    last = await _last_failure(conn, plan["plan_id"])
    network = CardNetwork(last["network"])
    decline = Decline(
        last["decline_code"], network, last["visa_response_code"], last["mc_advice_code"]
    )
    return await decide_and_apply(
        conn,
        plan,
        last=classify(decline),
        decline_code=decline.code,
        failed_at=datetime.fromisoformat(last["attempted_at"]),
        attempts_made=plan["attempt_count"],
        actor=actor,
        now=datetime.now(UTC),
        context=context,
    )


async def add_payment_method(
    db: Database,
    principal: Principal,
    request_id: str,
    plan_id_text: str,
    method: Method,
) -> asyncpg.Record:
    """Add a method to the wallet. A plan waiting for one moves to it and is due at once
    (the customer is waiting for it: allowed hours do not apply; the network rules are still
    checked by the billing job right before the attempt)."""
    changes.validate_request_id(request_id)
    plan_id = validation.uuid_id(plan_id_text, "plan_id", "retry plan")
    validation.identifier(method.payment_method_id, "payment_method.payment_method_id")
    digest = changes.fingerprint("AddPaymentMethod", str(plan_id), method)
    async with db.transaction() as conn:
        if await changes.replayed(conn, "AddPaymentMethod", request_id, digest, str(plan_id)):
            return await view(conn, plan_id)
        plan = await _locked_plan(conn, plan_id)
        if PlanStatus(plan["status"]) not in (PlanStatus.ACTIVE, PlanStatus.PAUSED):
            raise FailedPrecondition(f"retry plan {plan_id} is {plan['status']}")
        position = await retries.add_method(
            conn, plan_id, method.payment_method_id, method.network.value
        )
        if position is None:
            raise FailedPrecondition(
                f"payment method {method.payment_method_id} is already in the plan's wallet"
            )
        if plan["waiting_for_method"] and plan["status"] == PlanStatus.ACTIVE:
            await retries.update_plan(
                conn, plan, next_attempt_at=None, method_index=position, waiting_for_method=False
            )
            plan = await _locked_plan(conn, plan_id)
            now = datetime.now(UTC)
            decision = Decision(
                Action.RETRY,
                now,
                position,
                f"the customer added payment method {method.payment_method_id}: retry at once",
                ("customer_action.new_payment_method",),
            )
            await store_decision(
                conn, plan, decision, attempts_made=plan["attempt_count"], actor=principal.name
            )
        row = await view(conn, plan_id)
        await changes.record(
            conn,
            actor=principal.name,
            action="retry.payment_method_added",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data={"payment_method_id": method.payment_method_id, "position": position},
            event_field="retry_plan_changed",
            event_payload=events_pb2.RetryPlanChanged(
                plan=convert.retry_plan_state(row, row["methods"])
            ),
        )
        return row


async def _ending_reason(conn: Connection, plan: asyncpg.Record, reason: str) -> str:
    """The status reason of a plan about to end otherwise than by its own attempt: ``reason``,
    and what a person must know of an attempt still being charged, or of unknown outcome
    (nothing replays an attempt of an ended plan)."""
    pending = await retries.open_attempt(conn, plan["plan_id"])
    if pending is None:
        return reason
    number, key = pending["attempt_number"], pending["idempotency_key"]
    log.warning(
        "retry plan %s ends (%s) with attempt %d unresolved (key %s)",
        plan["plan_id"],
        reason,
        number,
        key,
        extra={"action": "retry.ended_with_attempt_unresolved", "plan_id": str(plan["plan_id"])},
    )
    lease = plan["lease_expires_at"]
    if pending["outcome"] == "OPEN" and lease is not None and lease > datetime.now(UTC):
        return (
            f"{reason}; attempt {number} was being charged (key {key}): its outcome is recorded "
            "when the gateway answers"
        )
    return (
        f"{reason}; the outcome of attempt {number} is not known (key {key}): check it at the "
        "gateway, it may have charged too"
    )


async def cancel_for_subscription(
    conn: Connection,
    *,
    subscription_id: str,
    customer_id: str,
    cancelled_at: datetime,
    actor: str,
) -> list[uuid.UUID]:
    """The subscription was cancelled: its open plans (ACTIVE or PAUSED) are CANCELED, so its
    unpaid invoices are charged no more and its customer gets no more dunning notices. Runs
    inside the caller's transaction, which holds the subscription's lock
    (``payments.lock_subscription``). A ``customer_id`` (not empty) must be every plan's."""
    canceled = []
    plans = await retries.open_plans_for_subscription(conn, subscription_id)
    for plan in plans:
        if customer_id and plan["customer_id"] != customer_id:
            raise InvalidArgument(
                "customer_id",
                f"retry plan {plan['plan_id']} of subscription {subscription_id!r} is of "
                f"customer {plan['customer_id']!r}, not {customer_id!r}",
            )
    for plan in plans:
        reason = await _ending_reason(
            conn,
            plan,
            f"subscription {subscription_id} was cancelled (cancel time "
            f"{cancelled_at.isoformat()}): its unpaid invoices are not collected any more",
        )
        moved = await _move_and_announce(
            conn,
            plan,
            PlanStatus.CANCELED,
            reason,
            actor=actor,
            data={"subscription_id": subscription_id},
        )
        if moved:
            canceled.append(plan["plan_id"])
    return canceled


async def _move_and_announce(
    conn: Connection,
    plan: asyncpg.Record,
    target: PlanStatus,
    reason: str,
    *,
    actor: str,
    data: dict[str, Any],
) -> bool:
    """Move a locked ``plan`` from its status to ``target`` because of something outside it (a
    cancellation, a payment), with its event and audit row (``data`` beside the status it
    left and the reason). False, and nothing written, when it had left that status."""
    current = PlanStatus(plan["status"])
    if not await retries.set_status(conn, plan["plan_id"], target, [current], reason):
        return False
    await _announce_status(
        conn,
        plan["plan_id"],
        target,
        actor=actor,
        data={"from": current.value, "reason": reason, **data},
    )
    return True


async def recover_by_payment(
    conn: Connection,
    *,
    payment_id: str,
    billing_event_id: str,
    paid: Money,
    actor: str,
) -> list[uuid.UUID]:
    """The customer paid another way (RecordPayment, payment.succeeded): each open plan of that
    payment (or billing event: plans of one invoice are the same debt) counts ``paid`` against
    what it has left to collect (``_count_paid``). Runs inside the caller's transaction.
    Returns the plans recovered."""
    return [
        plan["plan_id"]
        for plan in await retries.open_plans_for(conn, payment_id, billing_event_id)
        if await _count_paid(
            conn,
            plan,
            paid,
            by=f"payment {payment_id}",
            recovered_by="payment",
            data={"payment_id": payment_id},
            actor=actor,
        )
    ]


@dataclass(frozen=True, slots=True)
class Collected:
    """What a retry attempt collected: the plan it recovered, of which billing event, how
    much, and the gateway's charge."""

    plan_id: uuid.UUID
    billing_event_id: str
    amount: Money
    attempt: int
    gateway_charge_id: str


async def settle_other_plans(
    conn: Connection, collected: Sequence[Collected], *, actor: str
) -> list[uuid.UUID]:
    """Retry attempts that recovered their plans paid their billing events: every other open
    plan of those billing events (another failed payment of the same invoice: the same debt)
    counts what was collected, as a payment recorded for it would (``_count_paid``), instead
    of charging the customer for the invoice again. One statement finds them for a whole
    chunk of the billing job. Two plans of one invoice that both collected it in one chunk
    are logged as an error: the customer paid twice, and a person must refund one. Runs
    inside the caller's transaction, after the recovered plans were moved. Returns the plans
    recovered."""
    by_event: dict[str, list[Collected]] = {}
    for c in collected:
        if c.billing_event_id:  # a plan of no billing event has no other plans of it
            by_event.setdefault(c.billing_event_id, []).append(c)
    if not by_event:
        return []
    for billing_event_id, both in by_event.items():
        if len(both) > 1:
            log.error(
                "billing event %s was collected %d times by retry attempts of plans %s: the "
                "customer paid it more than once; refund the difference",
                billing_event_id,
                len(both),
                ", ".join(str(c.plan_id) for c in both),
                extra={"action": "retry_job.collected_twice", "billing_event_id": billing_event_id},
            )
    recovered = []
    for plan in await retries.open_plans_of_billing_events(conn, sorted(by_event)):
        first = by_event[plan["billing_event_id"]][0]
        if await _count_paid(
            conn,
            plan,
            first.amount,
            by=(
                f"attempt {first.attempt} of retry plan {first.plan_id} for the same billing "
                f"event (charge {first.gateway_charge_id})"
            ),
            recovered_by="retry",
            data={
                "retry_plan_id": str(first.plan_id),
                "attempt": first.attempt,
                "gateway_charge_id": first.gateway_charge_id,
            },
            actor=actor,
        ):
            recovered.append(plan["plan_id"])
    return recovered


async def _count_paid(
    conn: Connection,
    plan: asyncpg.Record,
    paid: Money,
    *,
    by: str,
    recovered_by: str,
    data: dict[str, Any],
    actor: str,
) -> bool:
    """``paid`` (``by`` says who paid) counted against what the open ``plan`` has left to
    collect. Paid in full (or more): RECOVERED (True). Paid in part: the plan goes on
    collecting the rest (``retry.partially_paid``). Paid in another currency: the amounts
    cannot be compared, so the plan is PAUSED for a person, never charged again on a guess."""
    plan_id = plan["plan_id"]
    due = Money(plan["currency"], amount_due(plan))
    if paid.currency != due.currency:
        reason = (
            f"{by} paid {paid}, and {due} is due: the currencies differ, so the service cannot "
            "tell whether the invoice is paid; check, then resume or cancel the plan"
        )
        log.warning(
            "retry plan %s paused: %s",
            plan_id,
            reason,
            extra={"action": "retry.payment_in_other_currency", "plan_id": str(plan_id)},
        )
        await _move_and_announce(conn, plan, PlanStatus.PAUSED, reason, actor=actor, data=data)
        return False
    if paid.minor_units < due.minor_units:
        await retries.add_paid(conn, plan_id, paid.minor_units)
        left = due.minor_units - paid.minor_units
        row = await view(conn, plan_id)
        await changes.record(
            conn,
            actor=actor,
            action="retry.partially_paid",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data={**data, "paid": paid.minor_units, "due": left},
            event_field="retry_plan_changed",
            event_payload=events_pb2.RetryPlanChanged(
                plan=convert.retry_plan_state(row, row["methods"])
            ),
        )
        return False
    said = f"paid by {by}"
    if paid.minor_units > due.minor_units:
        said += f" ({paid}, {Money(paid.currency, paid.minor_units - due.minor_units)} more "
        said += f"than the {due} due)"
    reason = await _ending_reason(conn, plan, said)
    moved = await retries.set_status(
        conn,
        plan_id,
        PlanStatus.RECOVERED,
        sorted(plan_sources_of(PlanStatus.RECOVERED)),
        reason,
    )
    if not moved:
        return False
    row = await view(conn, plan_id)
    await changes.record(
        conn,
        actor=actor,
        action="payment.recovered",
        entity_type="retry_plan",
        entity_id=str(plan_id),
        data={"recovered_by": recovered_by, **data},
        event_field="payment_recovered",
        event_payload=events_pb2.PaymentRecovered(
            plan=convert.retry_plan_state(row, row["methods"]), recovered_by=recovered_by
        ),
    )
    return True
