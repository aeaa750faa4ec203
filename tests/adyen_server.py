"""A local HTTP server that speaks the part of Adyen's Checkout API (v71) our gateway uses, and
produces the notifications Adyen sends about it.

Tests never reach the internet: this stub listens on 127.0.0.1 (a free port) in a background
thread, and the real ``Adyen`` SDK talks to it. It follows Adyen's documented behaviour where
our code depends on it (https://docs.adyen.com/api-explorer/Checkout/71/overview, "API
idempotency", "Refusal reasons", "Raw responses", "Verify HMAC signatures"):

* **Authentication**: the ``X-API-Key`` header; a missing or wrong key is a 401
  (``errorType`` ``security``). The ``merchantAccount`` of the body must be the stub's:
  another is a 403 ``901`` "Invalid Merchant Account".
* **Routes**: ``POST /v71/payments`` and ``POST /v71/payments/{paymentPspReference}/refunds``
  (another version or path is a 404). Bodies are JSON; a field the request type does not have
  is a 400 ``702`` ("Structure of ... contains the following unknown fields"), as Adyen
  answers.
* **Idempotency** (``Idempotency-Key`` header): once a request is executed its answer is
  saved, and a request with the same key gets that answer again (no new payment or refund),
  whatever its body; every answer to a request with a key carries the key back in the
  ``Idempotency-Key`` header. A request whose key is still being executed gets a 422 ``704``
  "request already processed or in progress". Answers given before execution (authentication,
  the merchant account, validation, the injected faults below) are not saved, so a retry with
  the same key can succeed. :attr:`AdyenStubServer.requests` records every request with its
  body, so a test can check that a replay sent the same one.
* **Refunds** answer 201 ``status`` ``received`` with the refund's own ``pspReference`` and
  change nothing yet; :meth:`AdyenStubServer.settle_refund` finishes one and returns the
  ``REFUND`` (or ``REFUND_FAILED``) notification Adyen would send. By default a refund
  succeeds when its currency is the payment's and its amount fits what is left of the payment;
  otherwise the ``REFUND`` notification has ``success`` ``false`` and a reason. A refund of a
  pspReference the stub does not know is a 422 ``167`` (Adyen does not document the answer
  for this case; the stub's choice).
* **Payments** (``POST /payments``) charge a stored card registered with
  :meth:`AdyenStubServer.add_stored_card` as a merchant-initiated transaction:
  ``paymentMethod.storedPaymentMethodId`` of the shopper in ``shopperReference``,
  ``shopperInteraction`` ``ContAuth`` and a ``recurringProcessingModel`` (``Subscription``,
  ``UnscheduledCardOnFile`` or ``CardOnFile``); a token of another shopper (or none known) is
  a 422 ``803`` "PaymentDetail not found". Other validation errors are 422s with Adyen's
  codes where the stub knows them (``100`` amount, ``130`` reference, ``137`` invalid amount,
  ``138`` currency) and ``000`` with a message naming the field otherwise (the gateway reads no
  code but ``167`` and ``704``). The card's behaviour decides the ``resultCode``:

==========================================  ================================================
``authorise`` (default)                     ``Authorised``; the payment can then be refunded
``refuse:CODE[:RAW[:ADVICE]]``              ``Refused`` with ``refusalReasonCode`` CODE and
                                            its ``refusalReason``; RAW (an issuer code, e.g.
                                            ``51``) as ``additionalData.refusalReasonRaw``
                                            (``"51 : <text>"``), ADVICE (Mastercard's) as
                                            ``additionalData.merchantAdviceCode``
``error:CODE``                              ``Error`` with that refusal reason
``pending``, ``received``                   ``Pending`` / ``Received`` until
                                            :meth:`~AdyenStubServer.settle_payment`, which
                                            returns the ``AUTHORISATION`` notification
``fail_with_500:N``                         the next N POSTs answer 500 (with
                                            ``Transient-Error: true``)
``rate_limit:N``                            the next N POSTs answer 429
``hold:N``                                  the next N POSTs wait, admitted and in progress
                                            under their key, until
                                            :meth:`~AdyenStubServer.release`
==========================================  ================================================

Payments registered with :meth:`AdyenStubServer.add_payment` take the same faults
(``behaviour=``) for their refunds. The 500s and 429s are used up in the order written.

**Notifications** are built as Adyen sends them: ``{"live": "false", "notificationItems":
[{"NotificationRequestItem": {...}}]}``, each item with ``additionalData.hmacSignature``
computed here, independently of the service's code and of the SDK's: HMAC-SHA256 with the hex
HMAC key decoded to bytes, over ``pspReference:originalReference:merchantAccountCode:
merchantReference:value:currency:eventCode:success`` (an absent field is empty), base64.
:meth:`AdyenStubServer.deliver` POSTs one to a URL (with basic auth when given) and returns
the status and body; Adyen expects ``[accepted]``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.json_stub import JsonStubServer

JSON = dict[str, Any]

DEFAULT_API_KEY = "AQEyhmfxK4_stub_api_key_0123456789abcdef"
DEFAULT_MERCHANT_ACCOUNT = "RefundRetryECOM"
# An HMAC key as the Customer Area shows it: 32 bytes in hex.
DEFAULT_HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
VERSION = "v71"

# refusalReasonCode -> refusalReason (https://docs.adyen.com/development-resources/refusal-reasons)
REFUSAL_REASONS = {
    "2": "Refused",
    "3": "Referral",
    "4": "Acquirer Error",
    "5": "Blocked Card",
    "6": "Expired Card",
    "7": "Invalid Amount",
    "8": "Invalid Card Number",
    "9": "Issuer Unavailable",
    "10": "Not supported",
    "11": "3D Not Authenticated",
    "12": "Not enough balance",
    "14": "Acquirer Fraud",
    "15": "Cancelled",
    "20": "FRAUD",
    "22": "FRAUD-CANCELLED",
    "23": "Transaction Not Permitted",
    "24": "CVC Declined",
    "25": "Restricted Card",
    "26": "Revocation Of Auth",
    "27": "Declined Non Generic",
    "28": "Withdrawal amount exceeded",
    "29": "Withdrawal count exceeded",
    "31": "Issuer Suspected Fraud",
    "38": "Authentication required",
    "46": "Transaction blocked by Adyen to prevent excessive retry fees",
}
# Issuer codes -> their text in ``refusalReasonRaw`` (as the "Raw responses" page lists them).
RAW_TEXTS = {
    "05": "Do not honor",
    "14": "Invalid card number",
    "51": "Insufficient funds/over credit limit",
    "54": "Expired card",
    "59": "Suspected fraud",
    "62": "Restricted card",
    "R1": "Revocation of authorization order",
}
ADVICE_TEXTS = {
    "01": "New account information available",
    "02": "Cannot approve at this time, try again later",
    "03": "Do not try again",
    "21": "Payment Cancellation",
    "24": "Retry after 1 hour",
}
RECURRING_MODELS = frozenset({"Subscription", "UnscheduledCardOnFile", "CardOnFile"})
REFUND_REASONS = frozenset({"FRAUD", "CUSTOMER REQUEST", "RETURN", "DUPLICATE", "OTHER"})
_PAYMENT_FIELDS = frozenset(
    {
        "merchantAccount",
        "amount",
        "reference",
        "paymentMethod",
        "shopperReference",
        "shopperInteraction",
        "recurringProcessingModel",
        "metadata",
        "returnUrl",
        "shopperEmail",
        "storePaymentMethod",
        "additionalData",
        "applicationInfo",
    }
)
_REFUND_FIELDS = frozenset(
    {
        "merchantAccount",
        "amount",
        "reference",
        "merchantRefundReason",
        "applicationInfo",
        "capturePspReference",
        "enhancedSchemeData",
        "lineItems",
        "splits",
        "store",
    }
)
_CARD_OUTCOMES = frozenset({"authorise", "pending", "received"})
_PSP_ALPHABET = string.digits + string.ascii_uppercase
# A held request goes on by itself after this long (a test that forgot to release it).
_HOLD_LIMIT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the stub answered."""

    method: str
    path: str
    idempotency_key: str | None
    body: JSON | None
    status: int
    replayed: bool


