"""The Stripe gateway: refunds and charges through the official ``stripe`` SDK, mapped to our
outcomes.

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

* **A charge** (:meth:`StripeGateway.charge`, the payment-retry engine's attempts) is one
  ``POST /v1/payment_intents`` with ``confirm=true`` and ``off_session=true`` for the saved
  card, under the request's idempotency key. ``automatic_payment_methods[allow_redirects]`` is
  ``never``: off-session no one can follow a redirect, and Stripe refuses to confirm an intent
  that allows redirects without a ``return_url``. The PaymentIntent's status: ``succeeded`` ->
  SUCCEEDED; ``processing`` (and ``requires_capture``) -> PENDING; ``requires_action`` ->
  REQUIRES_ACTION; ``canceled`` -> DECLINED. A declined confirmation is a 402
  ``stripe.CardError``: DECLINED, with the decline code from ``error.decline_code`` (or
  ``error.code`` when that is itself a decline reason, e.g. ``expired_card``; a bare
  ``card_declined`` is ``generic_decline``); an ``authentication_required`` decline is
  REQUIRES_ACTION (the customer must come back and authenticate). The network is the charge's
  ``payment_method_details.card.network`` (we expand ``latest_charge``), else the card's
  ``brand``; the raw network codes are the error's ``network_decline_code`` (Visa's response
  code) and ``network_advice_code`` (Mastercard's merchant advice code), falling back to the
  PaymentIntent's ``last_payment_error`` and the charge's ``outcome`` (Stripe added all three
  places in API version 2024-12-18.acacia). Transient errors, NOT_ATTEMPTED and UNKNOWN work as
  for refunds, through the same retry loop; the normalised error code is kept in the message.
  Unlike a refund, a charge refused for our API key is NOT_ATTEMPTED (retryable): the issuer
  was never asked, so a retry plan must not use up an attempt on it.
* **A pending charge read again.** A ``processing`` PaymentIntent settles later, but replaying
  the create with the same idempotency key only replays Stripe's saved first answer
  (``processing``, for as long as Stripe keeps the key). So when the request carries
  ``gateway_charge_id`` (the PaymentIntent id of that PENDING answer), :meth:`StripeGateway.charge`
  sends no POST: it reads the intent (``GET /v1/payment_intents/{id}``, ``latest_charge``
  expanded) through the same retry loop and maps it as above; an intent whose async payment
  failed is ``requires_payment_method`` with ``last_payment_error``: DECLINED with its decline
  code. The intent exists, so failing to read it says nothing about the money: every error is
  UNKNOWN (never NOT_ATTEMPTED nor DECLINED), ``retryable`` when reading again can help
  (transient errors, and a refused API key, which an operator fixes; not an unknown id). An
  intent whose ``metadata[plan_id]`` names another plan is UNKNOWN too, not retryable: a person
  must look, rather than a plan be recovered by another plan's money.

Stripe's error messages are kept (prefixed ``stripe:``); the API key never is, nor is it logged.
Amounts are sent as ``Money.minor_units`` (ISO 4217 exponents), which is what Stripe expects for
its two- and zero-decimal currencies. Stripe lists a few currencies with special amount rules
(its "special cases"); those are not handled here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import httpx
import stripe
from stripe.params import (
    PaymentIntentCreateParams,
    PaymentIntentRetrieveParams,
    RefundCreateParams,
)

from service.gateways.base import (
    CardNetwork,
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

# A charge's ``payment_method_details.card.network`` (or a card's ``brand``) -> our network.
# Stripe's values: amex, cartes_bancaires, diners, discover, eftpos_au, interac, jcb, link,
# mastercard, unionpay, visa, unknown. The rest are OTHER; ``unknown`` (or nothing) is "".
_NETWORKS: Final[dict[str, CardNetwork]] = {
    "visa": CardNetwork.VISA,
    "mastercard": CardNetwork.MASTERCARD,
    "amex": CardNetwork.AMEX,
    "discover": CardNetwork.DISCOVER,
    "unknown": CardNetwork.UNKNOWN,
}

# The card error ``code`` that is no decline reason of its own: the reason is in
# ``decline_code`` (``generic_decline`` when Stripe gives none). Other codes (``expired_card``,
# ``incorrect_cvc``, ...) are Stripe decline codes themselves.
_CARD_DECLINED: Final = "card_declined"
# The decline (``code`` or ``decline_code``) that asks for the customer, not a retry.
_AUTHENTICATION_REQUIRED: Final = "authentication_required"


def _transient(exc: BaseException) -> Transient | None:
    """The transient class of ``exc``, or None when retrying cannot help."""
    if isinstance(exc, stripe.RateLimitError):
        return Transient(RefundErrorCode.RATE_LIMITED, may_have_moved_money=False)
    if isinstance(exc, stripe.APIConnectionError):
        # The SDK wraps every httpx error in APIConnectionError, raised ``from`` the original.
        cause = exc.__cause__
        if isinstance(cause, _NOT_SENT_ERRORS):
            return Transient(RefundErrorCode.GATEWAY_UNREACHABLE, may_have_moved_money=False)
        if isinstance(cause, httpx.TimeoutException):
            return Transient(RefundErrorCode.TIMEOUT, may_have_moved_money=True)
        return Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
    if isinstance(exc, stripe.APIError):  # 5xx, 409 (same key in flight), unreadable answers
        return Transient(RefundErrorCode.GATEWAY_ERROR, may_have_moved_money=True)
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


def _unfinished(exc: stripe.StripeError, attempts: CallAttempts) -> tuple[OutcomeKind, bool]:
    """The kind of outcome, and ``retryable``, of the error that ended a create call (after any
    retries). A card error is DECLINED here; charges read its details themselves."""
    # These answers come from inside Stripe's idempotency layer: they are final for the key,
    # whatever earlier attempts did.
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError | stripe.CardError):
        return OutcomeKind.DECLINED, False
    if attempts.may_have_moved_money:
        # An attempt was sent and its answer lost; the error that ended the call (a rate limit,
        # a refused connection, a rejected key) is checked before the idempotency layer and
        # says nothing about it. Replay with the same key.
        return OutcomeKind.UNKNOWN, True
    if _transient(exc) is not None:
        return OutcomeKind.NOT_ATTEMPTED, True
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return OutcomeKind.DECLINED, False
    # Any other Stripe error: we cannot tell what happened; replaying with the key is safe.
    return OutcomeKind.UNKNOWN, True


def _outcome_for_error(exc: stripe.StripeError, attempts: CallAttempts) -> RefundOutcome:
    """Our outcome for the error that ended ``refund()`` (after any retries)."""
    code = _error_code(exc)
    kind, retryable = _unfinished(exc, attempts)
    if kind is OutcomeKind.DECLINED:
        return RefundOutcome.declined(code, _message(exc), retryable=retryable)
    return RefundOutcome(kind, "", code.value, _message(exc), retryable=retryable)


# -- charges -----------------------------------------------------------------------------------


def _dig(value: object, *keys: str) -> object:
    """``value[k1][k2]...`` through JSON dicts and ``StripeObject``s; None when a key is missing
    (Stripe leaves out null fields of errors, and unexpanded fields are plain ids)."""
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, stripe.StripeObject) and key in value:
            value = value[key]
        else:
            return None
    return value


def _text(value: object, *keys: str) -> str:
    found = _dig(value, *keys)
    return found if isinstance(found, str) else ""


def _network(charge: object, payment_method: object) -> str:
    """Our network of a charge (``payment_method_details.card.network``), else of its card
    (``card.brand``); "" when neither says."""
    raw = _text(charge, "payment_method_details", "card", "network") or _text(
        payment_method, "card", "brand"
    )
    if not raw:
        return CardNetwork.UNKNOWN
    return _NETWORKS.get(raw.lower(), CardNetwork.OTHER)


def _network_codes(network: str, *sources: object) -> tuple[str, str]:
    """(``visa_response_code``, ``mc_advice_code``): the first ``network_decline_code`` and
    ``network_advice_code`` the ``sources`` give, each kept only for its own network."""
    decline = next((c for s in sources if (c := _text(s, "network_decline_code"))), "")
    advice = next((c for s in sources if (c := _text(s, "network_advice_code"))), "")
    return (
        decline if network == CardNetwork.VISA else "",
        advice if network == CardNetwork.MASTERCARD else "",
    )


def _decline_code(error: object) -> str:
    """Stripe's decline code of a card error (or of a ``last_payment_error``)."""
    decline_code = _text(error, "decline_code")
    if decline_code:
        return decline_code
    code = _text(error, "code")
    if code == _CARD_DECLINED:
        return "generic_decline"
    return code  # expired_card, incorrect_cvc, processing_error, ... (decline reasons themselves)


