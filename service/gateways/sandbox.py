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

Charges (the payment-retry engine's attempts) are chosen the same way, from the charge request's
metadata key ``sandbox_charge_outcome``:

==================================  ========================================================
``succeed`` (default)               SUCCEEDED
``decline:CODE``                    DECLINED with the Stripe decline code ``CODE``
                                    (e.g. ``decline:insufficient_funds``), network unknown
``decline_then_succeed:N:CODE``     the first N attempts are DECLINED with ``CODE``, later
                                    ones succeed
``visa:RC``                         DECLINED on network VISA with raw response code ``RC``
                                    (two characters, e.g. ``51``, ``N7``); the decline code
                                    is the matching Stripe code when :data:`VISA_DECLINE_CODES`
                                    has one, else ``generic_decline``; ``1A`` (authentication
                                    required) is REQUIRES_ACTION
``mastercard:MAC[:CODE]``           DECLINED on network MASTERCARD with merchant advice code
                                    ``MAC`` (two digits, e.g. ``03``, ``24``) and decline code
                                    ``CODE`` (default ``generic_decline``)
``requires_action``                 REQUIRES_ACTION (``authentication_required``)
``unavailable``                     NOT_ATTEMPTED, retryable (the gateway is down)
``timeout``                         UNKNOWN, retryable (sent, no answer)
==================================  ========================================================

A value the sandbox does not understand is NOT_ATTEMPTED and not retryable (nothing was tried;
:func:`validate_charge_outcome` catches it earlier). A simulation can instead decide every charge
itself: ``SandboxGateway(charge_decider=...)``; the sandbox then only fills in the charge id
(``sbpi_...``) of a SUCCEEDED, PENDING, DECLINED or REQUIRES_ACTION outcome that has none.

A request with ``gateway_charge_id`` set reads a charge that answered PENDING rather than making
one. The sandbox keeps no state, so the read is as deterministic as a charge: the same outcome
(from the metadata key, or from ``charge_decider``, which sees the field and can so settle a
pending charge it simulates), carrying that id instead of a derived one. A read never answers
NOT_ATTEMPTED (the charge exists): ``unavailable``, an unrecognised value, or a decider's
NOT_ATTEMPTED is UNKNOWN, with the same ``retryable``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from typing import Final

from service.gateways.base import (
    CardNetwork,
    ChargeOutcome,
    ChargeRequest,
    OutcomeKind,
    RefundErrorCode,
    RefundOutcome,
    RefundRequest,
)

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


CHARGE_OUTCOME_KEY = "sandbox_charge_outcome"
CHARGE_OUTCOMES = (
    "succeed",
    "decline:CODE",
    "decline_then_succeed:N:CODE",
    "visa:RC",
    "mastercard:MAC[:CODE]",
    "requires_action",
    "unavailable",
    "timeout",
)

# Visa raw response codes -> the Stripe decline code that says the same thing. Only codes whose
# meaning matches closely; any other code is ``generic_decline``. (Visa's meanings as processors
# publish them; Stripe's from https://docs.stripe.com/declines/codes.)
VISA_DECLINE_CODES: Final[dict[str, str]] = {
    "04": "pickup_card",  # pick up card (no fraud)
    "05": "do_not_honor",
    "07": "pickup_card",  # pick up card, special conditions
    "14": "incorrect_number",  # invalid account number
    "19": "reenter_transaction",
    "41": "lost_card",
    "43": "stolen_card",
    "46": "invalid_account",  # closed account
    "51": "insufficient_funds",
    "54": "expired_card",
    "55": "incorrect_pin",
    "57": "transaction_not_allowed",  # not permitted to cardholder
    "59": "fraudulent",  # suspected fraud
    "62": "restricted_card",
    "75": "pin_try_exceeded",
    "91": "issuer_not_available",
    "96": "processing_error",  # system malfunction
    "1A": "authentication_required",  # additional customer authentication required
    "N7": "incorrect_cvc",  # CVV2 mismatch
    "R0": "stop_payment_order",
    "R1": "revocation_of_authorization",
    "R3": "revocation_of_all_authorizations",
}

_DECLINE_CODE = re.compile(r"[a-z][a-z_]{0,59}")
_VISA_CODE = re.compile(r"[0-9A-Z]{2}")
_MAC = re.compile(r"[0-9]{2}")
_COUNT = re.compile(r"[0-9]{1,3}")

ChargeDecider = Callable[[ChargeRequest], ChargeOutcome]


def _refund_id(request: RefundRequest) -> str:
    digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
    return f"sbre_{digest}"


def _charge_id(request: ChargeRequest) -> str:
    digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
    return f"sbpi_{digest}"


class SandboxGateway:
    name = "sandbox"

    def __init__(self, charge_decider: ChargeDecider | None = None) -> None:
        self._charge_decider = charge_decider

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

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        # A read of a pending charge answers with that charge's id.
        charge_id = request.gateway_charge_id or _charge_id(request)
        if self._charge_decider is not None:
            outcome = self._charge_decider(request)
            if not outcome.gateway_charge_id and outcome.kind in _CHARGE_ID_KINDS:
                outcome = dataclasses.replace(outcome, gateway_charge_id=charge_id)
        else:
            value = request.metadata.get(CHARGE_OUTCOME_KEY, "succeed")
            outcome = _charge_outcome(request, value, charge_id)
        if request.gateway_charge_id and outcome.kind in (
            OutcomeKind.NOT_ATTEMPTED,
            OutcomeKind.UNKNOWN,
        ):
            # The charge exists: a failed read is UNKNOWN, and keeps the charge's id.
            outcome = dataclasses.replace(
                outcome,
                kind=OutcomeKind.UNKNOWN,
                gateway_charge_id=outcome.gateway_charge_id or charge_id,
            )
        return outcome

    async def close(self) -> None:
        return None


# The kinds of outcome that mean the sandbox made a charge (and so it has an id).
_CHARGE_ID_KINDS: Final = frozenset(
    {OutcomeKind.SUCCEEDED, OutcomeKind.PENDING, OutcomeKind.DECLINED, OutcomeKind.REQUIRES_ACTION}
)


def _charge_outcome(request: ChargeRequest, value: str, charge_id: str) -> ChargeOutcome:
    """The outcome ``value`` (a ``sandbox_charge_outcome``) gives ``request``, whose charge (when
    one is made) is ``charge_id``."""
    if not validate_charge_outcome(value):
        return ChargeOutcome(
            OutcomeKind.NOT_ATTEMPTED,
            message=f"sandbox: unrecognised {CHARGE_OUTCOME_KEY} {value!r}",
            retryable=False,
        )
    name, _, arg = value.partition(":")
    if name == "succeed":
        return ChargeOutcome(OutcomeKind.SUCCEEDED, charge_id)
    if name == "decline":
        return _declined(charge_id, arg)
    if name == "decline_then_succeed":
        count, _, code = arg.partition(":")
        if request.attempt <= int(count):
            return _declined(charge_id, code, f"attempt {request.attempt} of {count} declined")
        return ChargeOutcome(OutcomeKind.SUCCEEDED, charge_id)
    if name == "visa":
        code = VISA_DECLINE_CODES.get(arg, "generic_decline")
        kind = (
            OutcomeKind.REQUIRES_ACTION
            if code == "authentication_required"
            else OutcomeKind.DECLINED
        )
        return ChargeOutcome(
            kind,
            charge_id,
            decline_code=code,
            network=CardNetwork.VISA,
            visa_response_code=arg,
            message=f"sandbox: Visa response code {arg}",
        )
    if name == "mastercard":
        advice, _, code = arg.partition(":")
        return ChargeOutcome(
            OutcomeKind.DECLINED,
            charge_id,
            decline_code=code or "generic_decline",
            network=CardNetwork.MASTERCARD,
            mc_advice_code=advice,
            message=f"sandbox: Mastercard merchant advice code {advice}",
        )
    if name == "requires_action":
        return ChargeOutcome(
            OutcomeKind.REQUIRES_ACTION,
            charge_id,
            decline_code="authentication_required",
            message="sandbox: the customer must authenticate this payment",
        )
    if name == "unavailable":
        return ChargeOutcome(
            OutcomeKind.NOT_ATTEMPTED, message="sandbox: gateway unavailable", retryable=True
        )
    # "timeout": the only value left.
    return ChargeOutcome(
        OutcomeKind.UNKNOWN, message="sandbox: timed out waiting for the gateway", retryable=True
    )


def _declined(charge_id: str, code: str, detail: str = "") -> ChargeOutcome:
    message = f"sandbox: declined ({code})" + (f": {detail}" if detail else "")
    return ChargeOutcome(OutcomeKind.DECLINED, charge_id, decline_code=code, message=message)


def validate_outcome(value: str) -> bool:
    """True when ``value`` is an outcome the sandbox understands."""
    if value.startswith("fail_then_succeed:"):
        count = value.partition(":")[2]
        return count.isascii() and count.isdigit() and len(count) <= 3
    return value in OUTCOMES


def validate_charge_outcome(value: str) -> bool:
    """True when ``value`` is a ``sandbox_charge_outcome`` the sandbox understands."""
    name, _, arg = value.partition(":")
    if name == "decline":
        return _DECLINE_CODE.fullmatch(arg) is not None
    if name == "decline_then_succeed":
        count, _, code = arg.partition(":")
        return _COUNT.fullmatch(count) is not None and _DECLINE_CODE.fullmatch(code) is not None
    if name == "visa":
        return _VISA_CODE.fullmatch(arg) is not None
    if name == "mastercard":
        advice, sep, code = arg.partition(":")
        return _MAC.fullmatch(advice) is not None and (
            not sep or _DECLINE_CODE.fullmatch(code) is not None
        )
    return value in ("succeed", "requires_action", "unavailable", "timeout")