@dataclass(slots=True)
class StubResponse:
    status: int
    body: JSON
    headers: dict[str, str] = field(default_factory=dict)
    saved: bool = True  # executed: saved for idempotent replay


@dataclass(slots=True)
class _Fault:
    kind: str  # "500" or "429"
    remaining: int


@dataclass(slots=True)
class _Faults:
    """Faults injected into the POSTs acting on a payment or a card."""

    queue: list[_Fault] = field(default_factory=list)
    held_requests: int = 0  # the next POSTs that wait for ``release()``

    def parse(self, step: str) -> bool:
        name, _, arg = step.partition(":")
        if name == "fail_with_500":
            self.queue.append(_Fault("500", int(arg)))
        elif name == "rate_limit":
            self.queue.append(_Fault("429", int(arg)))
        elif name == "hold":
            self.held_requests += int(arg)
        else:
            return False
        return True

    def take(self) -> StubResponse | None:
        while self.queue and self.queue[0].remaining <= 0:
            self.queue.pop(0)
        if not self.queue:
            return None
        fault = self.queue[0]
        fault.remaining -= 1
        if fault.kind == "429":
            return adyen_error(429, "000", "Too many requests", "throttling", saved=False)
        response = adyen_error(500, "000", "An unknown error occurred", "internal", saved=False)
        response.headers["Transient-Error"] = "true"
        return response

    def take_hold(self) -> bool:
        """Whether the next admitted POST waits for ``release()`` before it executes."""
        if self.held_requests:
            self.held_requests -= 1
            return True
        return False


