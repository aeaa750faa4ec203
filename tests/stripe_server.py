"""A local HTTP server that speaks the part of Stripe's API our gateway uses: refunds and
off-session charges (PaymentIntents).

Tests never reach the internet: this stub listens on 127.0.0.1 (a free port) in a background
thread, and the real ``stripe`` SDK talks to it. It follows Stripe's documented behaviour where
our code depends on it:

* **Authentication**: ``Authorization: Bearer <key>`` (or HTTP basic with the key as user);
  a missing or wrong key is a 401 ``invalid_request_error``.
* **Routes**: ``POST /v1/refunds``, ``GET /v1/refunds/{id}``, ``POST /v1/payment_intents`` and
  ``GET /v1/payment_intents/{id}``; authentication is checked first on every one.
* **Refunds**: ``POST /v1/refunds`` (form-encoded: ``payment_intent`` or ``charge``, optional
  ``amount`` defaulting to what is left, ``metadata[...]``, ``reason``) and
  ``GET /v1/refunds/{id}``. A refund above what is left is ``amount_too_large``, a fully
  refunded charge ``charge_already_refunded``, an unknown payment ``resource_missing`` (404).
  Pending and succeeded refunds hold their amount; a failed one gives it back.
* **Idempotency** (POST only, ``Idempotency-Key`` header): once an endpoint starts executing, its
  answer is saved; the same key with the same parameters replays it (header
  ``Idempotent-Replayed: true``, the body as first sent, no new money movement); the same key
  with other parameters is a 400 ``idempotency_error``; the same key while its first request is
  still running is a 409. Answers given before execution starts are not saved: authentication
  and rate-limit errors, parameter validation errors, and the injected 500s below (they model a
  failure in front of the API, so a retry with the same key can succeed).

Each payment's behaviour is set by the test (``add_payment(..., behaviour=...)``), as a
comma-separated list of an outcome and faults:

==============================  ============================================================
``succeed`` (default)           refunds succeed at once
``pending_then_succeed``        refunds are ``pending`` until :meth:`settle` or the
                                ``settle_after_retrieves``-th GET, then ``succeeded``
``pending_then_fail``           the same, then ``failed`` with ``failure_reason``
``requires_action``             refunds are ``requires_action`` (``settle`` succeeds them)
``fail_with_500:N``             the next N POSTs for the payment answer 500 ``api_error``
``rate_limit:N``                the next N POSTs answer 429 ``rate_limit``
``slow:SECONDS[:N]``            POSTs (the first N only, when given) take SECONDS to execute
==============================  ============================================================

Faults are used up in the order written: ``fail_with_500:1,rate_limit:5`` answers one 500, then
five 429s, then normally.

**PaymentIntents** (``POST /v1/payment_intents``, form-encoded: ``amount``, ``currency``,
``customer``, ``payment_method``, ``confirm``, ``off_session``, ``metadata[...]``, ``expand[]``,
``automatic_payment_methods[...]``, ``payment_method_types[]``, ``return_url``, ``description``)
charge a card the test registered with :meth:`StripeStubServer.add_card` (which also registers its
customer). With ``confirm=true`` the card's behaviour decides, again as an outcome and faults:

==========================================  ================================================
``succeed`` (default)                       ``succeeded``, with a succeeded charge (the
                                            PaymentIntent can then be refunded)
``processing``                              ``processing``, with a pending charge, until
                                            :meth:`~StripeStubServer.settle_payment_intent`
``requires_action``                         with ``off_session=true``: a 402 ``card_error``
                                            ``authentication_required``; otherwise
                                            ``requires_action`` (``next_action``)
``decline:CODE[:NETWORK_DECLINE[:ADVICE]]`` a 402 ``card_error``: ``code`` ``card_declined``
                                            with ``decline_code`` CODE (``expired_card``,
                                            ``incorrect_cvc``, ``incorrect_number`` and
                                            ``processing_error`` are the ``code`` itself,
                                            with no ``decline_code``, as Stripe's test cards
                                            give them), and the network's raw
                                            ``network_decline_code`` / ``network_advice_code``
                                            when given
``fail_with_500:N``, ``rate_limit:N``,      as for payments, for the POSTs charging the card
``slow:SECONDS[:N]``
``fail_retrieve_with_500:N``                the next N ``GET /v1/payment_intents/{id}`` of
                                            the card's intents answer 500 ``api_error``
                                            (in front of the API: nothing is read)
==========================================  ================================================

A declined confirmation answers Stripe's 402 shape: ``error`` with ``type`` ``card_error``,
``code``, ``decline_code``, ``message``, ``doc_url``, ``charge`` (the failed charge's id),
``network_decline_code`` / ``network_advice_code`` (API version 2024-12-18.acacia on), the
``payment_method`` object (its ``card.brand``) and the ``payment_intent`` object (status
``requires_payment_method``, with ``last_payment_error`` and ``latest_charge``). The failed charge
carries ``outcome`` (``network_status`` ``declined_by_network``, ``type`` ``issuer_declined``,
``reason``, the network codes) and ``payment_method_details.card.network``. ``expand[]=
latest_charge`` expands the charge in a 200 answer; inside a 402 error the PaymentIntent is left
unexpanded (whether Stripe expands it there is not documented). Like Stripe, confirming an intent
whose automatic payment methods allow redirects needs a ``return_url``. A 402 is saved for
idempotent replay like any answer of an executed request. Inspect :attr:`payment_intents`.

``GET /v1/payment_intents/{id}`` reads an intent as it is now (query ``expand[]=latest_charge``
expands the charge, as on the POST; other expansions are not modelled and stay ids; parameters
other than ``expand`` and ``client_secret`` are ``parameter_unknown``); an id never created is a
404 ``resource_missing`` (``param`` ``intent``). :meth:`StripeStubServer.settle_payment_intent`
finishes a ``processing`` intent: ``succeeded`` (charge ``succeeded``), or, as when a payment fails
after processing, ``requires_payment_method`` with ``last_payment_error`` and its charge
``failed``. The POST that created it still replays ``processing`` under its idempotency key: the
answer was saved when it was first given, as Stripe does.

Routes live in a table (:meth:`StripeStubServer.add_route`).
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from tests.json_stub import JsonStubServer

JSON = dict[str, Any]

DEFAULT_API_KEY = "sk_test_stub_4eC39HqLyjWDarjtT1zdp7dc"
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
FAILURE_REASONS = frozenset(
    {
        "lost_or_stolen_card",
        "expired_or_canceled_card",
        "charge_for_pending_refund_disputed",
        "insufficient_funds",
        "declined",
        "merchant_request",
        "unknown",
    }
)
OUTCOMES = frozenset({"succeed", "pending_then_succeed", "pending_then_fail", "requires_action"})
CARD_OUTCOMES = frozenset({"succeed", "processing", "requires_action"})
_REFUND_PARAMS = frozenset({"amount", "charge", "payment_intent", "reason", "metadata", "expand"})
_PAYMENT_INTENT_PARAMS = frozenset(
    {
        "amount",
        "currency",
        "customer",
        "payment_method",
        "confirm",
        "off_session",
        "metadata",
        "expand",
        "automatic_payment_methods",
        "payment_method_types",
        "return_url",
        "description",
    }
)
# Card errors whose ``code`` is the reason itself (no ``decline_code``), as Stripe's test cards
# give them.
_CODE_DECLINES = frozenset(
    {"expired_card", "incorrect_cvc", "incorrect_number", "processing_error"}
)
_DECLINE_MESSAGES = {
    "authentication_required": "Your card was declined. This transaction requires authentication.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "insufficient_funds": "Your card has insufficient funds.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
}
_METADATA_KEY = re.compile(r"^metadata\[(?P<key>[^\]]*)\]$")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the stub answered."""

    method: str
    path: str
    idempotency_key: str | None
    params: dict[str, str]
    status: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class StubRequest:
    """A request as a route handler sees it."""

    method: str
    path: str
    match: re.Match[str]
    headers: Mapping[str, str]  # lower-cased names
    params: dict[str, str]  # form or query parameters, keys as sent (``metadata[k]``)
    idempotency_key: str | None


