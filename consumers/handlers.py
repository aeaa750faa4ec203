"""One handler per consumed event type: translate the event into the application call the gRPC
servicer makes for the same thing, and say what happened.

Handlers are thin on purpose: validation and effects live in the application functions
(``service.retries``, ``service.payments``, ``service.cancellations``), so an event and an RPC
go through the same code. The ``db`` a handler gets carries the message's inbox row into the
first transaction it commits (``repository.inbox.InboxDatabase``). Each handler acts as a
system principal named after its event type, so the audit trail says who did it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from consumers.failures import RetryLater
from refundretry.v1 import billing_events_pb2 as ev
from repository.database import Database
from service import cancellations, changes, messages, payments, retries
from service.auth import Principal, Role
from service.domain.proration import CancellationPolicy
from service.errors import (
    AlreadyExists,
    AlreadyPaid,
    InvalidArgument,
    NotFound,
    RequestIdReused,
    SubscriptionCancelled,
)

PAYMENT_FAILED = "payment.failed"
PAYMENT_SUCCEEDED = "payment.succeeded"
SUBSCRIPTION_CANCELLED = "subscription.cancelled"


@dataclass(frozen=True, slots=True)
class Context:
    """What handlers share: the retry decisions' context (network limits, success stats)."""

    retry_context: retries.RetryContext


@dataclass(frozen=True, slots=True)
class Handled:
    """What a handler did: ``applied`` when its effect committed (with the inbox row), else why
    it deliberately did nothing; ``ids`` of what it touched, for the log."""

    applied: bool
    note: str
    ids: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Context, Database, str, Any], Awaitable[Handled]]


@dataclass(frozen=True, slots=True)
class EventSpec:
    event_type: str
    message_class: type[Message]
    handler: Handler
    principal: Principal


def request_id_of(event_type: str, event_id: str) -> str:
    """The request id of an event's application call (AIP-155 idempotency, as for an RPC)."""
    text = f"{event_type}:{event_id}"
    if len(text) <= changes.MAX_REQUEST_ID:
        return text
    return f"{event_type}:sha256:{hashlib.sha256(event_id.encode()).hexdigest()}"


# -- payment.failed ---------------------------------------------------------------------------


async def payment_failed(
    context: Context, db: Database, event_id: str, event: ev.PaymentFailed
) -> Handled:
    """Start or advance the payment's retry plan, as RecordPaymentFailure does. A failure of a
    payment paid already (its payment.succeeded came first: the queues are independent), or of
    a cancelled subscription (its subscription.cancelled came first), starts nothing, and is
    acknowledged."""
    try:
        row = await retries.record_payment_failure(
            db,
            SPECS[PAYMENT_FAILED].principal,
            messages.record_failure(request_id_of(PAYMENT_FAILED, event_id), event),
            context=context.retry_context,
        )
    except (AlreadyPaid, SubscriptionCancelled) as exc:
        return Handled(False, exc.message, {"payment_id": event.payment_id})
    return Handled(
        True,
        f"retry plan {row['plan_id']} is {row['status']}",
        {"plan_id": str(row["plan_id"]), "payment_id": event.payment_id},
    )


# -- payment.succeeded ------------------------------------------------------------------------


def record_payment_command(request_id: str, event: ev.PaymentSucceeded) -> payments.RecordPayment:
    """The RecordPayment command of a payment.succeeded event, translated as the servicer
    translates a RecordPaymentRequest."""
    if not event.HasField("payment"):
        raise InvalidArgument("payment", "is required")
    return messages.record_payment(request_id, event.payment)


