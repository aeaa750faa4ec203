"""What a gateway's webhook says, in one vocabulary for every gateway.

Each gateway module turns its own events into a :class:`Notification` (``stripe_events``,
``adyen_notifications``); the application layer (``service.webhooks``) applies it without knowing
which gateway spoke. A notification carries its gateway's unique event id (a replay is found by
it) and one effect:

* :class:`RefundReported`: a refund's outcome (by the gateway's refund id), in the outcome
  vocabulary of ``base``: SUCCEEDED, PENDING, DECLINED (with the normalised error code),
  REQUIRES_ACTION;
* :class:`ChargeReported`: a charge (by the gateway's charge id) succeeded or failed;
* :class:`DisputeReported`: a dispute (chargeback) of a payment was opened or moved on;
* :class:`NotHandled`: an event type this service has no use for (it is still stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.domain.money import Money
from service.gateways.base import RefundOutcome


class DisputeStatus(StrEnum):
    """A dispute as this service records it; the gateway's own status is kept beside it."""

    OPEN = "OPEN"  # the money is contested or taken back, the case is not decided
    WON = "WON"  # decided for the merchant
    LOST = "LOST"  # decided for the cardholder (or accepted)
    CLOSED = "CLOSED"  # ended without a decision (an inquiry closed, a dispute prevented)


@dataclass(frozen=True, slots=True)
class RefundReported:
    gateway_refund_id: str
    outcome: RefundOutcome


@dataclass(frozen=True, slots=True)
class ChargeReported:
    gateway_charge_id: str
    succeeded: bool
    reason: str = ""  # why it failed, in the gateway's words


@dataclass(frozen=True, slots=True)
class DisputeReported:
    """A dispute of the payment whose gateway transaction id is one of ``transaction_ids``.

    ``stage`` orders a dispute's events (higher is later: opened, under review, decided);
    an event of a lower stage than the one recorded arrived late and changes nothing.
    ``amount`` is None when the event does not say (the payment's own amount stands in)."""

    dispute_id: str
    transaction_ids: tuple[str, ...]
    amount: Money | None
    reason: str
    status: DisputeStatus
    gateway_status: str
    stage: int


@dataclass(frozen=True, slots=True)
class NotHandled:
    reason: str


Effect = RefundReported | ChargeReported | DisputeReported | NotHandled


@dataclass(frozen=True, slots=True)
class Notification:
    """One gateway event: its unique id and type, the object it is about, its effect, and
    ``facts``: what the service read from it, stored with the event (ids, statuses, amounts;
    never the gateway's whole object, which may carry card details)."""

    gateway: str
    event_id: str
    event_type: str
    object_id: str
    effect: Effect
    occurred_at: datetime | None = None
    facts: dict[str, Any] = field(default_factory=dict)


class InvalidSignature(Exception):
    """The request is not signed by the gateway with our secret (or the signature is too old):
    it is refused (HTTP 401) and nothing is stored."""


class MalformedNotification(ValueError):
    """The request is signed but its body is not a notification this gateway sends (HTTP 400)."""
