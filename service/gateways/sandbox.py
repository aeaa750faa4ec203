"""The sandbox gateway: in-process and deterministic, for demos, development and tests.

Like Stripe's test cards choose outcomes by card number, the sandbox chooses a refund's outcome
from the payment's metadata key ``sandbox_refund_outcome``:

==============================  ============================================================
``succeed`` (default)           succeeds at once
``pending_then_succeed``        PENDING; fetching it later gives SUCCEEDED
``pending_then_fail``           PENDING; fetching it later gives a final DECLINED
``fail``                        declined for good (``card_expired_or_canceled``)
``fail_then_succeed:N``         the first N attempts are declined as retryable
                                (``insufficient_merchant_balance``), later ones succeed
``requires_action``             REQUIRES_ACTION
``unavailable``                 NOT_ATTEMPTED every time (the gateway is down)
==============================  ============================================================

The same idempotency key always yields the same refund id and outcome, with no state kept.
"""

from __future__ import annotations

import hashlib

from service.gateways.base import OutcomeKind, RefundErrorCode, RefundOutcome, RefundRequest

OUTCOME_KEY = "sandbox_refund_outcome"
OUTCOMES = (
    "succeed",
    "pending_then_succeed",
    "pending_then_fail",
    "fail",
    "fail_then_succeed:N",
    "requires_action",
    "unavailable",
)


def _refund_id(request: RefundRequest) -> str:
    digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
    return f"sbre_{digest}"


class SandboxGateway:
    name = "sandbox"

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        outcome = request.metadata.get(OUTCOME_KEY, "succeed")
        refund_id = _refund_id(request)
        if outcome.startswith("fail_then_succeed:"):
            failures = int(outcome.partition(":")[2] or "0")
            if request.attempt <= failures:
                return RefundOutcome.declined(
                    RefundErrorCode.INSUFFICIENT_MERCHANT_BALANCE,
                    f"sandbox: attempt {request.attempt} of {failures} failing attempts",
                    retryable=True,
                    gateway_refund_id=refund_id,
                )
            return RefundOutcome(OutcomeKind.SUCCEEDED, refund_id)
        if outcome in ("pending_then_succeed", "pending_then_fail"):
            return RefundOutcome(OutcomeKind.PENDING, refund_id)
        if outcome == "fail":
            return RefundOutcome.declined(
                RefundErrorCode.CARD_EXPIRED_OR_CANCELED,
                "sandbox: the card was canceled",
                retryable=False,
                gateway_refund_id=refund_id,
            )
        if outcome == "requires_action":
            return RefundOutcome(OutcomeKind.REQUIRES_ACTION, refund_id)
        if outcome == "unavailable":
            return RefundOutcome(
                OutcomeKind.NOT_ATTEMPTED,
                error_code=RefundErrorCode.GATEWAY_UNREACHABLE.value,
                error_message="sandbox: gateway unavailable",
                retryable=True,
            )
        return RefundOutcome(OutcomeKind.SUCCEEDED, refund_id)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        if request.metadata.get(OUTCOME_KEY) == "pending_then_fail":
            return RefundOutcome.declined(
                RefundErrorCode.DECLINED,
                "sandbox: the refund failed at the bank",
                retryable=False,
                gateway_refund_id=gateway_refund_id,
            )
        return RefundOutcome(OutcomeKind.SUCCEEDED, gateway_refund_id)

    async def close(self) -> None:
        return None


def validate_outcome(value: str) -> bool:
    """True when ``value`` is an outcome the sandbox understands."""
    if value.startswith("fail_then_succeed:"):
        count = value.partition(":")[2]
        return count.isascii() and count.isdigit() and len(count) <= 3
    return value in OUTCOMES