@dataclass(slots=True)
class StubResponse:
    status: int
    body: JSON
    headers: dict[str, str] = field(default_factory=dict)
    # Saved for idempotent replay: the endpoint began executing.
    saved: bool = True


Handler = Callable[[StubRequest], StubResponse]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def stripe_error(
    status: int,
    error_type: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    saved: bool = True,
) -> StubResponse:
    """An error in Stripe's shape: ``{"error": {"type", "message", "code", "param"}}``."""
    error: JSON = {"type": error_type, "message": message, "code": code}
    if param is not None:
        error["param"] = param
    return StubResponse(status, {"error": error}, saved=saved)


@dataclass(slots=True)
class _Fault:
    kind: str  # "500" or "429"
    remaining: int


class _FaultTarget(Protocol):
    """What faults are injected into: a payment (refunds) or a card (charges)."""

    faults: list[_Fault]
    delay_seconds: float
    slow_requests: int | None


@dataclass(slots=True)
class Payment:
    """A payment refunds can be made against: a PaymentIntent (with its charge) or a charge."""

    id: str
    amount: int
    currency: str
    outcome: str
    failure_reason: str
    settle_after_retrieves: int | None
    charge_id: str
    payment_intent_id: str | None
    faults: list[_Fault] = field(default_factory=list)
    delay_seconds: float = 0.0
    slow_requests: int | None = None  # None: every POST is slow
    refunded: int = 0  # held by pending and succeeded refunds

    @property
    def remaining(self) -> int:
        return self.amount - self.refunded