def _declined_charge(
    error: object, intent: object, charge: object, *, message: str
) -> ChargeOutcome:
    """Our outcome for a declined charge: ``error`` is the 402's ``error`` (or the
    PaymentIntent's ``last_payment_error``), ``charge`` the failed charge when expanded."""
    decline_code = _decline_code(error)
    network = _network(charge, _dig(error, "payment_method"))
    visa_code, mac = _network_codes(
        network, error, _dig(intent, "last_payment_error"), _dig(charge, "outcome")
    )
    kind = OutcomeKind.DECLINED
    if _AUTHENTICATION_REQUIRED in (decline_code, _text(error, "code")):
        kind, decline_code = OutcomeKind.REQUIRES_ACTION, _AUTHENTICATION_REQUIRED
    return ChargeOutcome(
        kind,
        _text(intent, "id"),
        decline_code=decline_code,
        network=network,
        visa_response_code=visa_code,
        mc_advice_code=mac,
        message=message,
    )


def outcome_for_card_error(exc: stripe.CardError) -> ChargeOutcome:
    """Our outcome for the 402 of a declined ``POST /v1/payment_intents`` (confirm=true)."""
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error") or {}
    intent = _dig(error, "payment_intent")
    return _declined_charge(error, intent, _dig(intent, "latest_charge"), message=_message(exc))


