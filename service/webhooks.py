"""Gateway webhooks applied: each event once, with the same workflows and events as outcomes
the billing jobs learn by asking the gateway.

One transaction per event: its ``webhook_event`` row (the gateway's event id) and its effect
commit together or not at all. A replayed event finds its row and changes nothing (DUPLICATE); a
concurrent replay waits on the row's key until the first one committed. Every event is stored and
ends one of these ways:

* **APPLIED**: it changed something:
  - a refund outcome (succeeded, failed, needs a person) is recorded on the RefundEventDetail of
    the gateway's refund id by the billing job's own code (``BillingJob.apply_reported_outcome``:
    the refund's status, payment balances, ledger journal, ``refund.*`` event, audit row);
  - a charge outcome of a retry attempt whose outcome is not known yet makes the attempt's plan
    due now (``retry.gateway_notified``): the retry job reads the charge at its next run and
    records it through its normal path (decision, dunning, ``retry.attempted``,
    ``payment.recovered``), so there is one place that interprets a charge;
  - a dispute is recorded in ``payment_dispute`` (``payment.disputed``, then
    ``payment.dispute_updated``); no money moves;
* **IGNORED**: nothing to do: an event type this service does not use, a refund still pending, or
  an event older than what is recorded (the refund state machine refuses to move a refund
  backwards, e.g. a "pending" after a "succeeded"; a dispute keeps its latest stage);
* **UNMATCHED**: about an object this service does not know: a refund, charge or payment made
  elsewhere, or one whose gateway id the billing job has not stored yet (the event outran the
  gateway's answer): the job learns that outcome by asking the gateway, or, from a gateway that
  cannot be asked (Adyen), by reading this stored event at its next sync (:class:`ReportedReads`).
  Logged as a warning, for a person to look at.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from refundretry.v1 import events_pb2
from repository import webhooks as store
from repository.database import Connection, Database
from service import changes, convert, retries
from service.gateways import adyen_notifications
from service.gateways.base import (
    ChargeOutcome,
    ChargeRequest,
    ChargingGateway,
    OutcomeKind,
    RefundOutcome,
    RefundRequest,
    accepting_calls,
    probing,
    reads_refunds,
)
from service.gateways.notifications import (
    ChargeReported,
    DisputeReported,
    NotHandled,
    Notification,
    RefundReported,
)
from service.jobs.billing_job import BillingJob

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "APPLIED"
    IGNORED = "IGNORED"
    UNMATCHED = "UNMATCHED"
    DUPLICATE = "DUPLICATE"  # received before: nothing done (not a stored status)


@dataclass(frozen=True, slots=True)
class Handled:
    outcome: Outcome
    note: str


def actor_of(gateway: str) -> str:
    """Who a webhook's changes are attributed to in the audit trail and events."""
    return f"webhook:{gateway}"