@dataclass(slots=True)
class Card:
    """A saved card (a PaymentMethod ``pm_...``) of a customer, for off-session charges."""

    id: str
    customer: str
    network: str  # Stripe's lower-case network: visa, mastercard, amex, discover, ...
    outcome: str = "succeed"
    decline_code: str = ""
    network_decline_code: str = ""
    network_advice_code: str = ""
    faults: list[_Fault] = field(default_factory=list)
    delay_seconds: float = 0.0
    slow_requests: int | None = None  # None: every POST is slow
    retrieve_faults: list[_Fault] = field(default_factory=list)  # for GETs of its intents

    @property
    def object(self) -> JSON:
        """The PaymentMethod object."""
        return {
            "id": self.id,
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": self.network,
                "country": "US",
                "display_brand": self.network,
                "exp_month": 12,
                "exp_year": 2040,
                "funding": "credit",
                "last4": "4242",
                "networks": {"available": [self.network], "preferred": None},
            },
            "created": 1_700_000_000,
            "customer": self.customer,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }


@dataclass(slots=True)
class _Refund:
    object: JSON
    payment: Payment
    retrieves: int = 0


@dataclass(frozen=True, slots=True)
class _Saved:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    response: StubResponse


@dataclass(frozen=True, slots=True)
class _Plan:
    """An admitted request: what to run, after how long, under which key."""

    route: Route
    request: StubRequest
    delay: float
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _masked(key: str) -> str:
    return f"{key[:8]}****{key[-4:]}" if len(key) > 12 else "****"


def _steps(behaviour: str) -> list[str]:
    return list(filter(None, (part.strip() for part in behaviour.split(","))))


def _parse_fault(target: _FaultTarget, step: str) -> bool:
    """Add the fault ``step`` names to ``target``; False when ``step`` is no fault."""
    name, _, arg = step.partition(":")
    if name == "fail_with_500":
        target.faults.append(_Fault("500", int(arg)))
    elif name == "rate_limit":
        target.faults.append(_Fault("429", int(arg)))
    elif name == "slow":
        seconds, _, count = arg.partition(":")
        target.delay_seconds = float(seconds)
        target.slow_requests = int(count) if count else None
    else:
        return False
    return True


def _parse_behaviour(payment: Payment, behaviour: str) -> None:
    for step in _steps(behaviour):
        if step in OUTCOMES:
            payment.outcome = step
        elif not _parse_fault(payment, step):
            raise ValueError(f"unknown stub behaviour {step!r}")


def _parse_card_behaviour(card: Card, behaviour: str) -> None:
    for step in _steps(behaviour):
        name, _, arg = step.partition(":")
        if step in CARD_OUTCOMES:
            card.outcome = step
        elif name == "decline" and arg:
            card.outcome = "decline"
            parts = arg.split(":")
            if len(parts) > 3 or not all(parts):
                raise ValueError(f"bad decline behaviour {step!r}")
            card.decline_code = parts[0]
            card.network_decline_code = parts[1] if len(parts) > 1 else ""
            card.network_advice_code = parts[2] if len(parts) > 2 else ""
        elif name == "fail_retrieve_with_500":
            card.retrieve_faults.append(_Fault("500", int(arg)))
        elif not _parse_fault(card, step):
            raise ValueError(f"unknown card behaviour {step!r}")


