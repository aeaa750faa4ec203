"""The one interface every payment gateway implements, and the outcome vocabulary.

An outcome says what an attempt means (Kill Bill's lesson): SUCCEEDED; PENDING (the gateway
accepted it and will settle later: sync it); DECLINED (the gateway said no: ``retryable`` says
whether the same refund may pass later); REQUIRES_ACTION (someone must act); NOT_ATTEMPTED
(the request never reached the gateway: safe to repeat); UNKNOWN (sent, but no answer: replay
with the same idempotency key, never a new one).

Two operations use this vocabulary: refunds (:class:`RefundRequest` -> :class:`RefundOutcome`)
and charges, the payment-retry engine's attempts (:class:`ChargeRequest` ->
:class:`ChargeOutcome`). A charge's outcome carries what the card networks' retry rules need:
the decline code (Stripe's vocabulary), the network, and the network's raw codes when the gateway
gives them.

Error codes are normalised here, in the gateway modules, and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from service.domain.decline_codes import CardNetwork as DeclineNetwork
from service.domain.decline_codes import Decline
from service.domain.money import Money

# Every gateway this service can talk to; a replica enables those it has credentials for.
GATEWAYS = ("sandbox", "stripe", "adyen")


class OutcomeKind(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    PENDING = "PENDING"
    DECLINED = "DECLINED"
    REQUIRES_ACTION = "REQUIRES_ACTION"
    NOT_ATTEMPTED = "NOT_ATTEMPTED"
    UNKNOWN = "UNKNOWN"


class RefundErrorCode(StrEnum):
    """The normalised vocabulary of refund failures."""

    INSUFFICIENT_MERCHANT_BALANCE = "insufficient_merchant_balance"  # retryable
    CARD_EXPIRED_OR_CANCELED = "card_expired_or_canceled"
    LOST_OR_STOLEN_CARD = "lost_or_stolen_card"
    DECLINED = "declined"
    ALREADY_REFUNDED = "already_refunded"
    AMOUNT_TOO_LARGE = "amount_too_large"
    TRANSACTION_NOT_FOUND = "transaction_not_found"
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION_FAILED = "authentication_failed"
    RATE_LIMITED = "rate_limited"  # retryable
    GATEWAY_ERROR = "gateway_error"  # retryable
    GATEWAY_UNREACHABLE = "gateway_unreachable"  # retryable
    TIMEOUT = "timeout"  # outcome unknown
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    payment_id: str
    gateway_transaction_id: str
    amount: Money
    # Derived from the detail id and attempt number: a replay moves money once.
    idempotency_key: str
    attempt: int
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    kind: OutcomeKind
    gateway_refund_id: str = ""
    error_code: str = ""
    error_message: str = ""
    retryable: bool = False

    @classmethod
    def declined(
        cls, code: RefundErrorCode, message: str, *, retryable: bool, gateway_refund_id: str = ""
    ) -> RefundOutcome:
        return cls(OutcomeKind.DECLINED, gateway_refund_id, code.value, message, retryable)


class CardNetwork(StrEnum):
    """The card network a charge went to, as :attr:`ChargeOutcome.network` spells it."""

    VISA = "VISA"
    MASTERCARD = "MASTERCARD"
    AMEX = "AMEX"
    DISCOVER = "DISCOVER"
    OTHER = "OTHER"  # a known network without retry rules of its own here (JCB, UnionPay, ...)
    UNKNOWN = ""  # the gateway did not say


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One attempt of a payment-retry plan: charge ``amount`` to a saved card, off-session."""

    plan_id: str
    customer_id: str
    payment_method: str  # the gateway's payment method id (e.g. "pm_..."): the card to charge
    amount: Money
    # Derived from the plan id and attempt number: a replay charges once.
    idempotency_key: str
    attempt: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Set when this attempt was already created at the gateway and answered PENDING with this
    # id: the gateway reads the charge's current state instead of creating it again (same
    # outcomes as charge(); a failure to read is UNKNOWN, retryable). ``retryable`` is false
    # only when reading again cannot help, e.g. the gateway does not know the id. Needed
    # because replaying the create with the same idempotency key replays its first answer
    # (PENDING) for as long as the gateway keeps the key.
    gateway_charge_id: str = ""


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """What one charge attempt came to.

    ``kind`` is SUCCEEDED, PENDING (accepted, settles later), DECLINED (the card or the gateway
    said no; ``decline_code`` says why), REQUIRES_ACTION (the customer must authenticate),
    NOT_ATTEMPTED or UNKNOWN (``retryable``: safe to replay with the same idempotency key).
    """

    kind: OutcomeKind
    gateway_charge_id: str = ""  # e.g. the PaymentIntent id
    # Normalised to Stripe's decline-code vocabulary ("insufficient_funds", ...); "" if none.
    decline_code: str = ""
    network: str = ""  # a CardNetwork value: "VISA", "MASTERCARD", "AMEX", "DISCOVER", "OTHER", ""
    visa_response_code: str = ""  # the raw network decline code, when the network is Visa
    mc_advice_code: str = ""  # Mastercard's merchant advice code ("01".."30"), when given
    message: str = ""
    retryable: bool = False  # for NOT_ATTEMPTED / UNKNOWN: safe to replay with the same key