class WebhookEvents:
    """Applies gateway notifications; the HTTP routes verify them first."""

    def __init__(self, db: Database, billing_job: BillingJob) -> None:
        self._db = db
        self._billing_job = billing_job

    async def handle(self, notification: Notification) -> Handled:
        n = notification
        received = store.ReceivedEvent(
            gateway=n.gateway,
            event_id=n.event_id,
            event_type=n.event_type,
            object_id=n.object_id,
            data=n.facts,
            occurred_at=n.occurred_at,
        )
        async with self._db.transaction() as conn:
            if not await store.claim_event(conn, received):
                handled = Handled(Outcome.DUPLICATE, "received before: nothing done")
            else:
                handled = await self._apply(conn, n)
                await store.settle_event(
                    conn, n.gateway, n.event_id, handled.outcome.value, handled.note
                )
        log.log(
            logging.WARNING if handled.outcome is Outcome.UNMATCHED else logging.INFO,
            "%s webhook %s (%s): %s, %s",
            n.gateway,
            n.event_id,
            n.event_type,
            handled.outcome.value.lower(),
            handled.note,
            extra={
                "action": f"webhook.{handled.outcome.value.lower()}",
                "gateway": n.gateway,
                "event_id": n.event_id,
                "event_type": n.event_type,
                "object_id": n.object_id,
            },
        )
        return handled

    async def _apply(self, conn: Connection, n: Notification) -> Handled:
        effect = n.effect
        if isinstance(effect, RefundReported):
            return await self._refund(conn, n, effect)
        if isinstance(effect, ChargeReported):
            return await self._charge(conn, n, effect)
        if isinstance(effect, DisputeReported):
            return await self._dispute(conn, n, effect)
        assert isinstance(effect, NotHandled)
        return Handled(Outcome.IGNORED, effect.reason)

    async def _refund(self, conn: Connection, n: Notification, effect: RefundReported) -> Handled:
        detail = await store.refund_detail(conn, n.gateway, effect.gateway_refund_id)
        if detail is None:
            return Handled(
                Outcome.UNMATCHED, f"no refund detail has {n.gateway} refund {n.object_id}"
            )
        detail_id, refund_id = detail["detail_id"], detail["refund_id"]
        outcome = effect.outcome
        if outcome.kind not in (
            OutcomeKind.SUCCEEDED,
            OutcomeKind.DECLINED,
            OutcomeKind.REQUIRES_ACTION,
        ):
            return Handled(
                Outcome.IGNORED,
                f"refund {refund_id}: still {outcome.kind.value.lower()} at the gateway",
            )
        result = await self._billing_job.apply_reported_outcome(
            conn,
            detail_id,
            refund_id,
            outcome,
            actor=actor_of(n.gateway),
            data={"webhook_event_id": n.event_id, "webhook_event_type": n.event_type},
        )
        if result is None:
            return Handled(
                Outcome.IGNORED,
                f"refund {refund_id}: its detail is {detail['status']}; "
                f"{outcome.kind.value} would move it backwards (an older event, or one applied "
                "already)",
            )
        return Handled(Outcome.APPLIED, f"refund {refund_id}: {result}")

    async def _charge(self, conn: Connection, n: Notification, effect: ChargeReported) -> Handled:
        attempt = await store.attempt_of_charge(conn, n.gateway, effect.gateway_charge_id)
        if attempt is None:
            return Handled(Outcome.UNMATCHED, f"no retry attempt charged {n.gateway} {n.object_id}")
        plan_id: uuid.UUID = attempt["plan_id"]
        number, recorded = attempt["attempt_number"], attempt["outcome"]
        if recorded not in ("OPEN", "UNKNOWN"):
            return Handled(
                Outcome.IGNORED,
                f"retry plan {plan_id}: attempt {number} is recorded as {recorded} already",
            )
        if attempt["plan_status"] != "ACTIVE" or not await store.make_plan_due(conn, plan_id):
            return Handled(
                Outcome.IGNORED,
                f"retry plan {plan_id} is {attempt['plan_status']}: the charge is read when "
                "the plan is resumed",
            )
        row = await retries.view(conn, plan_id)
        await changes.record(
            conn,
            actor=actor_of(n.gateway),
            action="retry.gateway_notified",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data={
                "webhook_event_id": n.event_id,
                "webhook_event_type": n.event_type,
                "gateway_charge_id": effect.gateway_charge_id,
                "attempt": number,
                "succeeded": effect.succeeded,
            },
            event_field="retry_plan_changed",
            event_payload=events_pb2.RetryPlanChanged(
                plan=convert.retry_plan_state(row, row["methods"])
            ),
        )
        return Handled(
            Outcome.APPLIED,
            f"retry plan {plan_id} is due now: the billing job reads attempt {number}'s charge",
        )

    async def _dispute(self, conn: Connection, n: Notification, effect: DisputeReported) -> Handled:
        payment = await store.payment_of_transaction(conn, n.gateway, effect.transaction_ids)
        if payment is None:
            ids = ", ".join(effect.transaction_ids) or "none given"
            return Handled(
                Outcome.UNMATCHED,
                f"dispute {effect.dispute_id}: no recorded {n.gateway} payment ({ids})",
            )
        amount = effect.amount
        wanted = store.DisputeRow(
            gateway=n.gateway,
            dispute_id=effect.dispute_id,
            payment_id=payment["payment_id"],
            currency=amount.currency if amount else payment["currency"],
            amount=amount.minor_units if amount else payment["captured_amount"],
            reason=effect.reason,
            status=effect.status.value,
            gateway_status=effect.gateway_status,
            stage=effect.stage,
        )
        existing = await store.lock_dispute(conn, n.gateway, effect.dispute_id)
        row: asyncpg.Record | None = None
        if existing is None:
            row = await store.insert_dispute(conn, wanted)
            if row is None:  # a concurrent event of the same dispute inserted it first
                existing = await store.lock_dispute(conn, n.gateway, effect.dispute_id)
        action = "payment.disputed"
        if existing is not None:
            if effect.stage <= existing["stage"]:
                return Handled(
                    Outcome.IGNORED,
                    f"dispute {effect.dispute_id} is {existing['status']} "
                    f"({existing['gateway_status']}) already: this event is not newer",
                )
            row = await store.update_dispute(conn, wanted)
            action = "payment.dispute_updated"
        assert row is not None
        await changes.record(
            conn,
            actor=actor_of(n.gateway),
            action=action,
            entity_type="payment",
            entity_id=payment["payment_id"],
            data={
                "webhook_event_id": n.event_id,
                "webhook_event_type": n.event_type,
                "dispute_id": effect.dispute_id,
                "status": row["status"],
                "gateway_status": row["gateway_status"],
                "amount": row["amount"],
                "currency": row["currency"],
            },
            event_field="payment_disputed",
            event_payload=dispute_message(row, payment),
        )
        return Handled(
            Outcome.APPLIED,
            f"dispute {effect.dispute_id} of payment {payment['payment_id']}: {row['status']}",
        )