@dataclass(slots=True)
class Payment:
    """An authorised, captured payment that refunds can be made against."""

    psp_reference: str
    amount: int
    currency: str
    brand: str = "visa"
    merchant_reference: str = ""
    refunded: int = 0  # by succeeded refunds
    faults: _Faults = field(default_factory=_Faults)

    @property
    def remaining(self) -> int:
        return self.amount - self.refunded


@dataclass(slots=True)
class StoredCard:
    """A stored card (``storedPaymentMethodId``) of a shopper, for merchant-initiated payments."""

    stored_payment_method_id: str
    shopper_reference: str
    brand: str
    outcome: str = "authorise"
    refusal_code: str = ""
    raw_code: str = ""
    advice_code: str = ""
    faults: _Faults = field(default_factory=_Faults)


@dataclass(slots=True)
class Refund:
    """A refund as the stub keeps it: ``status`` received, then succeeded, refused or failed."""

    psp_reference: str
    payment: Payment
    amount: int
    currency: str
    reference: str
    status: str = "received"


def adyen_error(
    status: int, error_code: str, message: str, error_type: str, *, saved: bool = True
) -> StubResponse:
    """An error in Adyen's shape: ``{"status", "errorCode", "message", "errorType",
    "pspReference"}``."""
    body = {
        "status": status,
        "errorCode": error_code,
        "message": message,
        "errorType": error_type,
        "pspReference": new_psp_reference(),
    }
    return StubResponse(status, body, saved=saved)


def _invalid(error_code: str, message: str, status: int = 422) -> StubResponse:
    """A validation error: answered before execution, never saved."""
    return adyen_error(status, error_code, message, "validation", saved=False)


def new_psp_reference() -> str:
    """A pspReference as Adyen makes them: 16 digits and capital letters."""
    return "".join(secrets.choice(_PSP_ALPHABET) for _ in range(16))