class StripeStubServer(JsonStubServer):
    """A stateful fake of Stripe's refund and PaymentIntent APIs on 127.0.0.1.

    Start it with :meth:`start` (or the ``stripe_server`` fixture); register payments with
    :meth:`add_payment` and cards with :meth:`add_card`; finish pending refunds with
    :meth:`settle` and processing PaymentIntents with :meth:`settle_payment_intent`; inspect
    :attr:`refunds`, :attr:`payment_intents` and :attr:`requests`.
    """

    name = "stripe"
    content_type = "application/json"
    text_body = True

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.routes: list[Route] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._payment_intents: dict[str, Payment] = {}
        self._charges: dict[str, Payment] = {}
        self._refunds: dict[str, _Refund] = {}
        self._cards: dict[str, Card] = {}
        self._customers: set[str] = set()
        self._created_intents: dict[str, JSON] = {}  # by POST /v1/payment_intents
        self._requests: list[RecordedRequest] = []
        self._saved: dict[str, _Saved] = {}
        self._in_flight: set[str] = set()
        self.add_route("POST", r"/v1/refunds", self._create_refund)
        self.add_route("GET", r"/v1/refunds/(?P<id>[^/]+)", self._retrieve_refund)
        self.add_route("POST", r"/v1/payment_intents", self._create_payment_intent)
        self.add_route("GET", r"/v1/payment_intents/(?P<id>[^/]+)", self._retrieve_payment_intent)

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # -- set-up and introspection for tests --------------------------------------------------

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method`` on paths fully matching ``pattern`` (named groups reach handler)."""
        self.routes.append(Route(method, re.compile(pattern), handler))

    def add_payment(
        self,
        payment_id: str,
        *,
        amount: int,
        currency: str = "usd",
        behaviour: str = "succeed",
        failure_reason: str = "expired_or_canceled_card",
        settle_after_retrieves: int | None = None,
    ) -> Payment:
        """Register a PaymentIntent (``pi_...``, with a charge) or a charge (``ch_...``)."""
        if failure_reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure_reason {failure_reason!r}")
        if payment_id.startswith("pi_"):
            charge_id, intent_id = _new_id("ch"), payment_id
        elif payment_id.startswith("ch_"):
            charge_id, intent_id = payment_id, None
        else:
            raise ValueError("a payment id starts with pi_ or ch_")
        payment = Payment(
            id=payment_id,
            amount=amount,
            currency=currency.lower(),
            outcome="succeed",
            failure_reason=failure_reason,
            settle_after_retrieves=settle_after_retrieves,
            charge_id=charge_id,
            payment_intent_id=intent_id,
        )
        _parse_behaviour(payment, behaviour)
        with self._lock:
            if intent_id is not None:
                self._payment_intents[intent_id] = payment
            self._charges[charge_id] = payment
        return payment

    def add_card(
        self,
        payment_method_id: str,
        *,
        customer: str,
        network: str = "visa",
        behaviour: str = "succeed",
    ) -> Card:
        """Register a saved card ``pm_...`` of ``customer`` (registered too) on ``network``."""
        if not payment_method_id.startswith("pm_"):
            raise ValueError("a payment method id starts with pm_")
        if not customer.startswith("cus_"):
            raise ValueError("a customer id starts with cus_")
        card = Card(payment_method_id, customer, network.lower())
        _parse_card_behaviour(card, behaviour)
        with self._lock:
            self._cards[payment_method_id] = card
            self._customers.add(customer)
        return card

    @property
    def payment_intents(self) -> list[JSON]:
        """The PaymentIntents created, oldest first (copies; ``latest_charge`` expanded)."""
        with self._lock:
            return [copy.deepcopy(intent) for intent in self._created_intents.values()]

    def settle(self, refund_id: str, *, succeed: bool | None = None) -> JSON:
        """Finish a pending (or requires_action) refund as its payment's behaviour says."""
        with self._lock:
            refund = self._refunds[refund_id]
            if refund.object["status"] not in ("pending", "requires_action"):
                raise ValueError(f"refund {refund_id} is {refund.object['status']}")
            if succeed is None:
                succeed = refund.payment.outcome != "pending_then_fail"
            self._settle(refund, succeed=succeed)
            return copy.deepcopy(refund.object)

    def settle_payment_intent(
        self,
        intent_id: str,
        *,
        succeed: bool = True,
        decline_code: str = "generic_decline",
        network_decline_code: str = "",
        network_advice_code: str = "",
    ) -> JSON:
        """Finish a ``processing`` PaymentIntent as its payment's settlement does.

        ``succeed``: ``succeeded``, its charge succeeded (the payment can then be refunded).
        Otherwise, as when a payment fails after processing: the intent goes back to
        ``requires_payment_method`` with ``last_payment_error`` (a ``card_error`` declined for
        ``decline_code``, with the network's raw codes when given), and its charge (the same
        one) is ``failed`` with ``failure_code`` and a declined ``outcome``. Returns the intent
        (``latest_charge`` expanded). Replays of the POST that created it still answer
        ``processing``: Stripe saved that first answer under its idempotency key.
        """
        with self._changed:
            intent = self._created_intents[intent_id]
            if intent["status"] != "processing":
                raise ValueError(f"payment intent {intent_id} is {intent['status']}")
            card = self._cards[intent["payment_method"]]
            charge: JSON = intent["latest_charge"]
            if succeed:
                charge.update(
                    status="succeeded",
                    paid=True,
                    captured=True,
                    amount_captured=intent["amount"],
                )
                charge["outcome"]["seller_message"] = "Payment complete."
                intent["status"] = "succeeded"
                intent["amount_received"] = intent["amount"]
                self._register_paid(intent, charge)
            else:
                _fail_payment(
                    intent, card, charge, decline_code, network_decline_code, network_advice_code
                )
            self._changed.notify_all()
            return copy.deepcopy(intent)

    @property
    def refunds(self) -> list[JSON]:
        """The refunds created, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(refund.object) for refund in self._refunds.values()]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered, in order."""
        with self._lock:
            return list(self._requests)

    def refunded_amount(self, payment_id: str) -> int:
        """What pending and succeeded refunds hold on a payment."""
        with self._lock:
            payment = self._payment_intents.get(payment_id) or self._charges[payment_id]
            return payment.refunded

    def wait_for_refunds(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` refunds exist (for requests still running)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._refunds) >= count, timeout)

    # -- the HTTP layer ----------------------------------------------------------------------

    def dispatch(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: str
    ) -> StubResponse:
        """Answer one request: authentication, routing, faults, idempotency, the handler."""
        split = urlsplit(raw_path)
        params = dict(parse_qsl(body if method == "POST" else split.query, keep_blank_values=True))
        key = headers.get("idempotency-key") if method == "POST" else None
        with self._lock:
            admitted = self._admit(method, split.path, headers, params, key)
        if isinstance(admitted, StubResponse):
            self._record(method, split.path, key, params, admitted)
            return admitted
        if admitted.delay:
            self._stopping.wait(admitted.delay)
        with self._changed:
            try:
                response = admitted.route.handler(admitted.request)
            except Exception as exc:  # a stub bug: answer like Stripe would, and remember it
                self.errors.append(repr(exc))
                response = stripe_error(500, "api_error", f"stub failure: {exc!r}", saved=False)
            finally:
                if key is not None:
                    self._in_flight.discard(key)
            if key is not None and response.saved:
                self._saved[key] = _Saved(admitted.fingerprint, copy.deepcopy(response))
            self._record(method, split.path, key, params, response)
            self._changed.notify_all()
        return response

    def _admit(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        params: dict[str, str],
        key: str | None,
    ) -> _Plan | StubResponse:
        denied = self._authenticate(headers.get("authorization", ""))
        if denied is not None:
            return denied
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is not None and route.method == method:
                break
        else:
            return stripe_error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({method}: {path}).",
                saved=False,
            )
        request = StubRequest(method, path, match, headers, params, key)
        target = self._target(request)
        faults = self._retrieve_faults(request)
        if method == "POST" and target is not None:
            faults = target.faults
        fault = self._take_fault(faults)
        if fault is not None:
            return fault
        fingerprint = (method, path, tuple(sorted(params.items())))
        if key is not None:
            if key in self._in_flight:
                return stripe_error(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this Idempotent "
                    "Key (that probably means you submitted twice, and the other request is "
                    "still going through): " + key + ". Please try again later.",
                    code="idempotency_key_in_use",
                    saved=False,
                )
            saved = self._saved.get(key)
            if saved is not None:
                if saved.fingerprint != fingerprint:
                    return stripe_error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        saved=False,
                    )
                replay = copy.deepcopy(saved.response)
                replay.headers["Idempotent-Replayed"] = "true"
                return replay
            self._in_flight.add(key)
        delay = 0.0
        if method == "POST" and target is not None and target.slow_requests != 0:
            delay = target.delay_seconds
            if delay and target.slow_requests is not None:
                target.slow_requests -= 1
        return _Plan(route, request, delay, fingerprint)

    def _authenticate(self, authorization: str) -> StubResponse | None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                credentials = base64.b64decode(credentials).decode().partition(":")[0]
            except ValueError:
                credentials = ""
        elif scheme.lower() != "bearer":
            credentials = ""
        if not credentials:
            return stripe_error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth.",
                saved=False,
            )
        if not secrets.compare_digest(credentials, self.api_key):
            return stripe_error(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {_masked(credentials)}",
                saved=False,
            )
        return None

    def _target(self, request: StubRequest) -> _FaultTarget | None:
        """The payment (or, for a charge, the card) a request acts on, for fault injection."""
        if request.path == "/v1/payment_intents":
            return self._cards.get(request.params.get("payment_method") or "")
        target = request.match.groupdict().get("id") or ""
        intent = request.params.get("payment_intent") or target
        charge = request.params.get("charge") or target
        return self._payment_intents.get(intent) or self._charges.get(charge)

    def _retrieve_faults(self, request: StubRequest) -> list[_Fault]:
        """The faults of a ``GET /v1/payment_intents/{id}``: its card's ``retrieve_faults``."""
        if request.method != "GET" or not request.path.startswith("/v1/payment_intents/"):
            return []
        intent = self._created_intents.get(request.match.groupdict().get("id") or "")
        card = self._cards.get(intent["payment_method"] or "") if intent is not None else None
        return card.retrieve_faults if card is not None else []

    @staticmethod
    def _take_fault(faults: list[_Fault]) -> StubResponse | None:
        while faults and faults[0].remaining <= 0:
            faults.pop(0)
        if not faults:
            return None
        fault = faults[0]
        fault.remaining -= 1
        if fault.kind == "429":
            return stripe_error(
                429,
                "invalid_request_error",
                "Too many requests hit the API too quickly.",
                code="rate_limit",
                saved=False,
            )
        return stripe_error(500, "api_error", "An unknown error occurred.", saved=False)

    def _record(
        self,
        method: str,
        path: str,
        key: str | None,
        params: dict[str, str],
        response: StubResponse,
    ) -> None:
        response.headers.setdefault("Request-Id", _new_id("req"))
        if key is not None:
            response.headers.setdefault("Idempotency-Key", key)
        self._requests.append(
            RecordedRequest(
                method,
                path,
                key,
                dict(params),
                response.status,
                replayed=response.headers.get("Idempotent-Replayed") == "true",
            )
        )

    # -- refunds -----------------------------------------------------------------------------

    def _create_refund(self, request: StubRequest) -> StubResponse:
        params = request.params
        invalid = _validate_refund_params(params)
        if invalid is not None:
            return invalid
        intent_id, charge_id = params.get("payment_intent"), params.get("charge")
        if intent_id:
            payment = self._payment_intents.get(intent_id)
            if payment is None:
                return stripe_error(
                    404,
                    "invalid_request_error",
                    f"No such payment_intent: '{intent_id}'",
                    code="resource_missing",
                    param="payment_intent",
                )
        else:
            payment = self._charges.get(charge_id or "")
            if payment is None:
                return stripe_error(
                    404,
                    "invalid_request_error",
                    f"No such charge: '{charge_id}'",
                    code="resource_missing",
                    param="charge",
                )
        if payment.remaining <= 0:
            return stripe_error(
                400,
                "invalid_request_error",
                f"Charge {payment.charge_id} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = int(params["amount"]) if "amount" in params else payment.remaining
        if amount > payment.remaining:
            return stripe_error(
                400,
                "invalid_request_error",
                f"Refund amount ({amount} {payment.currency} minor units) is greater than "
                f"unrefunded amount on charge ({payment.remaining}).",
                code="amount_too_large",
                param="amount",
            )
        status = {
            "succeed": "succeeded",
            "pending_then_succeed": "pending",
            "pending_then_fail": "pending",
            "requires_action": "requires_action",
        }[payment.outcome]
        refund: JSON = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": _new_id("txn"),
            "charge": payment.charge_id,
            "created": int(time.time()),
            "currency": payment.currency,
            "failure_balance_transaction": None,
            "failure_reason": None,
            "metadata": _metadata(params),
            "next_action": {"type": "display_details"} if status == "requires_action" else None,
            "payment_intent": payment.payment_intent_id,
            "pending_reason": "processing" if status == "pending" else None,
            "reason": params.get("reason") or None,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": status,
            "transfer_reversal": None,
        }
        payment.refunded += amount
        self._refunds[refund["id"]] = _Refund(refund, payment)
        return StubResponse(200, copy.deepcopy(refund))

    def _retrieve_refund(self, request: StubRequest) -> StubResponse:
        refund_id = request.match["id"]
        refund = self._refunds.get(refund_id)
        if refund is None:
            return stripe_error(
                404,
                "invalid_request_error",
                f"No such refund: '{refund_id}'",
                code="resource_missing",
                param="id",
            )
        refund.retrieves += 1
        after = refund.payment.settle_after_retrieves
        if refund.object["status"] == "pending" and after is not None and refund.retrieves >= after:
            self._settle(refund, succeed=refund.payment.outcome != "pending_then_fail")
        return StubResponse(200, copy.deepcopy(refund.object))

    def _settle(self, refund: _Refund, *, succeed: bool) -> None:
        refund.object["pending_reason"] = None
        refund.object["next_action"] = None
        if succeed:
            refund.object["status"] = "succeeded"
            return
        refund.object["status"] = "failed"
        refund.object["failure_reason"] = refund.payment.failure_reason
        refund.object["failure_balance_transaction"] = _new_id("txn")
        refund.payment.refunded -= refund.object["amount"]  # the money is refundable again

    # -- payment intents (off-session charges) -----------------------------------------------

    def _create_payment_intent(self, request: StubRequest) -> StubResponse:
        params = request.params
        invalid = _validate_payment_intent_params(params)
        if invalid is not None:
            return invalid
        card_id, customer = params.get("payment_method"), params.get("customer")
        card = self._cards.get(card_id or "")
        if card_id and card is None:
            return stripe_error(
                400,
                "invalid_request_error",
                f"No such PaymentMethod: '{card_id}'",
                code="resource_missing",
                param="payment_method",
            )
        if customer and customer not in self._customers:
            return stripe_error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        if card is not None and customer != card.customer:
            return stripe_error(
                400,
                "invalid_request_error",
                f"The PaymentMethod {card.id} does not belong to the Customer {customer}.",
                param="payment_method",
            )
        amount, currency = int(params["amount"]), params["currency"]
        intent: JSON = {
            "id": _new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "automatic_payment_methods": (
                None
                if _listed(params, "payment_method_types")
                else {
                    "enabled": True,
                    "allow_redirects": params.get(
                        "automatic_payment_methods[allow_redirects]", "always"
                    ),
                }
            ),
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"pi_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": customer or None,
            "description": params.get("description") or None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(params),
            "next_action": None,
            "payment_method": card_id or None,
            "payment_method_types": _listed(params, "payment_method_types") or ["card"],
            "status": "requires_payment_method" if card is None else "requires_confirmation",
        }
        self._created_intents[intent["id"]] = intent
        if card is None or params.get("confirm") != "true":
            return StubResponse(200, copy.deepcopy(intent))
        off_session = params.get("off_session") == "true"
        if card.outcome == "requires_action" and not off_session:
            intent["status"] = "requires_action"
            intent["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            return self._intent_response(intent, params)
        if card.outcome in ("decline", "requires_action"):
            return self._decline(intent, card)
        succeeded = card.outcome == "succeed"
        charge = _charge(intent, card, "succeeded" if succeeded else "pending")
        intent["latest_charge"] = charge
        intent["status"] = "succeeded" if succeeded else "processing"
        if succeeded:
            intent["amount_received"] = amount
            self._register_paid(intent, charge)
        return self._intent_response(intent, params)

    def _register_paid(self, intent: JSON, charge: JSON) -> None:
        """A succeeded intent can now be refunded, like a payment registered with add_payment."""
        self._payment_intents[intent["id"]] = self._charges[charge["id"]] = Payment(
            id=intent["id"],
            amount=intent["amount"],
            currency=intent["currency"],
            outcome="succeed",
            failure_reason="expired_or_canceled_card",
            settle_after_retrieves=None,
            charge_id=charge["id"],
            payment_intent_id=intent["id"],
        )

    def _retrieve_payment_intent(self, request: StubRequest) -> StubResponse:
        for name in request.params:
            if name.partition("[")[0] not in ("expand", "client_secret"):
                return _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")
        intent_id = request.match["id"]
        intent = self._created_intents.get(intent_id)
        if intent is None:
            return stripe_error(
                404,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="intent",
            )
        return self._intent_response(intent, request.params)

    @staticmethod
    def _intent_response(intent: JSON, params: Mapping[str, str]) -> StubResponse:
        """The 200 answer: ``latest_charge`` is an id unless ``expand[]`` names it."""
        body = copy.deepcopy(intent)
        charge = body["latest_charge"]
        if isinstance(charge, dict) and "latest_charge" not in _listed(params, "expand"):
            body["latest_charge"] = charge["id"]
        return StubResponse(200, body)

    @staticmethod
    def _decline(intent: JSON, card: Card) -> StubResponse:
        """The 402 of a declined confirmation, and the intent's and charge's state after it."""
        reason = (
            "authentication_required" if card.outcome == "requires_action" else card.decline_code
        )
        charge = _charge(intent, card, "failed")
        error = _fail_payment(
            intent, card, charge, reason, card.network_decline_code, card.network_advice_code
        )
        error["payment_intent"] = {**copy.deepcopy(intent), "latest_charge": charge["id"]}
        return StubResponse(402, {"error": error})


def _validate_refund_params(params: Mapping[str, str]) -> StubResponse | None:
    """Parameter errors of ``POST /v1/refunds``: answered before execution, never saved."""
    for name in params:
        if name.partition("[")[0] not in _REFUND_PARAMS:
            return _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")
    intent_id, charge_id = params.get("payment_intent"), params.get("charge")
    if not intent_id and not charge_id:
        return _invalid(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            "payment_intent",
            "parameter_missing",
        )
    if intent_id and charge_id:
        return _invalid("You can only provide one of payment_intent or charge.", "charge")
    invalid = _validate_amount(params, required=False)
    if invalid is not None:
        return invalid
    reason = params.get("reason")
    if reason is not None and reason not in REFUND_REASONS:
        return _invalid(
            "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
            "reason",
        )
    return _validate_metadata(params)


def _invalid(message: str, param: str, code: str | None = None) -> StubResponse:
    """A parameter error: answered before execution, never saved."""
    return stripe_error(400, "invalid_request_error", message, code=code, param=param, saved=False)


def _metadata(params: Mapping[str, str]) -> dict[str, str]:
    return {m["key"]: value for name, value in params.items() if (m := _METADATA_KEY.match(name))}


def _validate_metadata(params: Mapping[str, str]) -> StubResponse | None:
    metadata = _metadata(params)
    if len(metadata) > 50:
        return _invalid("You can have at most 50 metadata keys.", "metadata")
    for key, value in metadata.items():
        if not key or len(key) > 40:
            return _invalid("Metadata keys must be 1 to 40 characters long.", f"metadata[{key}]")
        if len(value) > 500:
            return _invalid("Metadata values can have up to 500 characters.", f"metadata[{key}]")
    return None


def _validate_amount(params: Mapping[str, str], *, required: bool) -> StubResponse | None:
    if "amount" not in params:
        if required:
            return _invalid("Missing required param: amount.", "amount", "parameter_missing")
        return None
    raw = params["amount"]
    if not re.fullmatch(r"-?\d+", raw):
        return _invalid(f"Invalid integer: {raw}", "amount", "parameter_invalid_integer")
    if int(raw) < 1:
        return _invalid(
            "This value must be greater than or equal to 1.", "amount", "parameter_invalid_integer"
        )
    return None


def _listed(params: Mapping[str, str], name: str) -> list[str]:
    """The values of a form-encoded list (``name[0]=a&name[1]=b``, or ``name[]=a``)."""
    return [value for key, value in params.items() if re.fullmatch(rf"{name}\[\d*\]", key)]


def _validate_payment_intent_params(params: Mapping[str, str]) -> StubResponse | None:
    """Parameter errors of ``POST /v1/payment_intents``: answered before execution, never saved."""
    for name in params:
        if name.partition("[")[0] not in _PAYMENT_INTENT_PARAMS:
            return _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")
    invalid = _validate_amount(params, required=True)
    if invalid is not None:
        return invalid
    currency = params.get("currency")
    if not currency:
        return _invalid("Missing required param: currency.", "currency", "parameter_missing")
    if not re.fullmatch(r"[a-z]{3}", currency):
        return _invalid(f"Invalid currency: {currency}.", "currency", "parameter_invalid_string")
    for flag in ("confirm", "off_session"):
        if params.get(flag, "false") not in ("true", "false"):
            return _invalid(f"Invalid boolean: {params[flag]}", flag, "parameter_invalid_boolean")
    confirm = params.get("confirm") == "true"
    if confirm and not params.get("payment_method"):
        return _invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            "payment_method",
            "payment_intent_unexpected_state",
        )
    allows_redirects = (
        not _listed(params, "payment_method_types")
        and params.get("automatic_payment_methods[allow_redirects]") != "never"
    )
    if confirm and allows_redirects and not params.get("return_url"):
        return _invalid(
            "A `return_url` must be specified because this Payment Intent is configured to "
            "automatically accept the payment methods enabled in the Dashboard, some of which "
            "may require a full page redirect to succeed. If you do not want to accept "
            "redirect-based payment methods, set `automatic_payment_methods[enabled]` to `true` "
            "and `automatic_payment_methods[allow_redirects]` to `never` when creating Setup "
            "Intents and Payment Intents.",
            "return_url",
        )
    return _validate_metadata(params)


def _fail_payment(
    intent: JSON,
    card: Card,
    charge: JSON,
    reason: str,
    network_decline_code: str,
    network_advice_code: str,
) -> JSON:
    """Decline ``charge`` (``intent``'s latest) for ``reason`` and move ``intent`` back to
    ``requires_payment_method`` with ``last_payment_error``; returns that card error."""
    code = reason if reason in _CODE_DECLINES | {"authentication_required"} else "card_declined"
    message = _DECLINE_MESSAGES.get(reason, "Your card was declined.")
    charge.update(
        status="failed",
        paid=False,
        captured=False,
        amount_captured=0,
        failure_code=code,
        failure_message=message,
    )
    outcome = charge["outcome"]
    outcome["network_status"] = "declined_by_network"
    outcome["type"] = "issuer_declined"
    outcome["reason"] = reason
    outcome["seller_message"] = "The bank returned the decline code `" + reason + "`."
    outcome["network_decline_code"] = network_decline_code or None
    outcome["network_advice_code"] = network_advice_code or None
    error: JSON = {
        "type": "card_error",
        "code": code,
        "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"),
        "message": message,
        "charge": charge["id"],
        "payment_method": card.object,
    }
    if code in ("card_declined", "authentication_required"):
        error["decline_code"] = reason
    if network_decline_code:
        error["network_decline_code"] = network_decline_code
    if network_advice_code:
        error["network_advice_code"] = network_advice_code
    intent["status"] = "requires_payment_method"
    intent["last_payment_error"] = copy.deepcopy(error)
    intent["latest_charge"] = charge
    return error


def _charge(intent: JSON, card: Card, status: str) -> JSON:
    """The charge a confirmation made (``status``: succeeded, pending or failed)."""
    paid = status == "succeeded"
    return {
        "id": _new_id("ch"),
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": intent["amount"] if paid else 0,
        "amount_refunded": 0,
        "captured": paid,
        "created": intent["created"],
        "currency": intent["currency"],
        "customer": intent["customer"],
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "outcome": {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network" if status != "failed" else None,
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete." if paid else None,
            "type": "authorized" if status != "failed" else None,
        },
        "paid": paid,
        "payment_intent": intent["id"],
        "payment_method": card.id,
        "payment_method_details": {
            "type": "card",
            "card": {
                "brand": card.network,
                "country": "US",
                "exp_month": 12,
                "exp_year": 2040,
                "funding": "credit",
                "last4": "4242",
                "network": card.network,
            },
        },
        "status": status,
    }