def dispute_message(row: asyncpg.Record, payment: asyncpg.Record) -> events_pb2.PaymentDisputed:
    """The ``payment_dispute`` row as the event carries it."""
    return events_pb2.PaymentDisputed(
        dispute_id=row["dispute_id"],
        gateway=row["gateway"],
        payment_id=row["payment_id"],
        customer_id=payment["customer_id"],
        subscription_id=payment["subscription_id"],
        amount=convert.money(row["currency"], row["amount"]),
        reason=row["reason"],
        status=events_pb2.DisputeStatus.Value(f"DISPUTE_STATUS_{row['status']}"),
        gateway_status=row["gateway_status"],
    )


# -- outcomes the gateway can only report ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reported:
    """How to read outcomes a gateway reports by webhook but cannot be asked about: the event
    types that report them, and how their stored facts read as an outcome (None: they do
    not say)."""

    refund_events: tuple[str, ...] = ()
    refund: Callable[[Mapping[str, Any]], RefundOutcome | None] | None = None
    charge_events: tuple[str, ...] = ()
    charge: Callable[[Mapping[str, Any]], ChargeOutcome | None] | None = None


# Adyen's Checkout API has no call that reads a refund or a payment: its REFUND, REFUND_FAILED
# and AUTHORISATION notifications are the only place it tells their outcome.
REPORTED: dict[str, Reported] = {
    adyen_notifications.GATEWAY: Reported(
        refund_events=("REFUND", "REFUND_FAILED"),
        refund=adyen_notifications.refund_outcome,
        charge_events=("AUTHORISATION",),
        charge=adyen_notifications.charge_outcome,
    ),
}


class ReportedReads:
    """A gateway whose pending refunds and charges are read from what it reported by webhook.

    The billing jobs ask again about a refund or a charge that answered PENDING
    (``fetch_refund``; ``charge`` with ``gateway_charge_id``) and record what they learn
    through their normal paths. For a gateway that cannot be asked, the answer is the latest
    stored webhook event about that refund or charge, whatever it came to when it arrived: one
    that outran the gateway's own answer (UNMATCHED then, no id stored yet) is found at the next
    sync. With nothing reported yet, the gateway is asked as usual (it answers "still
    pending"). New refunds and charges pass straight through.

    ``reads_refunds`` is the gateway's own: a stored notification is not a read, so the billing
    job still waits for it instead of syncing on a schedule (it reads the store once after the
    refund's id is stored, and at the deadline)."""

    def __init__(self, gateway: ChargingGateway, db: Database, reported: Reported) -> None:
        self.inner = gateway
        self.name = gateway.name
        self.reads_refunds = reads_refunds(gateway)
        self._db = db
        self._reported = reported

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        return await self.inner.refund(request)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        read = self._reported.refund
        if read is not None:
            facts = await self._facts(gateway_refund_id, self._reported.refund_events)
            outcome = read(facts) if facts is not None else None
            if outcome is not None:
                return outcome
        return await self.inner.fetch_refund(gateway_refund_id, request)

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        read = self._reported.charge
        if request.gateway_charge_id and read is not None:
            facts = await self._facts(request.gateway_charge_id, self._reported.charge_events)
            outcome = read(facts) if facts is not None else None
            if outcome is not None:
                return outcome
        return await self.inner.charge(request)

    def accepting_calls(self) -> bool:
        return accepting_calls(self.inner)

    def probing(self) -> bool:
        return probing(self.inner)

    async def close(self) -> None:
        await self.inner.close()

    async def _facts(self, object_id: str, event_types: Sequence[str]) -> dict[str, Any] | None:
        async with self._db.connection() as conn:
            return await store.reported_outcome(conn, self.name, object_id, event_types)


def with_reported_outcomes(
    gateways: Mapping[str, ChargingGateway], db: Database
) -> dict[str, ChargingGateway]:
    """The gateways, those that can only report outcomes wrapped in :class:`ReportedReads`
    (what the billing jobs are given)."""
    wrapped: dict[str, ChargingGateway] = {}
    for name, gateway in gateways.items():
        reported = REPORTED.get(name)
        wrapped[name] = ReportedReads(gateway, db, reported) if reported is not None else gateway
    return wrapped