def outcome_for_payment_intent(intent: stripe.PaymentIntent) -> ChargeOutcome:
    """Our outcome for a PaymentIntent that ``POST /v1/payment_intents`` (confirm=true) returned,
    or that ``GET /v1/payment_intents/{id}`` read later."""
    status = intent.status
    charge = _dig(intent, "latest_charge")
    if status == "requires_payment_method" or status == "canceled":
        error = _dig(intent, "last_payment_error")
        message = _text(error, "message") or f"the payment intent is {status}"
        return _declined_charge(error, intent, charge, message=f"stripe: {message}")
    network = _network(charge, _dig(intent, "payment_method"))
    kinds = {
        "succeeded": OutcomeKind.SUCCEEDED,
        "processing": OutcomeKind.PENDING,
        "requires_capture": OutcomeKind.PENDING,  # authorised; we never ask for manual capture
        "requires_action": OutcomeKind.REQUIRES_ACTION,
    }
    kind = kinds.get(status)
    message = ""
    if kind is None:
        # Not a state a confirmed intent should be in: ask again rather than guess.
        kind, message = (
            OutcomeKind.PENDING,
            f"stripe: unrecognised payment intent status {status!r}",
        )
    elif kind is OutcomeKind.REQUIRES_ACTION:
        message = "stripe: the customer must authenticate this payment"
    return ChargeOutcome(kind, intent.id, network=network, message=message)


def _charge_error_outcome(exc: stripe.StripeError, attempts: CallAttempts) -> ChargeOutcome:
    """Our outcome for the error that ended ``charge()`` (after any retries)."""
    if isinstance(exc, stripe.CardError):
        return outcome_for_card_error(exc)
    kind, retryable = _unfinished(exc, attempts)
    if kind is OutcomeKind.DECLINED and isinstance(
        exc, stripe.AuthenticationError | stripe.PermissionError
    ):
        # Our key was refused: the card's issuer was never asked. A retry plan must neither
        # use up an attempt nor count one against the card networks' limits; it is tried
        # again once an operator has fixed the key (the message says which error).
        kind, retryable = OutcomeKind.NOT_ATTEMPTED, True
    return ChargeOutcome(kind, message=_charge_error_message(exc), retryable=retryable)


def _charge_error_message(exc: stripe.StripeError) -> str:
    """A charge outcome has no field for the error's code: its message starts with it (Stripe's
    own code for an invalid request, e.g. ``resource_missing``, else our normalised one)."""
    code = exc.code if isinstance(exc, stripe.InvalidRequestError) and exc.code else None
    label = code or _error_code(exc).value
    return f"stripe: {label}: {exc.user_message or type(exc).__name__}"