class Gateway(Protocol):
    """A payment gateway as the billing job sees it (refunds)."""

    name: str

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        """Create the refund (idempotent per ``request.idempotency_key``)."""
        ...

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        """The current state of a refund the gateway reported as pending. A gateway that cannot
        read one answers PENDING and says so with ``reads_refunds = False`` (see
        :func:`reads_refunds`)."""
        ...

    async def close(self) -> None: ...


class ChargingGateway(Gateway, Protocol):
    """A gateway that can also charge a saved card (the payment-retry engine's attempts)."""

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge the card off-session (idempotent per ``request.idempotency_key``); or, when
        ``request.gateway_charge_id`` is set, read that charge's current state (never creating
        a charge, never NOT_ATTEMPTED: a failure to read is UNKNOWN)."""
        ...


def probing(gateway: object) -> bool:
    """Whether ``gateway`` takes one trial call only (a circuit breaker half-open): the billing
    jobs then claim a single piece of its work, not a batch the breaker would refuse."""
    check = getattr(gateway, "probing", None)
    return False if check is None else bool(check())


def accepting_calls(gateway: object) -> bool:
    """Whether ``gateway`` takes calls now: False while a wrapper says it would refuse them
    without trying (a circuit breaker in its cool-down). The billing jobs then leave that
    gateway's due work scheduled instead of claiming it."""
    check = getattr(gateway, "accepting_calls", None)
    return True if check is None else bool(check())


def reads_refunds(gateway: object) -> bool:
    """Whether ``fetch_refund`` of ``gateway`` can learn a refund's state: an optional
    ``reads_refunds`` attribute, True when absent. False for a gateway that only reports a
    refund's outcome by webhook (Adyen: its Checkout API has no call that reads a refund, so
    ``fetch_refund`` answers PENDING without asking). The billing job then does not sync such a
    refund on a schedule: it waits for the notification and flags the refund for a person when
    none came in time. Wrappers (circuit breaker, stored notifications) pass it through."""
    return bool(getattr(gateway, "reads_refunds", True))


def refund_log_ids(request: RefundRequest) -> dict[str, object]:
    """What every gateway's log lines about a refund call carry."""
    return {
        "payment_id": request.payment_id,
        "refund_attempt": request.attempt,
        "idempotency_key": request.idempotency_key,
    }


def charge_log_ids(request: ChargeRequest) -> dict[str, object]:
    """What every gateway's log lines about a charge call carry."""
    return {
        "plan_id": request.plan_id,
        "charge_attempt": request.attempt,
        "idempotency_key": request.idempotency_key,
    }


def decline_of(outcome: ChargeOutcome) -> Decline:
    """The decline an unsuccessful charge outcome amounts to, in the retry engine's vocabulary:
    a gateway that could not be reached is a ``processing_error``, a charge that needs the
    customer is ``authentication_required``, a decline without a code is ``generic_decline``;
    an unknown network is OTHER."""
    return _decline(
        outcome.kind,
        outcome.network,
        outcome.decline_code,
        outcome.visa_response_code,
        outcome.mc_advice_code,
    )


@functools.lru_cache(maxsize=4096)
def _decline(kind: OutcomeKind, network_name: str, code: str, visa: str, mac: str) -> Decline:
    """``decline_of``, cached by the outcome's codes: declines repeat, a Decline is frozen, and
    the billing job asks twice per attempt (the attempt's row, then the plan's next step)."""
    try:
        network = DeclineNetwork(network_name.upper() or "OTHER")
    except ValueError:
        network = DeclineNetwork.OTHER
    if kind is OutcomeKind.NOT_ATTEMPTED:
        return Decline("processing_error", network)
    if kind is OutcomeKind.REQUIRES_ACTION:
        return Decline("authentication_required", network)
    return Decline(code or "generic_decline", network, visa, mac)