def hmac_signature(item: Mapping[str, Any], hex_key: str) -> str:
    """Adyen's HMAC signature of a NotificationRequestItem: HMAC-SHA256 with the hex key
    decoded, over the eight fields joined by colons (absent ones empty), base64."""
    amount = item.get("amount") or {}
    fields = (
        item.get("pspReference"),
        item.get("originalReference"),
        item.get("merchantAccountCode"),
        item.get("merchantReference"),
        amount.get("value"),
        amount.get("currency"),
        item.get("eventCode"),
        item.get("success"),
    )
    payload = ":".join("" if value is None else str(value) for value in fields)
    digest = hmac.new(bytes.fromhex(hex_key), payload.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _steps(behaviour: str) -> list[str]:
    return [part.strip() for part in behaviour.split(",") if part.strip()]


Handler = Callable[[str, JSON, str], StubResponse]  # (path argument, body, key) -> answer


class AdyenStubServer(JsonStubServer):
    """A stateful fake of Adyen's payments and refunds (Checkout API) on 127.0.0.1.

    Start it with :meth:`start` (or the ``adyen_server`` fixture); register payments with
    :meth:`add_payment` and stored cards with :meth:`add_stored_card`; finish refunds with
    :meth:`settle_refund` and pending payments with :meth:`settle_payment` (each returns the
    notification Adyen would send); inspect :attr:`refunds`, :attr:`payments` and
    :attr:`requests`.
    """

    name = "adyen"
    content_type = "application/json;charset=UTF-8"

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        merchant_account: str = DEFAULT_MERCHANT_ACCOUNT,
        hmac_key: str = DEFAULT_HMAC_KEY,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.merchant_account = merchant_account
        self.hmac_key = hmac_key
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._payments: dict[str, Payment] = {}
        self._cards: dict[str, StoredCard] = {}
        self._refunds: dict[str, Refund] = {}
        self._answers: dict[str, JSON] = {}  # POST /payments answers by pspReference
        self._requests: list[RecordedRequest] = []
        self._saved: dict[str, StubResponse] = {}
        self._in_flight: set[str] = set()
        self._released = threading.Event()
        self._routes: list[tuple[re.Pattern[str], Handler, frozenset[str], str]] = [
            (re.compile(rf"/{VERSION}/payments"), self._pay, _PAYMENT_FIELDS, "PaymentRequest"),
            (
                re.compile(rf"/{VERSION}/payments/(?P<psp>[^/]+)/refunds"),
                self._refund,
                _REFUND_FIELDS,
                "PaymentRefundRequest",
            ),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._released.set()
        super().stop()

    # -- set-up and introspection for tests --------------------------------------------------

    def add_payment(
        self,
        psp_reference: str | None = None,
        *,
        amount: int,
        currency: str = "USD",
        brand: str = "visa",
        behaviour: str = "",
    ) -> Payment:
        """Register an authorised, captured payment (a new pspReference unless given); its
        ``behaviour`` holds faults for the refund requests made against it."""
        payment = Payment(psp_reference or new_psp_reference(), amount, currency, brand)
        for step in _steps(behaviour):
            if not payment.faults.parse(step):
                raise ValueError(f"unknown payment behaviour {step!r}")
        with self._lock:
            self._payments[payment.psp_reference] = payment
        return payment

    def add_stored_card(
        self,
        stored_payment_method_id: str,
        *,
        shopper_reference: str,
        brand: str = "visa",
        behaviour: str = "authorise",
    ) -> StoredCard:
        """Register a stored card of ``shopper_reference`` and what charging it does."""
        card = StoredCard(stored_payment_method_id, shopper_reference, brand)
        for step in _steps(behaviour):
            name, _, arg = step.partition(":")
            if step in _CARD_OUTCOMES:
                card.outcome = step
            elif name in ("refuse", "error") and arg:
                parts = arg.split(":")
                if len(parts) > 3 or not all(parts) or parts[0] not in REFUSAL_REASONS:
                    raise ValueError(f"bad refusal behaviour {step!r}")
                card.outcome = name
                card.refusal_code = parts[0]
                card.raw_code = parts[1] if len(parts) > 1 else ""
                card.advice_code = parts[2] if len(parts) > 2 else ""
            elif not card.faults.parse(step):
                raise ValueError(f"unknown card behaviour {step!r}")
        with self._lock:
            self._cards[stored_payment_method_id] = card
        return card

    @property
    def refunds(self) -> list[Refund]:
        """The refunds received, oldest first (copies)."""
        with self._lock:
            return [copy.copy(refund) for refund in self._refunds.values()]

    @property
    def payments(self) -> list[JSON]:
        """The answers of the payments made, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(answer) for answer in self._answers.values()]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered, in order."""
        with self._lock:
            return list(self._requests)

    def wait_for_refunds(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` refunds exist and their requests are answered (for
        a request still running after its client gave up)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._refunds) >= count, timeout)

    def wait_until_in_progress(self, key: str, timeout: float = 5.0) -> bool:
        """Block until a request with idempotency key ``key`` is being executed."""
        with self._changed:
            return self._changed.wait_for(lambda: key in self._in_flight, timeout)

    def release(self) -> None:
        """Let every held POST (``hold:N``) go on, and those held later too."""
        self._released.set()

    def refunded_amount(self, psp_reference: str) -> int:
        """What succeeded refunds took from a payment."""
        with self._lock:
            return self._payments[psp_reference].refunded

    # -- notifications -----------------------------------------------------------------------

    def settle_refund(
        self,
        refund_psp_reference: str,
        *,
        success: bool | None = None,
        reason: str = "",
        event_code: str = "REFUND",
    ) -> JSON:
        """Finish a received refund and return the notification Adyen sends about it.

        ``REFUND``: ``success`` ``true`` takes the amount off the payment; ``false`` refuses
        it with ``reason``. Unless ``success`` is given, the refund succeeds when its currency
        is the payment's and it fits what is left. ``REFUND_FAILED`` (``success`` ``true``):
        the scheme bounced a refund that had succeeded; the amount goes back to the payment.
        """
        with self._lock:
            refund = self._refunds[refund_psp_reference]
            payment = refund.payment
            if event_code == "REFUND":
                if refund.status != "received":
                    raise ValueError(f"refund {refund_psp_reference} is {refund.status}")
                fits = refund.currency == payment.currency and refund.amount <= payment.remaining
                if success is None:
                    success = fits
                    if not fits:
                        reason = reason or (
                            "Insufficient balance on payment"
                            if refund.currency == payment.currency
                            else "Modification in different currency than authorisation"
                        )
                refund.status = "succeeded" if success else "refused"
                if success:
                    payment.refunded += refund.amount
            elif event_code == "REFUND_FAILED":
                if refund.status != "succeeded":
                    raise ValueError(f"refund {refund_psp_reference} is {refund.status}")
                refund.status, success = "failed", True
                payment.refunded -= refund.amount
            else:
                raise ValueError(f"not a refund event: {event_code!r}")
            item = self._item(
                event_code=event_code,
                psp_reference=refund.psp_reference,
                original_reference=payment.psp_reference,
                merchant_reference=refund.reference,
                value=refund.amount,
                currency=refund.currency,
                success=success,
                reason=reason,
                payment_method=payment.brand,
            )
        return self.notification(item)

    def settle_payment(
        self,
        psp_reference: str,
        *,
        success: bool = True,
        refusal_code: str = "2",
        raw_code: str = "",
        advice_code: str = "",
    ) -> JSON:
        """Finish a ``Pending`` or ``Received`` payment and return its ``AUTHORISATION``
        notification: authorised (the payment can then be refunded), or refused with
        ``refusal_code``'s ``refusalReason`` as its ``reason`` and the raw codes in
        ``additionalData``. Replays of the POST still answer as first answered."""
        with self._lock:
            answer = self._answers[psp_reference]
            if answer["resultCode"] not in ("Pending", "Received"):
                raise ValueError(f"payment {psp_reference} is {answer['resultCode']}")
            brand = answer["paymentMethod"]["brand"]
            amount = answer["amount"]
            extra: JSON = {}
            if success:
                answer["resultCode"] = "Authorised"
                self._payments[psp_reference] = Payment(
                    psp_reference, amount["value"], amount["currency"], brand
                )
            else:
                answer["resultCode"] = "Refused"
                extra = _refusal_data(raw_code, advice_code)
            item = self._item(
                event_code="AUTHORISATION",
                psp_reference=psp_reference,
                original_reference="",
                merchant_reference=answer["merchantReference"],
                value=amount["value"],
                currency=amount["currency"],
                success=success,
                reason="" if success else REFUSAL_REASONS[refusal_code],
                payment_method=brand,
                additional_data=extra,
            )
        return self.notification(item)

    def notification(self, *items: JSON, live: bool = False) -> JSON:
        """The body Adyen POSTs to a webhook: the items, each wrapped and signed."""
        return {
            "live": "true" if live else "false",
            "notificationItems": [{"NotificationRequestItem": item} for item in items],
        }

    def sign(self, item: JSON, hex_key: str | None = None) -> JSON:
        """``item`` with ``additionalData.hmacSignature`` (re)computed (with another key when
        given: a wrong secret)."""
        signed = copy.deepcopy(item)
        signed.setdefault("additionalData", {})["hmacSignature"] = hmac_signature(
            signed, hex_key or self.hmac_key
        )
        return signed

    async def deliver(
        self, url: str, notification: JSON, *, username: str = "", password: str = ""
    ) -> tuple[int, str]:
        """POST ``notification`` to ``url`` as Adyen does (JSON, basic auth when given);
        returns the answer's status and body (Adyen wants 200 and ``[accepted]``)."""
        auth = httpx.BasicAuth(username, password) if username else None
        async with httpx.AsyncClient(timeout=10, auth=auth) as client:
            response = await client.post(
                url,
                content=json.dumps(notification).encode(),
                headers={"Content-Type": "application/json"},
            )
        return response.status_code, response.text

    def _item(
        self,
        *,
        event_code: str,
        psp_reference: str,
        original_reference: str,
        merchant_reference: str,
        value: int,
        currency: str,
        success: bool,
        reason: str,
        payment_method: str,
        additional_data: JSON | None = None,
    ) -> JSON:
        item: JSON = {
            "additionalData": dict(additional_data or {}),
            "amount": {"currency": currency, "value": value},
            "eventCode": event_code,
            "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
            "merchantAccountCode": self.merchant_account,
            "merchantReference": merchant_reference,
            "paymentMethod": payment_method,
            "pspReference": psp_reference,
            "reason": reason,
            "success": "true" if success else "false",
        }
        if original_reference:
            item["originalReference"] = original_reference
        return self.sign(item)

    # -- the HTTP layer ----------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes
    ) -> StubResponse:
        """Answer one request: authentication, routing, faults, idempotency, the handler."""
        key = headers.get("idempotency-key") if method == "POST" else None
        body: JSON | None = None
        with self._lock:
            admitted = self._admit(method, path, headers, raw, key)
            if isinstance(admitted, StubResponse):
                self._record(method, path, key, None, admitted, replayed=False)
                return admitted
            handler, argument, body, held, replay = admitted
            if replay is not None:
                self._record(method, path, key, body, replay, replayed=True)
                return replay
        if held:
            self._released.wait(_HOLD_LIMIT_SECONDS)
        with self._changed:
            try:
                response = handler(argument, body, key or "")
            except Exception as exc:  # a stub bug: answer like Adyen would, and remember it
                self.errors.append(repr(exc))
                response = adyen_error(500, "000", f"stub failure: {exc!r}", "internal")
                response.saved = False
            finally:
                if key is not None:
                    self._in_flight.discard(key)
            if key is not None:
                response.headers["Idempotency-Key"] = key
                if response.saved:
                    self._saved[key] = copy.deepcopy(response)
            self._record(method, path, key, body, response, replayed=False)
            self._changed.notify_all()
        return response

    def _admit(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes, key: str | None
    ) -> StubResponse | tuple[Handler, str, JSON, bool, StubResponse | None]:
        """Everything answered before execution (never saved), else what to execute."""
        supplied = headers.get("x-api-key", "")
        if not supplied or not secrets.compare_digest(supplied.encode(), self.api_key.encode()):
            return adyen_error(
                401, "000", "HTTP Status Response - Unauthorized", "security", saved=False
            )
        route = self._route(method, path)
        if route is None:
            return adyen_error(404, "000", f"Not found: {method} {path}", "validation", saved=False)
        handler, match, fields, type_name = route
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return _invalid("702", "Unexpected input: the body is not JSON", 400)
        if not isinstance(body, dict):
            return _invalid("702", "Unexpected input: the body is not a JSON object", 400)
        unknown = sorted(set(body) - fields)
        if unknown:
            return _invalid(
                "702",
                f"Structure of {type_name} contains the following unknown fields: {unknown}",
                400,
            )
        if body.get("merchantAccount") != self.merchant_account:
            return adyen_error(403, "901", "Invalid Merchant Account", "security", saved=False)
        argument = match.groupdict().get("psp") or ""
        faults = self._faults(argument, body)
        if faults is not None:
            fault = faults.take()
            if fault is not None:
                return fault
        if key is not None:
            if key in self._in_flight:
                return _invalid("704", "request already processed or in progress")
            saved = self._saved.get(key)
            if saved is not None:
                return handler, argument, body, False, copy.deepcopy(saved)
        invalid = self._validate(argument, body)
        if invalid is not None:
            return invalid
        if key is not None:
            self._in_flight.add(key)
            self._changed.notify_all()
        held = faults.take_hold() if faults is not None else False
        return handler, argument, body, held, None

    def _route(
        self, method: str, path: str
    ) -> tuple[Handler, re.Match[str], frozenset[str], str] | None:
        """The handler of ``method path``, its match, its request type's fields and name."""
        if method != "POST":
            return None
        for pattern, handler, fields, type_name in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                return handler, match, fields, type_name
        return None

    def _faults(self, psp: str, body: JSON) -> _Faults | None:
        if psp:
            payment = self._payments.get(psp)
            return payment.faults if payment is not None else None
        method = body.get("paymentMethod")
        stored = method.get("storedPaymentMethodId") if isinstance(method, dict) else None
        card = self._cards.get(stored) if isinstance(stored, str) else None
        return card.faults if card is not None else None

    def _record(
        self,
        method: str,
        path: str,
        key: str | None,
        body: JSON | None,
        response: StubResponse,
        *,
        replayed: bool,
    ) -> None:
        self._requests.append(
            RecordedRequest(method, path, key, copy.deepcopy(body), response.status, replayed)
        )

    # -- validation (before execution) -------------------------------------------------------

    def _validate(self, psp: str, body: JSON) -> StubResponse | None:
        invalid = _validate_amount(body.get("amount"), allow_zero=not psp)
        if invalid is not None:
            return invalid
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference or len(reference) > 80:
            return _invalid("130", "Required field 'reference' is not provided.")
        if psp:
            return self._validate_refund(psp, body)
        return self._validate_payment(body)

    def _validate_refund(self, psp: str, body: JSON) -> StubResponse | None:
        if psp not in self._payments:
            return _invalid("167", "Original pspReference required for this operation")
        reason = body.get("merchantRefundReason")
        if reason is not None and reason not in REFUND_REASONS:
            return _invalid("702", f"Unexpected input: merchantRefundReason {reason!r}", 400)
        return None

    def _validate_payment(self, body: JSON) -> StubResponse | None:
        method = body.get("paymentMethod")
        if not isinstance(method, dict) or method.get("type") != "scheme":
            return _invalid("000", "Required field 'paymentMethod.type' is not valid.")
        stored = method.get("storedPaymentMethodId")
        shopper = body.get("shopperReference")
        if not isinstance(stored, str) or not stored:
            return _invalid("000", "Required field 'storedPaymentMethodId' is not provided.")
        if not isinstance(shopper, str) or len(shopper) < 3:
            return _invalid("000", "Required field 'shopperReference' is not provided.")
        if body.get("shopperInteraction") != "ContAuth":
            return _invalid(
                "14_004", "A payment with a stored card and no shopper must be ContAuth."
            )
        if body.get("recurringProcessingModel") not in RECURRING_MODELS:
            return _invalid("000", "Required field 'recurringProcessingModel' is not valid.")
        card = self._cards.get(stored)
        if card is None or card.shopper_reference != shopper:
            return _invalid("803", "PaymentDetail not found")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 20:
            return _invalid("000", "metadata: at most 20 key-value pairs")
        for name, value in metadata.items():
            if len(name) > 20 or not isinstance(value, str) or len(value) > 80:
                return _invalid("000", f"metadata: {name!r} is too long")
        return None

    # -- execution ---------------------------------------------------------------------------

    def _refund(self, psp: str, body: JSON, key: str) -> StubResponse:
        payment = self._payments[psp]
        refund = Refund(
            new_psp_reference(),
            payment,
            body["amount"]["value"],
            body["amount"]["currency"],
            body["reference"],
        )
        self._refunds[refund.psp_reference] = refund
        answer: JSON = {
            "merchantAccount": self.merchant_account,
            "paymentPspReference": psp,
            "pspReference": refund.psp_reference,
            "reference": refund.reference,
            "status": "received",
            "amount": dict(body["amount"]),
        }
        if "merchantRefundReason" in body:
            answer["merchantRefundReason"] = body["merchantRefundReason"]
        return StubResponse(201, answer)

    def _pay(self, _: str, body: JSON, key: str) -> StubResponse:
        card = self._cards[body["paymentMethod"]["storedPaymentMethodId"]]
        psp = new_psp_reference()
        data: JSON = {
            "paymentMethod": card.brand,
            "recurringProcessingModel": body["recurringProcessingModel"],
            "shopperInteraction": body["shopperInteraction"],
        }
        answer: JSON = {
            "additionalData": data,
            "amount": dict(body["amount"]),
            "merchantReference": body["reference"],
            "paymentMethod": {"brand": card.brand, "type": "scheme"},
            "pspReference": psp,
        }
        if card.outcome == "authorise":
            answer["resultCode"] = "Authorised"
            data["refusalReasonRaw"] = "AUTHORISED"
            amount = body["amount"]
            self._payments[psp] = Payment(psp, amount["value"], amount["currency"], card.brand)
        elif card.outcome in ("pending", "received"):
            answer["resultCode"] = card.outcome.capitalize()
        else:
            answer["resultCode"] = "Refused" if card.outcome == "refuse" else "Error"
            answer["refusalReason"] = REFUSAL_REASONS[card.refusal_code]
            answer["refusalReasonCode"] = card.refusal_code
            data.update(_refusal_data(card.raw_code, card.advice_code))
        self._answers[psp] = answer
        return StubResponse(200, copy.deepcopy(answer))


def _refusal_data(raw_code: str, advice_code: str) -> JSON:
    """The ``additionalData`` of a refusal: ``refusalReasonRaw`` and ``merchantAdviceCode``."""
    data: JSON = {}
    if raw_code:
        data["refusalReasonRaw"] = f"{raw_code} : {RAW_TEXTS.get(raw_code, 'Declined')}"
    if advice_code:
        data["merchantAdviceCode"] = f"{advice_code}: {ADVICE_TEXTS.get(advice_code, 'Advice')}"
    return data


def _validate_amount(amount: object, *, allow_zero: bool) -> StubResponse | None:
    if not isinstance(amount, dict):
        return _invalid("100", "Required field 'amount' is not provided.")
    value, currency = amount.get("value"), amount.get("currency")
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        return _invalid("137", "Invalid amount specified")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        return _invalid("138", "Invalid currency specified")
    return None
