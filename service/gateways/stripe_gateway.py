"""The Stripe gateway: refunds through the official ``stripe`` SDK, mapped to our outcomes.

What it maps, and why:

* **A refund's status.** ``succeeded`` -> SUCCEEDED; ``pending`` -> PENDING (sync it later with
  :meth:`StripeGateway.fetch_refund`); ``requires_action`` -> REQUIRES_ACTION; ``failed`` ->
  DECLINED with the code from ``failure_reason`` (only ``insufficient_funds`` is retryable: the
  merchant balance can be topped up); ``canceled`` -> DECLINED for good. A status we do not know
  is reported as PENDING, so the refund is asked about again rather than guessed at.
* **Transient errors** (429, 5xx and 409 as ``stripe.APIError``, connection errors and
  timeouts) are retried inside the call with ``tenacity``, a few times with jittered backoff,
  always with the request's idempotency key: Stripe then moves the money at most once. The SDK's
  own retries are off (``max_network_retries=0``) so there is one retry policy, ours.
* **When the retries run out**, the outcome says whether the refund may exist. NOT_ATTEMPTED
  (safe to repeat) only when no attempt can have reached Stripe's API: every one failed to
  connect, or was rate limited (Stripe's rate limiter runs before its idempotency layer and
  before any money moves). As soon as one attempt was sent and its answer lost (timeout, broken
  connection, 5xx), the outcome is UNKNOWN: the caller must replay with the same key, never a
  new one.
* **Permanent errors** are DECLINED with a normalised code: ``charge_already_refunded``,
  ``amount_too_large``, ``resource_missing``, other invalid requests, an idempotency-key misuse,
  a bad or revoked API key, a card error.

Stripe's error messages are kept (prefixed ``stripe:``); the API key never is, nor is it logged.
Amounts are sent as ``Money.minor_units`` (ISO 4217 exponents), which is what Stripe expects for
its two- and zero-decimal currencies. Stripe lists a few currencies with special amount rules
(its "special cases"); those are not handled here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import stripe
from stripe.params import RefundCreateParams
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from service.gateways.base import OutcomeKind, RefundErrorCode, RefundOutcome, RefundRequest

log = logging.getLogger(__name__)

# The reasons Stripe accepts on a refund; anything else is not sent.
STRIPE_REFUND_REASONS: Final = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

# A failed refund's ``failure_reason`` -> (our code, retryable).
_FAILURE_REASONS: Final[dict[str, tuple[RefundErrorCode, bool]]] = {
    "lost_or_stolen_card": (RefundErrorCode.LOST_OR_STOLEN_CARD, False),
    "expired_or_canceled_card": (RefundErrorCode.CARD_EXPIRED_OR_CANCELED, False),
    "insufficient_funds": (RefundErrorCode.INSUFFICIENT_MERCHANT_BALANCE, True),
    "declined": (RefundErrorCode.DECLINED, False),
}

# An invalid request's ``code`` -> our code (all final).
_INVALID_REQUEST_CODES: Final[dict[str, RefundErrorCode]] = {
    "charge_already_refunded": RefundErrorCode.ALREADY_REFUNDED,
    "amount_too_large": RefundErrorCode.AMOUNT_TOO_LARGE,
    "resource_missing": RefundErrorCode.TRANSACTION_NOT_FOUND,
}

# httpx errors raised before any byte of the request could leave: the request never reached
# Stripe. (A pool timeout is waiting for a free connection.)
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class _Transient:
    """A transient error: its code, and whether the attempt may have created the refund."""

    code: RefundErrorCode
    may_have_moved_money: bool


def _transient(exc: BaseException) -> _Transient | None:
    """The transient class of ``exc``, or None when retrying cannot help."""
    if isinstance(exc, stripe.RateLimitError):
        return _Transient(RefundErrorCode.RATE_LIMITED, may_have_moved_money=False)
    if isinstance(exc, stripe.APIConnectionError):
        # The SDK wraps every httpx error in APIConnectionError, raised ``from`` the original.
        cause = exc.__cause__
        if isinstance(cause, _NOT_SENT_ERRORS):
            return _Transient(RefundErrorCode.GATEWAY_UNREACHABLE, may_have_moved_money=False)
        if isinstance(cause, httpx.TimeoutException):
            return _Transient(RefundErrorCode.TIMEOUT, may_have_moved_money=True)
        return _Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
    if isinstance(exc, stripe.APIError):  # 5xx, 409 (same key in flight), unreadable answers
        return _Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
    return None


def _is_transient(exc: BaseException) -> bool:
    return _transient(exc) is not None


def _error_code(exc: stripe.StripeError) -> RefundErrorCode:
    """The normalised code of a Stripe error."""
    transient = _transient(exc)
    if transient is not None:
        return transient.code
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return RefundErrorCode.AUTHENTICATION_FAILED
    if isinstance(exc, stripe.InvalidRequestError):
        return _INVALID_REQUEST_CODES.get(exc.code or "", RefundErrorCode.INVALID_REQUEST)
    if isinstance(exc, stripe.IdempotencyError):
        return RefundErrorCode.INVALID_REQUEST
    if isinstance(exc, stripe.CardError):
        return RefundErrorCode.DECLINED
    return RefundErrorCode.UNKNOWN


def _message(exc: stripe.StripeError) -> str:
    return f"stripe: {exc.user_message or type(exc).__name__}"


class _Attempts:
    """What the attempts of one call have done so far."""

    def __init__(self) -> None:
        self.count = 0
        self.may_have_moved_money = False

    def failed(self, exc: BaseException) -> None:
        transient = _transient(exc)
        if transient is not None and transient.may_have_moved_money:
            self.may_have_moved_money = True


def outcome_for_refund(refund: stripe.Refund) -> RefundOutcome:
    """Our outcome for a Stripe refund object."""
    refund_id = refund.id
    status = refund.status
    if status == "succeeded":
        return RefundOutcome(OutcomeKind.SUCCEEDED, refund_id)
    if status == "pending":
        return RefundOutcome(OutcomeKind.PENDING, refund_id)
    if status == "requires_action":
        return RefundOutcome(OutcomeKind.REQUIRES_ACTION, refund_id)
    if status == "failed":
        reason = refund.failure_reason or "unknown"
        code, retryable = _FAILURE_REASONS.get(reason, (RefundErrorCode.UNKNOWN, False))
        return RefundOutcome.declined(
            code,
            f"stripe: the refund failed ({reason})",
            retryable=retryable,
            gateway_refund_id=refund_id,
        )
    if status == "canceled":
        return RefundOutcome.declined(
            RefundErrorCode.DECLINED,
            "stripe: the refund was canceled",
            retryable=False,
            gateway_refund_id=refund_id,
        )
    return RefundOutcome(
        OutcomeKind.PENDING,
        refund_id,
        error_message=f"stripe: unrecognised refund status {status!r}",
    )


def _outcome_for_error(exc: stripe.StripeError, attempts: _Attempts) -> RefundOutcome:
    """Our outcome for the error that ended ``refund()`` (after any retries)."""
    code = _error_code(exc)
    message = _message(exc)
    # These answers come from inside Stripe's idempotency layer: they are final for the key,
    # whatever earlier attempts did.
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError | stripe.CardError):
        return RefundOutcome.declined(code, message, retryable=False)
    if attempts.may_have_moved_money:
        # An attempt was sent and its answer lost; the error that ended the call (a rate limit,
        # a refused connection, a rejected key) is checked before the idempotency layer and
        # says nothing about it. Replay with the same key.
        return RefundOutcome(OutcomeKind.UNKNOWN, "", code.value, message, retryable=True)
    if _transient(exc) is not None:
        return RefundOutcome(OutcomeKind.NOT_ATTEMPTED, "", code.value, message, retryable=True)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return RefundOutcome.declined(code, message, retryable=False)
    # Any other Stripe error: we cannot tell what happened; replaying with the key is safe.
    return RefundOutcome(OutcomeKind.UNKNOWN, "", code.value, message, retryable=True)


class _HTTPXClient(stripe.HTTPXClient):
    """The SDK's httpx client, sending the form body as ``content=``.

    stripe 16's ``HTTPXClient`` passes the already-encoded body as ``data=<str>``, which httpx
    0.28 deprecates (a DeprecationWarning on every POST; httpx 1.0 drops it). This override of
    its request-arguments hook sends the same bytes the supported way. No proxy is configured
    here, so the SDK's proxy argument is not needed.
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: str | bytes | None
    ) -> tuple[tuple[str, str], dict[str, Any]]:
        kwargs: dict[str, Any] = {"headers": headers}
        if post_data:
            kwargs["content"] = post_data
        if self._timeout:
            kwargs["timeout"] = self._timeout
        return (method, url), kwargs