async def payment_succeeded(
    context: Context, db: Database, event_id: str, event: ev.PaymentSucceeded
) -> Handled:
    """Record the payment (refundable from now on) and mark an open retry plan of the same
    payment or billing event RECOVERED, as RecordPayment does. A payment recorded before (by
    the RPC, or an earlier event about it) is left as it is."""
    command = record_payment_command(request_id_of(PAYMENT_SUCCEEDED, event_id), event)
    try:
        row, _ = await payments.record_payment(db, SPECS[PAYMENT_SUCCEEDED].principal, command)
    except RequestIdReused:
        raise
    except AlreadyExists as exc:
        return Handled(
            False, f"already recorded: {exc.message}", {"payment_id": command.payment_id}
        )
    return Handled(True, f"payment {row['payment_id']} recorded", {"payment_id": row["payment_id"]})


# -- subscription.cancelled -------------------------------------------------------------------

_POLICIES = {
    ev.CANCELLATION_REFUND_POLICY_NONE: CancellationPolicy.NONE,
    ev.CANCELLATION_REFUND_POLICY_PRORATED: CancellationPolicy.PRORATED,
    ev.CANCELLATION_REFUND_POLICY_FULL: CancellationPolicy.FULL,
}


async def subscription_cancelled(
    context: Context, db: Database, event_id: str, event: ev.SubscriptionCancelled
) -> Handled:
    """Stop collecting the subscription's unpaid invoices (its open retry plans are canceled,
    and failures of its payments start none), then refund the unused part of the last paid
    period by the event's policy, through the CreateRefund path (``service.cancellations``).

    Collection stops in a transaction of its own, without the inbox row: stopping again
    changes nothing, so a redelivery after a crash before the refund stops nothing twice and
    still refunds (the refund's transaction carries the inbox row)."""
    policy = _POLICIES.get(event.refund_policy)
    if policy is None:
        raise InvalidArgument("refund_policy", "is required: NONE, PRORATED or FULL")
    cancel_at = messages.optional_time(event, "cancel_time")
    if cancel_at is None:
        raise InvalidArgument("cancel_time", "is required")
    principal = SPECS[SUBSCRIPTION_CANCELLED].principal
    cancellation = cancellations.Cancellation(
        subscription_id=event.subscription_id,
        cancel_at=cancel_at,
        policy=policy,
        customer_id=event.customer_id,
        payment_id=event.payment_id,
        reason=event.reason,
    )
    stopped = await cancellations.stop_collection(
        Database(db.pool), principal, cancellation, event_id=event_id
    )
    try:
        result = await cancellations.refund_cancellation(db, principal, cancellation)
    except NotFound as exc:  # the payment it names: its payment.succeeded may still be queued
        raise RetryLater(exc.message) from exc
    ids = {"subscription_id": event.subscription_id}
    if result.payment_id:
        ids["payment_id"] = result.payment_id
    note = f"{result.note}; {stopped.note()}"
    if result.refund is None:
        if not stopped.changed:
            return Handled(False, note, ids)
        async with db.transaction():  # the inbox row, for what stop_collection changed
            pass
        return Handled(True, note, ids)
    ids["refund_id"] = str(result.refund["refund_id"])
    return Handled(True, note, ids)


def _system(event_type: str, role: Role) -> Principal:
    return Principal(f"consumer:{event_type}", frozenset({role}))


SPECS: dict[str, EventSpec] = {
    PAYMENT_FAILED: EventSpec(
        PAYMENT_FAILED,
        ev.PaymentFailed,
        payment_failed,
        _system(PAYMENT_FAILED, Role.PAYMENT_RECORD),
    ),
    PAYMENT_SUCCEEDED: EventSpec(
        PAYMENT_SUCCEEDED,
        ev.PaymentSucceeded,
        payment_succeeded,
        _system(PAYMENT_SUCCEEDED, Role.PAYMENT_RECORD),
    ),
    SUBSCRIPTION_CANCELLED: EventSpec(
        SUBSCRIPTION_CANCELLED,
        ev.SubscriptionCancelled,
        subscription_cancelled,
        _system(SUBSCRIPTION_CANCELLED, Role.REFUND_CREATE),
    ),
}