def _fetch_error_outcome(exc: stripe.StripeError, intent_id: str) -> ChargeOutcome:
    """Our outcome for the error that ended reading a pending charge (after any retries)."""
    # The intent exists (Stripe gave us its id): failing to read it says nothing about the
    # money. Reading again helps after a transient error, or once an operator has fixed a
    # refused key; not for an id Stripe does not know (nor any other invalid request).
    retryable = _is_transient(exc) or isinstance(
        exc, stripe.AuthenticationError | stripe.PermissionError
    )
    return ChargeOutcome(
        OutcomeKind.UNKNOWN, intent_id, message=_charge_error_message(exc), retryable=retryable
    )


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
    """Refunds (v1 refunds) and charges (v1 PaymentIntents) through Stripe's API, one
    ``StripeClient`` per gateway."""

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
        self._retries = Retries("Stripe", log, _transient, (stripe.StripeError,), max_attempts)
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

        ids = refund_log_ids(request)
        attempts = CallAttempts()
        try:
            refund = await self._retries.run(create, attempts, "stripe_refund_create", ids)
        except stripe.StripeError as exc:
            outcome = _outcome_for_error(exc, attempts)
            _log_failure(
                "stripe_refund_create", ids, attempts, exc, outcome.kind, outcome.error_code
            )
            return outcome
        return outcome_for_refund(refund)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        async def retrieve() -> stripe.Refund:
            return await self._client.v1.refunds.retrieve_async(gateway_refund_id)

        # The refund exists (Stripe gave us its id), so failing to read it says nothing about
        # the money: every failure is UNKNOWN (ask again later), never NOT_ATTEMPTED nor
        # DECLINED. ``retryable`` says whether asking again can help.
        ids = refund_log_ids(request)
        attempts = CallAttempts()
        try:
            refund = await self._retries.run(retrieve, attempts, "stripe_refund_fetch", ids)
        except stripe.StripeError as exc:
            outcome = RefundOutcome(
                OutcomeKind.UNKNOWN,
                gateway_refund_id,
                _error_code(exc).value,
                _message(exc),
                retryable=_is_transient(exc),
            )
            _log_failure(
                "stripe_refund_fetch", ids, attempts, exc, outcome.kind, outcome.error_code
            )
            return outcome
        return outcome_for_refund(refund)

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        if request.gateway_charge_id:
            return await self._fetch_charge(request)
        params = _payment_intent_params(request)
        options: stripe.RequestOptions = {"idempotency_key": request.idempotency_key}

        async def create() -> stripe.PaymentIntent:
            return await self._client.v1.payment_intents.create_async(
                params=params, options=options
            )

        ids = charge_log_ids(request)
        attempts = CallAttempts()
        try:
            intent = await self._retries.run(create, attempts, "stripe_charge_create", ids)
        except stripe.StripeError as exc:
            outcome = _charge_error_outcome(exc, attempts)
            code = outcome.decline_code or _error_code(exc).value
            _log_failure("stripe_charge_create", ids, attempts, exc, outcome.kind, code)
            return outcome
        return outcome_for_payment_intent(intent)

    async def _fetch_charge(self, request: ChargeRequest) -> ChargeOutcome:
        """The current state of the PaymentIntent ``request.gateway_charge_id`` (a charge that
        answered PENDING): read, never created again."""
        intent_id = request.gateway_charge_id
        params: PaymentIntentRetrieveParams = {"expand": ["latest_charge"]}

        async def retrieve() -> stripe.PaymentIntent:
            return await self._client.v1.payment_intents.retrieve_async(intent_id, params=params)

        ids = {**charge_log_ids(request), "gateway_charge_id": intent_id}
        attempts = CallAttempts()
        try:
            intent = await self._retries.run(retrieve, attempts, "stripe_charge_fetch", ids)
        except stripe.StripeError as exc:
            outcome = _fetch_error_outcome(exc, intent_id)
            _log_failure(
                "stripe_charge_fetch", ids, attempts, exc, outcome.kind, _error_code(exc).value
            )
            return outcome
        owner = _text(intent, "metadata", "plan_id")
        if owner and owner != request.plan_id:
            log.error(
                "Stripe payment intent belongs to another retry plan",
                extra={"action": "stripe_charge_fetch_mismatch", **ids, "intent_plan_id": owner},
            )
            return ChargeOutcome(
                OutcomeKind.UNKNOWN,
                intent_id,
                message=f"stripe: payment intent {intent_id} belongs to plan {owner}",
                retryable=False,
            )
        return outcome_for_payment_intent(intent)

    async def close(self) -> None:
        # Closes the SDK's httpx.AsyncClient; the SDK leaves this method unannotated.
        await self._http_client.close_async()  # type: ignore[no-untyped-call]


def _log_failure(
    action: str,
    log_ids: Mapping[str, object],
    attempts: CallAttempts,
    exc: stripe.StripeError,
    kind: OutcomeKind,
    code: str,
) -> None:
    log.warning(
        "Stripe call ended in %s (%s)",
        kind.value,
        code,
        extra={
            "action": f"{action}_failed",
            **log_ids,
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


def _payment_intent_params(request: ChargeRequest) -> PaymentIntentCreateParams:
    """The parameters of ``POST /v1/payment_intents`` that charge ``request`` at once."""
    return {
        "amount": request.amount.minor_units,
        "currency": request.amount.currency.lower(),
        "customer": request.customer_id,
        "payment_method": request.payment_method,
        "confirm": True,
        "off_session": True,
        # Off-session no one can follow a redirect; and without this Stripe refuses to confirm
        # (it wants a ``return_url`` for the redirect-based methods it would otherwise allow).
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "metadata": {
            **request.metadata,
            "plan_id": request.plan_id,
            "attempt": str(request.attempt),
        },
        # The charge, for the network it went through and its outcome's network codes.
        "expand": ["latest_charge"],
    }
