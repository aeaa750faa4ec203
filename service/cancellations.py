"""Use case: a subscription was cancelled; stop collecting its unpaid invoices, and refund the
unused part of its last paid period.

Collection stops first (``stop_collection``): the cancellation is kept, and the subscription's
open retry plans are CANCELED, as Stripe stops automatic collection of a cancelled
subscription's invoices by default, "to prevent unexpected payment attempts after the customer
has canceled". A failure of its payments reported later starts no retries
(``retries.record_payment_failure``).

The refund goes through ``refunds.create_refund``, the CreateRefund path: the payment row is
locked and what is left re-checked, the approval policy decides whether it needs approvers, the
refund is booked per item, net and tax. Its request id is derived from the subscription and the
paid period (the payment), so the period is refunded once however many cancellation events name
it: the same content replays the first refund, and a different one (a cancellation re-sent with
another time, computed against what the first refund left) is refused by the request id and
reported as already refunded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from refundretry.v1 import events_pb2
from repository import payments, retries, subscriptions
from repository.database import Database
from service import changes, convert, refunds, validation
from service import retries as retry_plans
from service.auth import Principal
from service.domain.money import Money
from service.domain.proration import CancellationPolicy, PaidItem, cancellation_refund
from service.domain.refund_plan import LineRequest
from service.domain.retry_schedule import DEFAULT_REFUND_SCHEDULE
from service.errors import InsufficientRefundable, InvalidArgument, NotFound, RequestIdReused

log = logging.getLogger(__name__)

# A concurrent refund of the same payment can change what is left between planning the lines
# and create_refund's locked re-check; planning again is correct and this bounds it.
PLANNING_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Cancellation:
    subscription_id: str
    cancel_at: datetime
    policy: CancellationPolicy
    customer_id: str = ""
    payment_id: str = ""  # the paid period to refund; empty: the subscription's last one
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancellationResult:
    """The refund made (None when nothing was refunded), the payment of the period, and in
    words what happened."""

    refund: asyncpg.Record | None
    payment_id: str
    note: str


def _validate(cmd: Cancellation) -> None:
    validation.identifier(cmd.subscription_id, "subscription_id")
    validation.identifier(cmd.customer_id, "customer_id", required=False)
    validation.identifier(cmd.payment_id, "payment_id", required=False)
    validation.text(cmd.reason, "reason", 500)


@dataclass(frozen=True, slots=True)
class CollectionStopped:
    """What ``stop_collection`` did: whether it kept the cancellation now (False: it was kept
    before), and the retry plans it canceled."""

    recorded: bool
    plans_canceled: list[str]

    @property
    def changed(self) -> bool:
        return self.recorded or bool(self.plans_canceled)

    def note(self) -> str:
        plans = ", ".join(self.plans_canceled)
        canceled = f"retry plans canceled: {plans}" if plans else "no open retry plan"
        if self.recorded:
            return f"collection stopped ({canceled})"
        return f"collection was stopped before ({canceled})"


async def stop_collection(
    db: Database, principal: Principal, cmd: Cancellation, *, event_id: str = ""
) -> CollectionStopped:
    """Keep the subscription's cancellation (the first one's time stays; audited, and
    published as ``subscription.collection_stopped``) and cancel its open retry plans, each
    with its audit row and ``retry.canceled`` event, in one transaction.
    Running it again changes nothing more: it is safe to repeat before a refund that failed."""
    _validate(cmd)
    async with db.transaction() as conn:
        await payments.lock_subscription(conn, cmd.subscription_id)
        recorded = await retries.record_cancellation(
            conn,
            subscription_id=cmd.subscription_id,
            customer_id=cmd.customer_id,
            cancelled_at=cmd.cancel_at,
            event_id=event_id,
        )
        canceled = await retry_plans.cancel_for_subscription(
            conn,
            subscription_id=cmd.subscription_id,
            customer_id=cmd.customer_id,
            cancelled_at=cmd.cancel_at,
            actor=principal.name,
        )
        plan_ids = [str(p) for p in canceled]
        if recorded is not None:
            # What the service will refuse from now on is a change of its own: audited and
            # published, so billing systems learn that collection stopped.
            await changes.record(
                conn,
                actor=principal.name,
                action="subscription.collection_stopped",
                entity_type="subscription",
                entity_id=cmd.subscription_id,
                data={
                    "cancel_time": cmd.cancel_at.isoformat(),
                    "event_id": event_id,
                    "retry_plans_canceled": plan_ids,
                },
                event_field="subscription_collection_stopped",
                event_payload=events_pb2.SubscriptionCollectionStopped(
                    subscription_id=cmd.subscription_id,
                    customer_id=cmd.customer_id,
                    cancel_time=convert.ts(cmd.cancel_at),
                    cancellation_event_id=event_id,
                    canceled_plan_ids=plan_ids,
                ),
            )
    return CollectionStopped(recorded is not None, plan_ids)


def request_id_of(subscription_id: str, payment_id: str) -> str:
    """The CreateRefund request id of a subscription's period: readable when it fits."""
    text = f"subscription.cancelled:{subscription_id}:{payment_id}"
    if len(text) <= changes.MAX_REQUEST_ID:
        return text
    digest = hashlib.sha256(f"{subscription_id}\x1f{payment_id}".encode()).hexdigest()
    return f"subscription.cancelled:{digest}"


