"""Stripe's webhook events: verified with the ``stripe`` SDK exactly as Stripe signs them, and
read into the notification vocabulary (``notifications``).

**Signature.** Stripe signs ``<timestamp>.<raw body>`` with HMAC-SHA256 under the endpoint's
secret and sends ``Stripe-Signature: t=<timestamp>,v1=<hex>`` (several ``v1`` while a secret is
being rolled). :func:`verify` is ``stripe.Webhook.construct_event`` with its default tolerance
(300 s): a signature older than that is refused, so a captured request cannot be replayed
later; a replay within the tolerance is caught by the event id (``service.webhooks``).

**Events read** (anything else is stored and ignored):

===================================================  ==========================================
``charge.refund.updated``, ``refund.updated``,       the refund's outcome, as a refund read by
``refund.failed``                                    the API is mapped (``stripe_gateway.
                                                     outcome_for_refund``: one mapping)
``payment_intent.succeeded``,                        a charge of a retry attempt succeeded or
``payment_intent.payment_failed``                    failed (its PaymentIntent id)
``charge.dispute.created``, ``.updated``,            a dispute of a payment (its charge or
``.closed``                                          PaymentIntent id); stage and status from
                                                     the dispute's ``status``
===================================================  ==========================================
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import stripe

from service.domain.money import Money
from service.gateways.notifications import (
    ChargeReported,
    DisputeReported,
    DisputeStatus,
    Effect,
    InvalidSignature,
    MalformedNotification,
    NotHandled,
    Notification,
    RefundReported,
)
from service.gateways.stripe_gateway import outcome_for_refund

GATEWAY: Final = "stripe"
SIGNATURE_HEADER: Final = "Stripe-Signature"

REFUND_EVENTS: Final = frozenset({"charge.refund.updated", "refund.updated", "refund.failed"})
CHARGE_EVENTS: Final = {"payment_intent.succeeded": True, "payment_intent.payment_failed": False}
DISPUTE_EVENTS: Final = frozenset(
    {"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed"}
)

# A dispute's ``status`` -> (stage, our status). Stripe's lifecycle: an inquiry (``warning_*``)
# or a chargeback needs a response, is under review once evidence is in, then ends.
_DISPUTE_STATUSES: Final[dict[str, tuple[int, DisputeStatus]]] = {
    "warning_needs_response": (0, DisputeStatus.OPEN),
    "needs_response": (0, DisputeStatus.OPEN),
    "warning_under_review": (1, DisputeStatus.OPEN),
    "under_review": (1, DisputeStatus.OPEN),
    "won": (2, DisputeStatus.WON),
    "lost": (2, DisputeStatus.LOST),
    "warning_closed": (2, DisputeStatus.CLOSED),
    "prevented": (2, DisputeStatus.CLOSED),
}


def verify(payload: bytes, signature_header: str | None, secret: str) -> stripe.Event:
    """The event ``payload`` carries, if Stripe signed it with ``secret`` in the last 300 s.

    Raises :class:`InvalidSignature` (missing, malformed, wrong or too old a signature, or no
    secret configured) or :class:`MalformedNotification` (signed, but not an event)."""
    if not secret:
        raise InvalidSignature("no Stripe webhook secret is configured")
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(f"stripe: {exc.user_message or exc}") from exc
    except UnicodeDecodeError as exc:  # the SDK decodes the body before it checks anything
        raise InvalidSignature("stripe: the body is not UTF-8 text") from exc
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # signed, not an event
        raise MalformedNotification(f"stripe: the body is not an event: {exc}") from exc
    if not isinstance(event, stripe.Event) or "id" not in event or "type" not in event:
        raise MalformedNotification("stripe: the body is not an event (no id or type)")
    return event


def notification_of(event: stripe.Event) -> Notification:
    """What ``event`` says, for the application layer."""
    raw = event.to_dict()  # plain JSON to read fields from; the SDK's objects are not dicts
    data = raw.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    obj = obj if isinstance(obj, dict) else {}
    created = raw.get("created")
    occurred = datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None
    effect, facts = _effect(event, obj)
    return Notification(
        gateway=GATEWAY,
        event_id=event.id,
        event_type=event.type,
        object_id=_text(obj, "id"),
        effect=effect,
        occurred_at=occurred,
        facts={"livemode": bool(raw.get("livemode")), **facts},
    )


def _effect(event: stripe.Event, obj: dict[str, Any]) -> tuple[Effect, dict[str, Any]]:
    event_type, kind, object_id = event.type, _text(obj, "object"), _text(obj, "id")
    if event_type in REFUND_EVENTS:
        typed = event.data.object
        if kind != "refund" or not object_id or not isinstance(typed, stripe.Refund):
            return NotHandled(f"{event_type} without a refund object"), {}
        facts = {
            "status": _text(obj, "status"),
            "failure_reason": _text(obj, "failure_reason"),
            "amount": obj.get("amount"),
            "currency": _text(obj, "currency").upper(),
            "payment_intent": _text(obj, "payment_intent"),
            "charge": _text(obj, "charge"),
        }
        try:
            outcome = outcome_for_refund(typed)
        except (AttributeError, KeyError) as exc:  # a field Stripe always sends is missing
            return NotHandled(f"{event_type}: the refund object has no {exc}"), facts
        return RefundReported(object_id, outcome), facts
    if event_type in CHARGE_EVENTS:
        if kind != "payment_intent" or not object_id:
            return NotHandled(f"{event_type} without a payment intent object"), {}
        succeeded = CHARGE_EVENTS[event_type]
        error = obj.get("last_payment_error")
        reason = "" if succeeded else _text(error, "decline_code") or _text(error, "code")
        facts = {"status": _text(obj, "status"), "decline": reason}
        return ChargeReported(object_id, succeeded, reason), facts
    if event_type in DISPUTE_EVENTS:
        if kind != "dispute" or not object_id:
            return NotHandled(f"{event_type} without a dispute object"), {}
        return _dispute(event_type, obj)
    return NotHandled(f"stripe event type {event_type} is not used by this service"), {}


def _dispute(event_type: str, dispute: dict[str, Any]) -> tuple[Effect, dict[str, Any]]:
    status = _text(dispute, "status")
    closed = event_type == "charge.dispute.closed"
    stage, ours = _DISPUTE_STATUSES.get(
        status, (2, DisputeStatus.CLOSED) if closed else (0, DisputeStatus.OPEN)
    )
    amount, currency = dispute.get("amount"), _text(dispute, "currency").upper()
    money = Money(currency, amount) if type(amount) is int and len(currency) == 3 else None
    charge, intent, reason = (
        _text(dispute, "charge"),
        _text(dispute, "payment_intent"),
        _text(dispute, "reason"),
    )
    facts = {
        "status": status,
        "reason": reason,
        "amount": amount,
        "currency": currency,
        "charge": charge,
        "payment_intent": intent,
    }
    effect = DisputeReported(
        dispute_id=_text(dispute, "id"),
        transaction_ids=tuple(t for t in (intent, charge) if t),
        amount=money,
        reason=reason,
        status=ours,
        gateway_status=status,
        stage=stage,
    )
    return effect, facts


def _text(value: Any, key: str) -> str:
    """``value[key]`` when it is a string ("" when missing, null, or an expanded object)."""
    if not isinstance(value, dict):
        return ""
    found = value.get(key)
    return found if isinstance(found, str) else ""