class StripeGateway:
    """Refunds through Stripe's API (v1 refunds), one ``StripeClient`` per gateway."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        *,
        max_attempts: int = 3,
        timeout_seconds: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._max_attempts = max_attempts
        # The SDK's httpx client: its async methods are what ``*_async`` calls use.
        self._http_client = _HTTPXClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=self._http_client,
        )

    def __repr__(self) -> str:
        return f"StripeGateway(max_attempts={self._max_attempts})"

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        params = _create_params(request)
        options: stripe.RequestOptions = {"idempotency_key": request.idempotency_key}

        async def create() -> stripe.Refund:
            return await self._client.v1.refunds.create_async(params=params, options=options)

        attempts = _Attempts()
        try:
            refund = await self._with_retries(create, attempts, "stripe_refund_create", request)
        except stripe.StripeError as exc:
            outcome = _outcome_for_error(exc, attempts)
            self._log_failure("stripe_refund_create", request, attempts, exc, outcome)
            return outcome
        return outcome_for_refund(refund)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        async def retrieve() -> stripe.Refund:
            return await self._client.v1.refunds.retrieve_async(gateway_refund_id)

        # The refund exists (Stripe gave us its id), so failing to read it says nothing about
        # the money: every failure is UNKNOWN (ask again later), never NOT_ATTEMPTED nor
        # DECLINED. ``retryable`` says whether asking again can help.
        attempts = _Attempts()
        try:
            refund = await self._with_retries(retrieve, attempts, "stripe_refund_fetch", request)
        except stripe.StripeError as exc:
            outcome = RefundOutcome(
                OutcomeKind.UNKNOWN,
                gateway_refund_id,
                _error_code(exc).value,
                _message(exc),
                retryable=_is_transient(exc),
            )
            self._log_failure("stripe_refund_fetch", request, attempts, exc, outcome)
            return outcome
        return outcome_for_refund(refund)

    async def close(self) -> None:
        # Closes the SDK's httpx.AsyncClient; the SDK leaves this method unannotated.
        await self._http_client.close_async()  # type: ignore[no-untyped-call]

    async def _with_retries(
        self,
        operation: Callable[[], Awaitable[stripe.Refund]],
        attempts: _Attempts,
        action: str,
        request: RefundRequest,
    ) -> stripe.Refund:
        async def attempt() -> stripe.Refund:
            attempts.count += 1
            try:
                return await operation()
            except stripe.StripeError as exc:
                attempts.failed(exc)
                raise

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "Stripe call failed with a transient error; retrying with the same key",
                extra={
                    "action": f"{action}_retry",
                    "payment_id": request.payment_id,
                    "refund_attempt": request.attempt,
                    "idempotency_key": request.idempotency_key,
                    "call_attempt": state.attempt_number,
                    "error": type(exc).__name__,
                },
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        result: stripe.Refund = await retrying(attempt)
        return result

    @staticmethod
    def _log_failure(
        action: str,
        request: RefundRequest,
        attempts: _Attempts,
        exc: stripe.StripeError,
        outcome: RefundOutcome,
    ) -> None:
        log.warning(
            "Stripe call ended in %s (%s)",
            outcome.kind.value,
            outcome.error_code,
            extra={
                "action": f"{action}_failed",
                "payment_id": request.payment_id,
                "refund_attempt": request.attempt,
                "idempotency_key": request.idempotency_key,
                "call_attempts": attempts.count,
                "error": type(exc).__name__,
                "http_status": exc.http_status,
                "request_id": exc.request_id,
            },
        )


def _create_params(request: RefundRequest) -> RefundCreateParams:
    """The parameters of ``POST /v1/refunds`` for ``request``."""
    params: RefundCreateParams = {
        "amount": request.amount.minor_units,
        "metadata": {
            **request.metadata,
            "payment_id": request.payment_id,
            "attempt": str(request.attempt),
        },
    }
    if request.gateway_transaction_id.startswith("ch_"):
        params["charge"] = request.gateway_transaction_id
    else:
        params["payment_intent"] = request.gateway_transaction_id
    if request.reason in STRIPE_REFUND_REASONS:
        params["reason"] = request.reason
    return params