async def _paid_period(
    db: Database, cmd: Cancellation
) -> tuple[asyncpg.Record | None, list[PaidItem]]:
    async with db.connection() as conn:
        if cmd.payment_id:
            payment = await payments.get(conn, cmd.payment_id)
            if payment is None:
                raise NotFound(f"payment {cmd.payment_id!r} does not exist")
            if payment["subscription_id"] != cmd.subscription_id:
                raise InvalidArgument(
                    "payment_id",
                    f"payment {cmd.payment_id!r} is not of subscription {cmd.subscription_id!r}",
                )
        else:
            payment = await subscriptions.last_paid(conn, cmd.subscription_id)
        if payment is None:
            return None, []
        rows = await payments.items(conn, payment["payment_id"])
    items = [
        PaidItem(
            r["item_id"],
            r["amount"] - r["refunded_amount"] - r["pending_amount"],
            r["tax"] - r["refunded_tax"] - r["pending_tax"],
            r["service_period_start"],
            r["service_period_end"],
        )
        for r in rows
    ]
    return payment, items


async def refund_cancellation(
    db: Database, principal: Principal, cmd: Cancellation
) -> CancellationResult:
    """Refund the unused part of the subscription's last paid period by ``cmd.policy``.
    Nothing is refunded (and the result says why) when the policy is NONE, the subscription has
    no payment, or nothing of the period is left unused and unrefunded."""
    _validate(cmd)
    for attempt in range(1, PLANNING_ATTEMPTS + 1):
        payment, items = await _paid_period(db, cmd)
        if payment is None:
            return CancellationResult(
                None, "", f"subscription {cmd.subscription_id!r} has no recorded payment"
            )
        payment_id = payment["payment_id"]
        if cmd.customer_id and payment["customer_id"] != cmd.customer_id:
            raise InvalidArgument(
                "customer_id",
                f"payment {payment_id!r} of the subscription is of customer "
                f"{payment['customer_id']!r}",
            )
        if cmd.policy is CancellationPolicy.NONE:
            return CancellationResult(None, payment_id, "the policy is NONE: nothing to refund")
        lines = cancellation_refund(items, cmd.policy, cmd.cancel_at)
        if not lines:
            return CancellationResult(
                None,
                payment_id,
                f"nothing of payment {payment_id!r} is left to refund"
                if not any(i.gross_left for i in items)
                else f"no unused service time of payment {payment_id!r} after the cancellation",
            )
        reason = f"subscription {cmd.subscription_id} cancelled ({cmd.policy.value.lower()})"
        if cmd.reason:
            reason += f": {cmd.reason}"
        try:
            refund = await refunds.create_refund(
                db,
                principal,
                refunds.CreateRefund(
                    request_id=request_id_of(cmd.subscription_id, payment_id),
                    payment_id=payment_id,
                    amount=None,
                    lines=[LineRequest(line.item_id, line.gross) for line in lines],
                    reason=reason,
                    retry_schedule_code=DEFAULT_REFUND_SCHEDULE,
                ),
            )
        except RequestIdReused:
            return CancellationResult(
                None, payment_id, f"the period of payment {payment_id!r} was refunded already"
            )
        except InsufficientRefundable:
            if attempt == PLANNING_ATTEMPTS:
                raise
            log.info(
                "payment %s changed while planning the cancellation refund; planning again",
                payment_id,
                extra={"action": "cancellation.replan", "payment_id": payment_id},
            )
            continue
        amount = Money(refund["currency"], refund["amount"])
        return CancellationResult(
            refund, payment_id, f"refund {refund['refund_id']} of {amount} ({refund['status']})"
        )
    raise AssertionError("unreachable: the last planning attempt returns or raises")
