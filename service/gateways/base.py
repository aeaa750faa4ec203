"""The one interface every payment gateway implements, and the outcome vocabulary.

An outcome says what an attempt means (Kill Bill's lesson): SUCCEEDED; PENDING (the gateway
accepted it and will settle later: sync it); DECLINED (the gateway said no: ``retryable`` says
whether the same refund may pass later); REQUIRES_ACTION (someone must act); NOT_ATTEMPTED
(the request never reached the gateway: safe to repeat); UNKNOWN (sent, but no answer: replay
with the same idempotency key, never a new one).

Error codes are normalised here, in the gateway modules, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from service.domain.money import Money


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


class Gateway(Protocol):
    """A payment gateway as the billing job sees it."""

    name: str

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        """Create the refund (idempotent per ``request.idempotency_key``)."""
        ...

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        """The current state of a refund the gateway reported as pending."""
        ...

    async def close(self) -> None: ...
