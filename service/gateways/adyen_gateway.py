"""The Adyen gateway: refunds and charges through the official ``Adyen`` SDK (Checkout API
v71), mapped to our outcomes.

What it maps, and why:

* **A refund** is ``POST /payments/{paymentPspReference}/refunds``. Adyen answers only that it
  received the request (``status`` ``received``, HTTP 201, with the refund's own
  ``pspReference``); the outcome arrives later in a ``REFUND`` notification (``success``
  ``true`` or ``false``), or, for a refund the scheme bounces after accepting it,
  ``REFUND_FAILED``. So a received refund is PENDING with the refund's pspReference as its
  gateway refund id, and :func:`outcome_for_refund_notification` maps the notification.
* **Reading a refund.** The Checkout API has no call that reads a refund's state, so
  :meth:`AdyenGateway.fetch_refund` sends nothing and answers PENDING again: the refund stays
  PROCESSING until its notification is applied, and is never sent twice (a new request would
  be a second refund). The gateway says so (``reads_refunds = False``): the billing job does
  not sync such a refund on a schedule, and flags it for an operator when no notification came
  within ``REFUND_NOTIFICATION_TIMEOUT_SECONDS`` of the attempt (it knows when it started).
* **A charge** (the payment-retry engine's attempts) is ``POST /payments`` for the shopper's
  stored card as a merchant-initiated transaction: ``paymentMethod.storedPaymentMethodId``,
  ``shopperReference`` (the customer), ``shopperInteraction`` ``ContAuth`` and
  ``recurringProcessingModel`` ``Subscription`` (or ``UnscheduledCardOnFile``, configurable).
  ``resultCode``: ``Authorised`` -> SUCCEEDED (the merchant account captures automatically,
  Adyen's default); ``Pending`` and ``Received`` -> PENDING; ``Refused``, ``Error`` and
  ``Cancelled`` -> DECLINED with the refusal normalised by :mod:`adyen_refusals` (an
  ``authentication_required`` refusal is REQUIRES_ACTION); ``ChallengeShopper``,
  ``IdentifyShopper``, ``RedirectShopper`` and ``PresentToShopper`` -> REQUIRES_ACTION (no
  shopper is there to act off-session). A result code we do not know is PENDING with a message.
* **A pending charge read again.** Neither is there a call that reads a payment: with
  ``gateway_charge_id`` set, :meth:`AdyenGateway.charge` sends nothing and answers PENDING with
  that pspReference (never a new charge). Its ``AUTHORISATION`` notification settles it;
  :func:`outcome_for_authorisation_notification` maps one to the outcome a read would give.
* **Idempotency.** Every POST carries the request's idempotency key in the ``Idempotency-Key``
  header (Adyen keeps keys at least 31 days and answers a repeat with the first answer), and
  the same key as the ``reference`` (what notifications and Adyen's Customer Area show).
* **Transient errors** (5xx, 429, Adyen's ``704`` "request already processed or in progress",
  connection errors and timeouts) are retried inside the call with ``tenacity``, a few times
  with jittered backoff, always with the same key. When the retries run out, the outcome is
  NOT_ATTEMPTED (safe to repeat, even with a new key) only when no attempt can have reached
  Adyen's API: every one failed to connect, or was rate limited (a limiter answers before
  anything runs). As soon as one attempt was sent and its answer lost (timeout, broken
  connection, 5xx, an answer we could not read), the outcome is UNKNOWN: replay with the same
  key, never a new one.
* **Permanent errors** (400 and 422 validation errors, 404, a refused API key) are DECLINED
  with a normalised code and Adyen's ``errorCode`` and ``message`` kept in the message. As for
  Stripe, a charge refused for our API key is NOT_ATTEMPTED (retryable): the issuer was never
  asked, so a retry plan must not use up an attempt on it.

The SDK is synchronous: each call runs in this gateway's own small thread pool, and its HTTP
layer is replaced by :class:`_HttpxTransport` (the SDK documents replacing it), which puts the
API key in ``X-API-Key`` and lets the errors above be told apart by httpx's exception classes
(connect errors are the ones that never sent a byte). The SDK's URL rules pick Adyen's test or
live endpoint; ``api_base`` replaces both (tests point it at a local server). The API key is
never logged nor put in an outcome. Amounts are ``Money.minor_units``, Adyen's ``value``;
Adyen lists a few currencies whose minor units differ from ISO 4217; those are not handled here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import Adyen
import httpx
from Adyen.exceptions import (
    AdyenAPIAuthenticationError,
    AdyenAPIInvalidPermission,
    AdyenAPIResponseError,
    AdyenError,
)

from service.gateways import adyen_refusals
from service.gateways.base import (
    ChargeOutcome,
    ChargeRequest,
    OutcomeKind,
    RefundErrorCode,
    RefundOutcome,
    RefundRequest,
    charge_log_ids,
    refund_log_ids,
)
from service.gateways.calls import CallAttempts, Retries, Transient

log = logging.getLogger(__name__)

JSON = dict[str, Any]

CHECKOUT_API_VERSION: Final = 71
ENVIRONMENTS: Final = ("test", "live")
# How a stored card is charged again without the shopper: a subscription's next payment, or
# one at an irregular time (Adyen's ``recurringProcessingModel`` values for ContAuth).
RECURRING_PROCESSING_MODELS: Final = ("Subscription", "UnscheduledCardOnFile")

# Our refund reasons -> Adyen's ``merchantRefundReason``; other reasons are not sent.
MERCHANT_REFUND_REASONS: Final[dict[str, str]] = {
    "duplicate": "DUPLICATE",
    "fraudulent": "FRAUD",
    "requested_by_customer": "CUSTOMER REQUEST",
}

# Adyen's ``errorCode`` of a validation error -> our refund error code (others, e.g. ``137``
# "Invalid amount specified": INVALID_REQUEST).
_REFUND_ERROR_CODES: Final[dict[str, RefundErrorCode]] = {
    "167": RefundErrorCode.TRANSACTION_NOT_FOUND,  # Original pspReference required
}
# Adyen's ``errorCode`` for a request whose idempotency key is still being processed.
_IN_PROGRESS: Final = "704"

# Metadata Adyen accepts on a payment: at most 20 pairs, keys up to 20 characters, values up
# to 80. Pairs beyond these limits are left out rather than have the payment refused.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 20, 20, 80

# httpx errors raised before any byte of the request could leave: the request never reached
# Adyen. (A pool timeout is waiting for a free connection.)
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_ACTION_RESULTS: Final = frozenset(
    {"ChallengeShopper", "IdentifyShopper", "RedirectShopper", "PresentToShopper"}
)
_DECLINED_RESULTS: Final = frozenset({"Refused", "Error", "Cancelled"})
_AUTHENTICATION_REQUIRED: Final = "authentication_required"


class _UnreadableAnswer(Exception):
    """A 2xx answer without the fields every answer of this call has: the request may have
    been executed; replay it with the same key to read the answer Adyen saved."""


def _status(exc: BaseException) -> int:
    status = getattr(exc, "status_code", 0)
    return status if isinstance(status, int) else 0


def _transient(exc: BaseException) -> Transient | None:
    """The transient class of ``exc``, or None when retrying cannot help."""
    if isinstance(exc, _NOT_SENT_ERRORS):
        return Transient(RefundErrorCode.GATEWAY_UNREACHABLE, may_have_moved_money=False)
    if isinstance(exc, httpx.TimeoutException):
        return Transient(RefundErrorCode.TIMEOUT, may_have_moved_money=True)
    if isinstance(exc, httpx.HTTPError | _UnreadableAnswer):
        return Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
    if isinstance(exc, AdyenAPIResponseError):
        status = _status(exc)
        if status == 429:
            return Transient(RefundErrorCode.RATE_LIMITED, may_have_moved_money=False)
        if status >= 500 or (status == 422 and exc.error_code == _IN_PROGRESS):
            return Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
    return None


def _is_transient(exc: BaseException) -> bool:
    return _transient(exc) is not None


def _refused_key(exc: BaseException) -> bool:
    return isinstance(exc, AdyenAPIAuthenticationError | AdyenAPIInvalidPermission)


def _rejected(exc: BaseException) -> bool:
    """A final answer of Adyen's validation (400, 404, 422): nothing was executed, and
    sending the same request again gets the same answer."""
    return isinstance(exc, AdyenAPIResponseError) and _status(exc) in (400, 404, 422)


def _error_code(exc: BaseException) -> RefundErrorCode:
    """The normalised code of an error that ended a call."""
    transient = _transient(exc)
    if transient is not None:
        return transient.code
    if _refused_key(exc):
        return RefundErrorCode.AUTHENTICATION_FAILED
    if _rejected(exc):
        code = getattr(exc, "error_code", "")
        return _REFUND_ERROR_CODES.get(code, RefundErrorCode.INVALID_REQUEST)
    return RefundErrorCode.UNKNOWN


def _label(exc: BaseException) -> str:
    """Adyen's ``errorCode`` and ``message`` of an error answer, or the exception's class."""
    if isinstance(exc, AdyenAPIResponseError):
        body = exc.message if isinstance(exc.message, dict) else {}
        parts = [
            f"HTTP {_status(exc)}",
            str(body.get("errorCode") or ""),
            str(body.get("message") or ""),
        ]
        return " ".join(part for part in parts if part)
    return type(exc).__name__


def _message(exc: BaseException) -> str:
    return f"adyen: {_error_code(exc).value}: {_label(exc)}"


def _unfinished(exc: BaseException, attempts: CallAttempts) -> tuple[OutcomeKind, bool]:
    """The kind of outcome, and ``retryable``, of the error that ended a create call (after any
    retries)."""
    if _rejected(exc) and not _is_transient(exc):
        return OutcomeKind.DECLINED, False
    if attempts.may_have_moved_money:
        # An attempt was sent and its answer lost; the error that ended the call (a rate
        # limit, a refused connection or key) says nothing about it. Replay with the same key.
        return OutcomeKind.UNKNOWN, True
    if _is_transient(exc):
        return OutcomeKind.NOT_ATTEMPTED, True
    if _refused_key(exc):
        return OutcomeKind.DECLINED, False
    # Anything else: we cannot tell what happened; replaying with the key is safe.
    return OutcomeKind.UNKNOWN, True


# -- refunds -----------------------------------------------------------------------------------


def outcome_for_refund_answer(answer: Mapping[str, Any]) -> RefundOutcome:
    """Our outcome for the answer of ``POST /payments/{paymentPspReference}/refunds``."""
    refund_id = str(answer.get("pspReference") or "")
    status = answer.get("status")
    if status == "received":
        return RefundOutcome(OutcomeKind.PENDING, refund_id)
    return RefundOutcome(
        OutcomeKind.PENDING,
        refund_id,
        error_message=f"adyen: unrecognised refund status {status!r}",
    )


def outcome_for_refund_notification(item: Mapping[str, Any]) -> RefundOutcome:
    """Our outcome for a refund's ``NotificationRequestItem`` (eventCode ``REFUND`` or
    ``REFUND_FAILED``), whose ``pspReference`` is the refund's. A ``REFUND`` with ``success``
    ``false`` was refused by Adyen (e.g. more than the payment has left); ``REFUND_FAILED``
    means the scheme bounced a refund Adyen had accepted (e.g. the card's account is closed):
    both final, another attempt on the same card would meet the same answer."""
    event = item.get("eventCode")
    refund_id = str(item.get("pspReference") or "")
    success = str(item.get("success") or "").lower() == "true"
    reason = str(item.get("reason") or "")
    if event == "REFUND" and success:
        return RefundOutcome(OutcomeKind.SUCCEEDED, refund_id)
    if event == "REFUND":
        message = f"adyen: the refund was refused ({reason or 'no reason given'})"
    elif event == "REFUND_FAILED":
        message = f"adyen: the refund failed after it was accepted ({reason or 'no reason given'})"
    else:
        raise ValueError(f"not a refund notification: eventCode {event!r}")
    return RefundOutcome.declined(
        RefundErrorCode.DECLINED, message, retryable=False, gateway_refund_id=refund_id
    )


# -- charges -----------------------------------------------------------------------------------


def _dig(value: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _additional_data(answer: Mapping[str, Any]) -> Mapping[str, object]:
    data = answer.get("additionalData")
    return data if isinstance(data, Mapping) else {}


def _declined(answer: Mapping[str, Any], refusal: adyen_refusals.Refusal) -> ChargeOutcome:
    """DECLINED (or REQUIRES_ACTION, for a refusal that wants the shopper) with the refusal's
    codes."""
    kind = OutcomeKind.DECLINED
    if refusal.decline_code == _AUTHENTICATION_REQUIRED:
        kind = OutcomeKind.REQUIRES_ACTION
    result = answer.get("resultCode") or answer.get("eventCode") or "Refused"
    return ChargeOutcome(
        kind,
        str(answer.get("pspReference") or ""),
        decline_code=refusal.decline_code,
        network=refusal.network,
        visa_response_code=refusal.visa_response_code,
        mc_advice_code=refusal.mc_advice_code,
        message=f"adyen: {result}: {refusal.reason or 'no reason given'}",
    )


def outcome_for_payment(answer: Mapping[str, Any]) -> ChargeOutcome:
    """Our outcome for the answer of ``POST /payments``."""
    result = answer.get("resultCode")
    psp = str(answer.get("pspReference") or "")
    data = _additional_data(answer)
    brand = _dig(answer, "paymentMethod", "brand")
    if result in _DECLINED_RESULTS:
        refusal = adyen_refusals.normalise(
            refusal_reason_code=answer.get("refusalReasonCode"),
            refusal_reason=answer.get("refusalReason"),
            additional_data=data,
            brand=brand,
        )
        if result == "Error" and refusal.decline_code == adyen_refusals.GENERIC_DECLINE:
            # An error while processing, with no reason Adyen could name: a soft decline.
            refusal = dataclasses.replace(refusal, decline_code="processing_error")
        return _declined(answer, refusal)
    network = adyen_refusals.network(brand) or adyen_refusals.network(data.get("paymentMethod"))
    if result == "Authorised":
        return ChargeOutcome(OutcomeKind.SUCCEEDED, psp, network=network)
    if result in ("Pending", "Received"):
        return ChargeOutcome(
            OutcomeKind.PENDING,
            psp,
            network=network,
            message=f"adyen: {result}: the AUTHORISATION notification settles it",
        )
    if result in _ACTION_RESULTS:
        return ChargeOutcome(
            OutcomeKind.REQUIRES_ACTION,
            psp,
            decline_code=_AUTHENTICATION_REQUIRED,
            network=network,
            message=f"adyen: {result}: the shopper must act on this payment",
        )
    return ChargeOutcome(
        OutcomeKind.PENDING,
        psp,
        network=network,
        message=f"adyen: unrecognised resultCode {result!r}",
    )


def outcome_for_authorisation_notification(item: Mapping[str, Any]) -> ChargeOutcome:
    """Our outcome for a payment's ``AUTHORISATION`` NotificationRequestItem: what reading a
    pending charge would give, were there a call to read it. ``success`` ``true`` is
    SUCCEEDED; ``false`` is a refusal whose ``reason`` is Adyen's ``refusalReason`` text, with
    the raw codes in ``additionalData`` and the brand in ``paymentMethod``."""
    if item.get("eventCode") != "AUTHORISATION":
        raise ValueError(f"not an AUTHORISATION notification: {item.get('eventCode')!r}")
    psp = str(item.get("pspReference") or "")
    data = _additional_data(item)
    if str(item.get("success") or "").lower() == "true":
        network = adyen_refusals.network(item.get("paymentMethod"))
        return ChargeOutcome(OutcomeKind.SUCCEEDED, psp, network=network)
    refusal = adyen_refusals.normalise(
        refusal_reason_code=None,
        refusal_reason=item.get("reason"),
        additional_data=data,
        brand=item.get("paymentMethod"),
    )
    return _declined(item, refusal)


def _charge_error_outcome(exc: BaseException, attempts: CallAttempts) -> ChargeOutcome:
    """Our outcome for the error that ended ``charge()`` (after any retries)."""
    kind, retryable = _unfinished(exc, attempts)
    if kind is OutcomeKind.DECLINED and _refused_key(exc):
        # Our key was refused: the card's issuer was never asked. A retry plan must neither
        # use up an attempt nor count one against the card networks' limits.
        kind, retryable = OutcomeKind.NOT_ATTEMPTED, True
    return ChargeOutcome(kind, message=_message(exc), retryable=retryable)


# -- the SDK's HTTP layer ----------------------------------------------------------------------


class _HttpxTransport:
    """The SDK's HTTP client interface (``request`` and ``user_agent``) on one ``httpx.Client``:
    pooled connections, a timeout, and exceptions that say whether a request left (see
    ``_NOT_SENT_ERRORS``). The SDK raises its own errors for non-2xx answers from the status
    code this returns."""

    def __init__(self, timeout_seconds: float, max_connections: int) -> None:
        self.user_agent = f"refund-retry {Adyen.settings.LIB_NAME}/{Adyen.settings.LIB_VERSION}"
        self._client = httpx.Client(
            timeout=timeout_seconds,
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )

    def request(
        self,
        method: str,
        url: str,
        json: object = None,
        data: object = None,
        username: str = "",
        password: str = "",
        xapikey: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[str, object, int, httpx.Headers]:
        """Send one request; returns (body text, the request's JSON, status, headers) as the
        SDK expects."""
        sent = dict(headers or {})
        auth: httpx.BasicAuth | None = None
        if xapikey:
            sent["X-API-Key"] = xapikey
        elif username and password:
            auth = httpx.BasicAuth(username, password)
        response = self._client.request(
            method, url, json=json if method in ("POST", "PATCH") else None, headers=sent, auth=auth
        )
        return response.text, json, response.status_code, response.headers

    def close(self) -> None:
        self._client.close()


class AdyenGateway:
    """Refunds (payment refunds) and charges (payments with a stored card) through Adyen's
    Checkout API, with one SDK client per gateway."""

    name = "adyen"
    # No Checkout API call reads a refund: its outcome only arrives by notification.
    reads_refunds = False

    def __init__(
        self,
        api_key: str,
        merchant_account: str,
        *,
        environment: str = "test",
        live_url_prefix: str = "",
        api_base: str = "",
        recurring_processing_model: str = "Subscription",
        max_attempts: int = 3,
        timeout_seconds: float = 10.0,
        max_concurrency: int = 16,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        if not merchant_account:
            raise ValueError("merchant_account is required")
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {', '.join(ENVIRONMENTS)}")
        if environment == "live" and not live_url_prefix and not api_base:
            raise ValueError("the live environment needs live_url_prefix")
        if "-live" in api_base:
            # The SDK rewrites "-live" in a test-platform URL; a custom base is used as is.
            raise ValueError("api_base must not contain '-live': set environment='live'")
        if recurring_processing_model not in RECURRING_PROCESSING_MODELS:
            models = ", ".join(RECURRING_PROCESSING_MODELS)
            raise ValueError(f"recurring_processing_model must be one of {models}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._merchant_account = merchant_account
        self._model = recurring_processing_model
        self._max_attempts = max_attempts
        self._retries = Retries(
            "Adyen",
            log,
            _transient,
            (AdyenError, httpx.HTTPError, _UnreadableAnswer),
            max_attempts,
            error_fields=lambda exc: {"http_status": _status(exc)},
        )
        self._transport = _HttpxTransport(timeout_seconds, max_concurrency)
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="adyen")
        adyen = Adyen.Adyen(
            xapikey=api_key,
            platform="test" if api_base else environment,
            live_endpoint_prefix=live_url_prefix or None,
            api_checkout_version=CHECKOUT_API_VERSION,
        )
        adyen.client.http_client = self._transport
        adyen.client.http_init = True
        self._payments = adyen.checkout.payments_api
        self._modifications = adyen.checkout.modifications_api
        if api_base:
            base = f"{api_base.rstrip('/')}/v{CHECKOUT_API_VERSION}"
            self._payments.baseUrl = self._modifications.baseUrl = base

    def __repr__(self) -> str:
        return f"AdyenGateway(merchant_account={self._merchant_account!r})"

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        body = _refund_body(request, self._merchant_account)
        psp = request.gateway_transaction_id

        async def create() -> JSON:
            return await self._send(
                self._modifications.refund_captured_payment,
                body,
                psp,
                idempotency_key=request.idempotency_key,
                required="pspReference",
            )

        ids = refund_log_ids(request)
        attempts = CallAttempts()
        try:
            answer = await self._retries.run(create, attempts, "adyen_refund_create", ids)
        except (AdyenError, httpx.HTTPError, _UnreadableAnswer) as exc:
            code = _error_code(exc)
            kind, retryable = _unfinished(exc, attempts)
            _log_failure("adyen_refund_create", ids, attempts, exc, kind, code.value)
            if kind is OutcomeKind.DECLINED:
                return RefundOutcome.declined(code, _message(exc), retryable=retryable)
            return RefundOutcome(kind, "", code.value, _message(exc), retryable=retryable)
        return outcome_for_refund_answer(answer)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        # No Checkout API call reads a refund: it is pending until its REFUND notification.
        return RefundOutcome(OutcomeKind.PENDING, gateway_refund_id)

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        if request.gateway_charge_id:
            # No Checkout API call reads a payment: it is pending until its AUTHORISATION
            # notification. Never created again.
            return ChargeOutcome(
                OutcomeKind.PENDING,
                request.gateway_charge_id,
                message="adyen: pending until its AUTHORISATION notification",
            )
        body = _payment_body(request, self._merchant_account, self._model)

        async def create() -> JSON:
            return await self._send(
                self._payments.payments,
                body,
                idempotency_key=request.idempotency_key,
                required="resultCode",
            )

        ids = charge_log_ids(request)
        attempts = CallAttempts()
        try:
            answer = await self._retries.run(create, attempts, "adyen_charge_create", ids)
        except (AdyenError, httpx.HTTPError, _UnreadableAnswer) as exc:
            outcome = _charge_error_outcome(exc, attempts)
            code = _error_code(exc).value
            _log_failure("adyen_charge_create", ids, attempts, exc, outcome.kind, code)
            return outcome
        return outcome_for_payment(answer)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._transport.close()

    async def _send(
        self, call: Callable[..., Any], *args: object, idempotency_key: str, required: str
    ) -> JSON:
        """One SDK call in the gateway's thread pool; its answer's JSON object, which must have
        the field ``required``."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._executor, functools.partial(call, *args, idempotency_key=idempotency_key)
        )
        message = getattr(result, "message", None)
        if not isinstance(message, dict) or not message.get(required):
            raise _UnreadableAnswer(f"the answer has no {required}")
        return message


def _refund_body(request: RefundRequest, merchant_account: str) -> JSON:
    """The body of ``POST /payments/{paymentPspReference}/refunds`` for ``request``."""
    body: JSON = {
        "merchantAccount": merchant_account,
        "amount": {"value": request.amount.minor_units, "currency": request.amount.currency},
        "reference": request.idempotency_key,
    }
    reason = MERCHANT_REFUND_REASONS.get(request.reason)
    if reason is not None:
        body["merchantRefundReason"] = reason
    return body


def _payment_body(request: ChargeRequest, merchant_account: str, model: str) -> JSON:
    """The body of ``POST /payments`` charging the stored card of ``request`` as a
    merchant-initiated transaction."""
    metadata = {"plan_id": request.plan_id, "attempt": str(request.attempt)}
    for key, value in request.metadata.items():
        if len(metadata) >= _METADATA_PAIRS:
            break
        if len(key) <= _METADATA_KEY and len(value) <= _METADATA_VALUE:
            metadata.setdefault(key, value)
    return {
        "merchantAccount": merchant_account,
        "amount": {"value": request.amount.minor_units, "currency": request.amount.currency},
        "reference": request.idempotency_key,
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": request.payment_method},
        "shopperReference": request.customer_id,
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": model,
        "metadata": metadata,
    }


def _log_failure(
    action: str,
    log_ids: Mapping[str, object],
    attempts: CallAttempts,
    exc: BaseException,
    kind: OutcomeKind,
    code: str,
) -> None:
    log.warning(
        "Adyen call ended in %s (%s)",
        kind.value,
        code,
        extra={
            "action": f"{action}_failed",
            **log_ids,
            "call_attempts": attempts.count,
            "error": type(exc).__name__,
            "http_status": _status(exc) or None,
            "error_code": getattr(exc, "error_code", None) or None,
            "psp_reference": getattr(exc, "psp", None) or None,
        },
    )
