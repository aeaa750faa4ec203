"""The billing job's payment retries: run due attempts of retry plans through the gateways.

Per plan, like refunds, in short steps that never hold a transaction across the network:

1. **claim** due plans with ``FOR UPDATE SKIP LOCKED`` and a lease;
2. **open** (a transaction under the lease): check the card networks' rules again for this
   card at this moment — a guard, not a hint: a rule that forbids the attempt reschedules
   it instead — and insert the attempt as OPEN with the idempotency key
   ``retry-<plan>-attempt-<n>``; or find the open attempt of a worker that died;
3. **charge** through the gateway, then **record** the outcome, the next decision (or
   RECOVERED / EXHAUSTED), the event and the audit row in one transaction.

A worker killed mid-charge leaves its attempt OPEN; once its lease expires another worker
replays it with the same key, so the customer is charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from refundretry.v1 import events_pb2, retry_plan_pb2
from repository import retries as plans
from repository.database import Connection, Database
from service import changes, convert, dunning
from service.auth import SYSTEM
from service.domain.decline_codes import CardNetwork, Decline, classify
from service.domain.money import Money
from service.domain.network_rules import Violation, check_attempt
from service.domain.retry_plan import (
    Action,
    Method,
    PlanStatus,
    check_plan_transition,
    plan_sources_of,
)
from service.errors import FailedPrecondition, NotFound, Unavailable
from service.gateways.base import ChargeOutcome, ChargeRequest, ChargingGateway, OutcomeKind
from service.retries import (
    RetryContext,
    announce_decision,
    card_history,
    decide_and_apply,
    plan_methods,
    redecide,
    slot_of,
    view,
)

log = logging.getLogger(__name__)

AfterCharge = Callable[[ChargeRequest, ChargeOutcome], Awaitable[None]]
TRANSIENT_DB_RETRIES = 3
# Gateways keep idempotency keys for a limited time (Stripe: 24 hours): an attempt whose
# outcome stays unknown longer than this pauses the plan for a person to check.
UNKNOWN_GIVE_UP_AFTER = timedelta(hours=20)
# How old the success statistics may get before a job run rebuilds them.
STATS_MAX_AGE = timedelta(minutes=10)


def idempotency_key(plan_id: uuid.UUID, attempt: int) -> str:
    return f"retry-{plan_id}-attempt-{attempt}"


@dataclass(slots=True)
class RetrySummary:
    claimed: int = 0
    recovered: int = 0
    rescheduled: int = 0
    waiting_for_customer: int = 0
    exhausted: int = 0
    blocked_by_rules: int = 0
    unknown: int = 0
    lease_lost: int = 0
    errors: int = 0
    dunning_steps: int = 0

    def count(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)


@dataclass(frozen=True, slots=True)
class _Opened:
    request: ChargeRequest
    attempt_id: uuid.UUID
    gateway: str
    retry_of_class: str
    started_at: datetime


class RetryJob:
    def __init__(
        self,
        db: Database,
        gateways: Mapping[str, ChargingGateway],
        context: RetryContext,
        *,
        worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        unknown_replay_delay: timedelta = timedelta(seconds=30),
        concurrency: int = 16,
        after_charge: AfterCharge | None = None,
    ) -> None:
        self._db = db
        self._gateways = gateways
        self.context = context
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = lease
        self._unknown_replay = unknown_replay_delay
        self._concurrency = asyncio.Semaphore(concurrency)
        self._after_charge = after_charge

    async def run(self, *, due_by: datetime | None = None, limit: int = 500) -> RetrySummary:
        await self.refresh_stats_if_old()
        summary = RetrySummary()
        async with self._db.connection() as conn:
            claimed = await plans.claim_due(
                conn,
                due_by=due_by or datetime.now(UTC),
                limit=limit,
                worker=self.worker_id,
                lease_seconds=self._lease.total_seconds(),
            )
        summary.claimed = len(claimed)
        for result in await asyncio.gather(*(self._guarded(p, "SCHEDULED") for p in claimed)):
            summary.count(result)
        summary.dunning_steps = await dunning.run_due(self._db, actor=SYSTEM.name, limit=limit)
        return summary

    async def retry_now(self, plan_id: uuid.UUID, actor: str, request_id: str) -> asyncpg.Record:
        """Attempt at once (RetryNow): the plan must be ACTIVE, not being attempted, and the
        network rules must allow the card now — otherwise FAILED_PRECONDITION naming the
        rule. Returns the plan after the attempt; a replayed request id returns the plan
        without attempting again."""
        now = datetime.now(UTC)
        digest = changes.fingerprint("RetryNow", str(plan_id))
        async with self._db.transaction() as conn:
            if await changes.replayed(conn, "RetryNow", request_id, digest, str(plan_id)):
                return await view(conn, plan_id)
            plan = await plans.lock(conn, plan_id)
            if plan is None:
                raise NotFound(f"retry plan {plan_id} does not exist")
            if plan["status"] != PlanStatus.ACTIVE:
                raise FailedPrecondition(f"retry plan {plan_id} is {plan['status']}")
            if plan["lease_expires_at"] is not None and plan["lease_expires_at"] > now:
                raise FailedPrecondition("an attempt of this plan is already running")
            method, violation = await self._guard(conn, plan, now)
            if violation is not None:
                raise FailedPrecondition(
                    f"{violation.rule_id}: {violation.message}", rule_id=violation.rule_id
                )
            await plans.update_plan(conn, plan, next_attempt_at=now, waiting_for_method=False)
            await plans.claim_plan(conn, plan_id, self.worker_id, self._lease.total_seconds())
            await changes.record(
                conn,
                actor=actor,
                action="retry.retry_now",
                entity_type="retry_plan",
                entity_id=str(plan_id),
                data={"payment_method_id": method.payment_method_id},
                event_field="retry_plan_changed",
                event_payload=events_pb2.RetryPlanChanged(
                    plan=convert.retry_plan(await view(conn, plan_id))
                ),
            )
        result = await self._guarded(plan_id, "RETRY_NOW")
        if result == "errors":
            raise Unavailable("the attempt failed before its outcome was recorded; it is replayed")
        async with self._db.connection() as conn:
            return await view(conn, plan_id)

    async def _guard(
        self, conn: Connection, plan: asyncpg.Record, now: datetime
    ) -> tuple[Method, Violation | None]:
        """The card the plan would charge now, and the network rule that forbids it (None when
        every rule allows the attempt): checked right before each attempt, whatever its path."""
        methods = await plan_methods(conn, plan["plan_id"])
        method = methods[plan["method_index"]]
        violation = check_attempt(
            method.payment_method_id,
            method.network,
            now,
            await card_history(conn, methods, now),
            self.context.limits,
        )
        return method, violation

    async def refresh_stats_if_old(self) -> None:
        async with self._db.transaction() as conn:
            if await plans.stats_age(conn) < STATS_MAX_AGE:
                return
            locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('stats'))")
            if locked:
                await plans.refresh_stats(conn)

    async def _guarded(self, plan_id: uuid.UUID, source: str) -> str:
        async with self._concurrency:
            error: Exception | None = None
            for attempt in range(TRANSIENT_DB_RETRIES + 1):
                try:
                    return await self._process(plan_id, source)
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                    error = exc
                    if attempt == TRANSIENT_DB_RETRIES:
                        break
                except Exception as exc:
                    error = exc
                    break
            log.error(
                "retry plan %s failed in the billing job; its lease is released",
                plan_id,
                exc_info=error,
                extra={"action": "retry_job.plan_failed", "plan_id": str(plan_id)},
            )
            with contextlib.suppress(Exception):
                async with self._db.connection() as conn:
                    await plans.release_lease(conn, plan_id, self.worker_id)
            return "errors"

    async def _process(self, plan_id: uuid.UUID, source: str) -> str:
        opened = await self._open(plan_id, source)
        if isinstance(opened, str):
            return opened
        gateway = self._gateways.get(opened.gateway)
        if gateway is None:
            outcome = ChargeOutcome(
                OutcomeKind.NOT_ATTEMPTED, message="gateway not configured", retryable=True
            )
        else:
            try:
                outcome = await gateway.charge(opened.request)
            except Exception as exc:  # an adapter bug must not lose the attempt
                log.exception(
                    "gateway %s raised; the attempt is replayed with the same key",
                    gateway.name,
                    extra={"action": "retry_job.gateway_error"},
                )
                outcome = ChargeOutcome(
                    OutcomeKind.UNKNOWN, message=f"{type(exc).__name__}", retryable=True
                )
        if self._after_charge is not None:
            await self._after_charge(opened.request, outcome)
        return await self._record(plan_id, opened, outcome)

    async def _open(self, plan_id: uuid.UUID, source: str) -> _Opened | str:
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            plan = await plans.leased_plan(conn, plan_id, self.worker_id)
            if plan is None:
                return "lease_lost"
            open_attempt = await plans.open_attempt(conn, plan_id)
            if open_attempt is not None:  # a worker died mid-charge: replay, same key
                number = open_attempt["attempt_number"]
                method_id = open_attempt["payment_method_id"]
                attempt_id = open_attempt["attempt_id"]
                retry_of = open_attempt["retry_of_class"]
                started_at = open_attempt["attempted_at"]
            else:
                started_at = now
                method, violation = await self._guard(conn, plan, now)
                if violation is not None:
                    log.info(
                        "retry plan %s: %s refuses the attempt now; deciding again",
                        plan_id,
                        violation.rule_id,
                        extra={
                            "action": "retry_job.guard",
                            "plan_id": str(plan_id),
                            "rule_id": violation.rule_id,
                        },
                    )
                    await self._reschedule(conn, plan)
                    return "blocked_by_rules"
                number = await plans.next_attempt_number(conn, plan_id)
                method_id = method.payment_method_id
                retry_of = await plans.last_decline_class(conn, plan_id)
                hour, day, days = slot_of(now, ZoneInfo(plan["time_zone"]), plan["first_failed_at"])
                attempt_id = await plans.insert_attempt(
                    conn,
                    plans.NewAttempt(
                        plan_id=plan_id,
                        attempt_number=number,
                        source=source,
                        attempted_at=now,
                        payment_method_id=method_id,
                        network=method.network.value,
                        outcome="OPEN",
                        idempotency_key=idempotency_key(plan_id, number),
                        local_hour=hour,
                        day_of_month=day,
                        days_since_failure=days,
                        retry_of_class=retry_of,
                    ),
                )
                # attempt_count counts the attempts that reach the issuer
                await plans.update_plan(
                    conn, plan, waiting_for_method=False, attempt_count=plan["attempt_count"] + 1
                )
            request = ChargeRequest(
                plan_id=str(plan_id),
                customer_id=plan["customer_id"],
                payment_method=method_id,
                amount=Money(plan["currency"], plan["amount"]),
                idempotency_key=idempotency_key(plan_id, number),
                attempt=number,
                metadata=plan["metadata"],
            )
            return _Opened(request, attempt_id, plan["gateway"], retry_of, started_at)

    async def _reschedule(self, conn: Connection, plan: asyncpg.Record) -> None:
        """A rule forbids the attempt now: decide again (with the rule in the history, the new
        time is when it allows, in the allowed hours and within the span; or stop)."""
        await redecide(conn, plan, actor=SYSTEM.name, context=self.context)
        await plans.release_lease(conn, plan["plan_id"], self.worker_id)

    async def _record(self, plan_id: uuid.UUID, opened: _Opened, outcome: ChargeOutcome) -> str:
        now = datetime.now(UTC)
        network = _network(outcome.network) or None
        async with self._db.transaction() as conn:
            plan = await plans.leased_plan(conn, plan_id, self.worker_id)
            if plan is None:
                return "lease_lost"
            if outcome.kind is OutcomeKind.UNKNOWN or outcome.kind is OutcomeKind.PENDING:
                await plans.finish_attempt(
                    conn,
                    opened.attempt_id,
                    outcome="UNKNOWN",
                    decline_code="",
                    visa_response_code="",
                    mc_advice_code="",
                    decline_class="",
                    gateway_charge_id=outcome.gateway_charge_id,
                    message=outcome.message,
                )
                await plans.update_plan(
                    conn, plan, next_attempt_at=now + self._unknown_replay, waiting_for_method=False
                )
                await plans.release_lease(conn, plan_id, self.worker_id)
                await self._attempted(
                    conn, plan_id, opened, will_retry=True, next_at=now + self._unknown_replay
                )
                if now - opened.started_at > UNKNOWN_GIVE_UP_AFTER:
                    # Before the gateway forgets the idempotency key, a person must look.
                    await plans.set_status(
                        conn,
                        plan_id,
                        PlanStatus.PAUSED,
                        [PlanStatus.ACTIVE],
                        f"the outcome of attempt {opened.request.attempt} is unknown since "
                        f"{opened.started_at.isoformat()}: check "
                        f"{opened.request.idempotency_key} at the gateway, then resume",
                    )
                return "unknown"
            if outcome.kind is OutcomeKind.SUCCEEDED:
                await plans.finish_attempt(
                    conn,
                    opened.attempt_id,
                    outcome="SUCCEEDED",
                    decline_code="",
                    visa_response_code="",
                    mc_advice_code="",
                    decline_class="",
                    gateway_charge_id=outcome.gateway_charge_id,
                    message=outcome.message,
                )
                check_plan_transition(PlanStatus(plan["status"]), PlanStatus.RECOVERED)
                await plans.set_status(
                    conn,
                    plan_id,
                    PlanStatus.RECOVERED,
                    sorted(plan_sources_of(PlanStatus.RECOVERED)),
                    f"attempt {opened.request.attempt} succeeded",
                )
                snapshot = await self._attempted(
                    conn, plan_id, opened, will_retry=False, next_at=None
                )
                await changes.record(
                    conn,
                    actor=SYSTEM.name,
                    action="payment.recovered",
                    entity_type="retry_plan",
                    entity_id=str(plan_id),
                    data={
                        "recovered_by": "retry",
                        "attempt": opened.request.attempt,
                        "gateway_charge_id": outcome.gateway_charge_id,
                    },
                    event_field="payment_recovered",
                    event_payload=events_pb2.PaymentRecovered(plan=snapshot, recovered_by="retry"),
                )
                return "recovered"
            if outcome.kind is OutcomeKind.NOT_ATTEMPTED:
                decline = Decline("processing_error", network or CardNetwork.OTHER)
            elif outcome.kind is OutcomeKind.REQUIRES_ACTION:
                decline = Decline("authentication_required", network or CardNetwork.OTHER)
            else:
                decline = Decline(
                    outcome.decline_code or "generic_decline",
                    network or CardNetwork.OTHER,
                    outcome.visa_response_code,
                    outcome.mc_advice_code,
                )
            classification = classify(decline)
            await plans.finish_attempt(
                conn,
                opened.attempt_id,
                outcome="NOT_ATTEMPTED"
                if outcome.kind is OutcomeKind.NOT_ATTEMPTED
                else "REQUIRES_ACTION"
                if outcome.kind is OutcomeKind.REQUIRES_ACTION
                else "DECLINED",
                decline_code=decline.code,
                visa_response_code=decline.visa_response_code,
                mc_advice_code=decline.mc_advice_code,
                decline_class=classification.decline_class.value,
                gateway_charge_id=outcome.gateway_charge_id,
                message=outcome.message or classification.reason,
            )
            # NOT_ATTEMPTED never reached the issuer: it does not use up an attempt.
            attempts_made = plan["attempt_count"] - (
                1 if outcome.kind is OutcomeKind.NOT_ATTEMPTED else 0
            )
            decision = await decide_and_apply(
                conn,
                plan,
                last=classification,
                decline_code=decline.code,
                failed_at=now,
                attempts_made=attempts_made,
                actor=SYSTEM.name,
                now=now,
                context=self.context,
                announce=False,
            )
            await plans.release_lease(conn, plan_id, self.worker_id)
            snapshot = await self._attempted(
                conn,
                plan_id,
                opened,
                will_retry=decision.action is Action.RETRY,
                next_at=decision.at,
            )
            await announce_decision(conn, plan_id, decision, actor=SYSTEM.name, snapshot=snapshot)
            return {
                Action.RETRY: "rescheduled",
                Action.WAIT_FOR_PAYMENT_METHOD: "waiting_for_customer",
                Action.STOP: "exhausted",
            }[decision.action]

    async def _attempted(
        self,
        conn: Connection,
        plan_id: uuid.UUID,
        opened: _Opened,
        *,
        will_retry: bool,
        next_at: datetime | None,
    ) -> retry_plan_pb2.RetryPlan:
        """The attempt's event and audit row; returns the plan snapshot it carried."""
        row = await view(conn, plan_id)
        snapshot = convert.retry_plan(row)
        attempt = next(a for a in snapshot.attempts if a.attempt_number == opened.request.attempt)
        await changes.record(
            conn,
            actor=SYSTEM.name,
            action="retry.attempted",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data={
                "attempt": opened.request.attempt,
                "outcome": attempt.outcome,
                "idempotency_key": opened.request.idempotency_key,
                "will_retry": will_retry,
            },
            event_field="retry_attempted",
            event_payload=events_pb2.RetryAttempted(
                plan=snapshot,
                attempt=attempt,
                will_retry=will_retry,
                next_attempt_time=convert.ts(next_at),
            ),
        )
        return snapshot


def _network(text: str) -> CardNetwork | None:
    try:
        return CardNetwork(text.upper()) if text else None
    except ValueError:
        return CardNetwork.OTHER
