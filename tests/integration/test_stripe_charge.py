"""StripeGateway.charge through the real ``stripe`` SDK against the local Stripe stub.

Nothing here reaches the internet: the stub listens on 127.0.0.1 (``tests/stripe_server.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import stripe

from service.domain.money import Money
from service.gateways.base import (
    CardNetwork,
    ChargeOutcome,
    ChargeRequest,
    ChargingGateway,
    OutcomeKind,
    RefundRequest,
)
from service.gateways.stripe_gateway import (
    StripeGateway,
    outcome_for_card_error,
    outcome_for_payment_intent,
)
from tests.integration.conftest_stripe import (  # noqa: F401
    MakeStripeGateway,
    dead_port,
    make_stripe_gateway,
    stripe_server,
)
from tests.stripe_server import RecordedRequest, StripeStubServer


@pytest.fixture
async def gateway(make_stripe_gateway: MakeStripeGateway) -> StripeGateway:
    return make_stripe_gateway()


def charge_request(
    payment_method: str = "pm_1",
    minor_units: int = 1999,
    *,
    customer: str = "cus_1",
    currency: str = "USD",
    key: str = "plan-1:attempt-1",
    attempt: int = 1,
    metadata: Mapping[str, str] | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        plan_id="plan-1",
        customer_id=customer,
        payment_method=payment_method,
        amount=Money(currency, minor_units),
        idempotency_key=key,
        attempt=attempt,
        metadata=metadata or {},
    )


def intent_posts(server: StripeStubServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.method == "POST" and r.path == "/v1/payment_intents"]


def intent_gets(server: StripeStubServer) -> list[RecordedRequest]:
    return [
        r
        for r in server.requests
        if r.method == "GET" and r.path.startswith("/v1/payment_intents/")
    ]


def read_request(request: ChargeRequest, gateway_charge_id: str) -> ChargeRequest:
    """The same attempt, read again: it answered PENDING with ``gateway_charge_id``."""
    return dataclasses.replace(request, gateway_charge_id=gateway_charge_id)


def test_stripe_gateway_implements_the_charging_gateway_protocol() -> None:
    gw: ChargingGateway = StripeGateway("sk_test_unused")
    assert gw.name == "stripe"


# -- charges that succeed ------------------------------------------------------------------------


async def test_charge_succeeds_off_session(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1", network="visa")

    outcome = await gateway.charge(charge_request(attempt=2, metadata={"invoice": "in_7"}))

    (intent,) = stripe_server.payment_intents
    assert outcome == ChargeOutcome(OutcomeKind.SUCCEEDED, intent["id"], network=CardNetwork.VISA)
    assert intent["id"].startswith("pi_")
    assert intent["status"] == "succeeded"
    assert intent["amount"] == intent["amount_received"] == 1999
    assert intent["currency"] == "usd"
    assert intent["customer"] == "cus_1"
    assert intent["payment_method"] == "pm_1"
    assert intent["metadata"] == {"invoice": "in_7", "plan_id": "plan-1", "attempt": "2"}
    (post,) = intent_posts(stripe_server)
    assert post.idempotency_key == "plan-1:attempt-1"
    assert post.params["confirm"] == "true"
    assert post.params["off_session"] == "true"
    assert post.params["automatic_payment_methods[allow_redirects]"] == "never"
    assert post.params["expand[0]"] == "latest_charge"


async def test_a_zero_decimal_currency_is_sent_in_its_minor_units(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_jpy", customer="cus_jp", network="jcb")

    outcome = await gateway.charge(charge_request("pm_jpy", 500, customer="cus_jp", currency="JPY"))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.network == CardNetwork.OTHER
    (intent,) = stripe_server.payment_intents
    assert (intent["amount"], intent["currency"]) == (500, "jpy")


async def test_a_charged_payment_intent_can_be_refunded(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1")
    charged = await gateway.charge(charge_request(minor_units=3000))

    refund = await gateway.refund(
        RefundRequest(
            payment_id="pay_1",
            gateway_transaction_id=charged.gateway_charge_id,
            amount=Money("USD", 1000),
            idempotency_key="refund-1",
            attempt=1,
        )
    )

    assert refund.kind is OutcomeKind.SUCCEEDED
    assert stripe_server.refunded_amount(charged.gateway_charge_id) == 1000


async def test_processing_is_pending(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_slow_bank", customer="cus_1", behaviour="processing")

    outcome = await gateway.charge(charge_request("pm_slow_bank"))

    assert outcome.kind is OutcomeKind.PENDING
    assert outcome.gateway_charge_id == stripe_server.payment_intents[0]["id"]


# -- declines ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "behaviour", "expected"),
    [
        (
            "visa",
            "decline:insufficient_funds:51",
            ("insufficient_funds", CardNetwork.VISA, "51", ""),
        ),
        (
            "visa",
            "decline:do_not_honor:05:02",  # Visa's advice code is not a Mastercard MAC
            ("do_not_honor", CardNetwork.VISA, "05", ""),
        ),
        (
            "mastercard",
            "decline:do_not_honor:05:03",  # the raw code of another network is not Visa's
            ("do_not_honor", CardNetwork.MASTERCARD, "", "03"),
        ),
        (
            "mastercard",
            "decline:insufficient_funds:51:24",
            ("insufficient_funds", CardNetwork.MASTERCARD, "", "24"),
        ),
        ("amex", "decline:generic_decline", ("generic_decline", CardNetwork.AMEX, "", "")),
        ("discover", "decline:lost_card", ("lost_card", CardNetwork.DISCOVER, "", "")),
        ("unionpay", "decline:fraudulent", ("fraudulent", CardNetwork.OTHER, "", "")),
        ("visa", "decline:expired_card", ("expired_card", CardNetwork.VISA, "", "")),
        ("visa", "decline:incorrect_cvc", ("incorrect_cvc", CardNetwork.VISA, "", "")),
    ],
)
async def test_a_decline_carries_its_code_and_network_codes(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    network: str,
    behaviour: str,
    expected: tuple[str, str, str, str],
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1", network=network, behaviour=behaviour)

    outcome = await gateway.charge(charge_request())

    assert outcome.kind is OutcomeKind.DECLINED
    decline_code, network_name, visa_code, mac = expected
    assert outcome.decline_code == decline_code
    assert outcome.network == network_name
    assert outcome.visa_response_code == visa_code
    assert outcome.mc_advice_code == mac
    assert outcome.retryable is False
    assert outcome.message.startswith("stripe: Your card")
    (intent,) = stripe_server.payment_intents
    assert outcome.gateway_charge_id == intent["id"]
    assert intent["status"] == "requires_payment_method"
    assert len(intent_posts(stripe_server)) == 1  # a decline is final: not retried


async def test_authentication_required_off_session_requires_action(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_3ds", customer="cus_1", network="visa", behaviour="requires_action")

    outcome = await gateway.charge(charge_request("pm_3ds"))

    assert outcome.kind is OutcomeKind.REQUIRES_ACTION
    assert outcome.decline_code == "authentication_required"
    assert outcome.network == CardNetwork.VISA
    assert outcome.gateway_charge_id == stripe_server.payment_intents[0]["id"]
    assert outcome.retryable is False


async def test_an_unknown_payment_method_is_declined_for_good(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1")

    outcome = await gateway.charge(charge_request("pm_gone"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.decline_code == ""  # not a card decline: Stripe refused the request
    assert outcome.retryable is False
    assert outcome.message.startswith("stripe: resource_missing: ")
    assert "pm_gone" in outcome.message


async def test_wrong_api_key_is_not_attempted_and_never_shown(
    make_stripe_gateway: MakeStripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1")
    wrong_key = "sk_test_wrong_0123456789abcdef"
    gateway = make_stripe_gateway(api_key=wrong_key)

    with caplog.at_level(logging.DEBUG):
        outcome = await gateway.charge(charge_request())

    # the issuer was never asked: a retry plan neither uses up an attempt nor counts one
    # against the networks' limits, and tries again once the key is fixed
    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable is True
    assert outcome.decline_code == ""
    assert "authentication_failed" in outcome.message
    assert len(intent_posts(stripe_server)) == 1
    assert stripe_server.payment_intents == []
    assert wrong_key not in outcome.message
    assert wrong_key not in caplog.text


# -- idempotency ---------------------------------------------------------------------------------


async def test_the_same_key_twice_makes_one_payment_intent(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1")
    request = charge_request()

    first = await gateway.charge(request)
    second = await gateway.charge(request)

    assert first == second
    assert first.kind is OutcomeKind.SUCCEEDED
    assert len(stripe_server.payment_intents) == 1
    assert [p.replayed for p in intent_posts(stripe_server)] == [False, True]


async def test_a_replayed_decline_is_the_same_decline(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card(
        "pm_1", customer="cus_1", network="mastercard", behaviour="decline:do_not_honor:05:02"
    )
    request = charge_request()

    first = await gateway.charge(request)
    second = await gateway.charge(request)

    assert first == second
    assert first.kind is OutcomeKind.DECLINED
    assert first.mc_advice_code == "02"
    assert len(stripe_server.payment_intents) == 1
    assert [(p.status, p.replayed) for p in intent_posts(stripe_server)] == [
        (402, False),
        (402, True),
    ]


async def test_a_new_attempt_key_is_a_new_payment_intent(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1", behaviour="decline:insufficient_funds:51")

    first = await gateway.charge(charge_request(key="plan-1:attempt-1", attempt=1))
    second = await gateway.charge(charge_request(key="plan-1:attempt-2", attempt=2))

    assert first.kind is second.kind is OutcomeKind.DECLINED
    assert first.gateway_charge_id != second.gateway_charge_id
    assert len(stripe_server.payment_intents) == 2


# -- transient errors ----------------------------------------------------------------------------


async def test_500_then_success_is_retried_with_the_same_key(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_card("pm_flaky", customer="cus_1", behaviour="fail_with_500:1")

    with caplog.at_level(logging.DEBUG):
        outcome = await gateway.charge(charge_request("pm_flaky", key="flaky-key"))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    posts = intent_posts(stripe_server)
    assert [p.status for p in posts] == [500, 200]
    assert [p.idempotency_key for p in posts] == ["flaky-key"] * 2
    (intent,) = stripe_server.payment_intents
    assert outcome.gateway_charge_id == intent["id"]
    retries = [
        r for r in caplog.records if getattr(r, "action", "") == "stripe_charge_create_retry"
    ]
    assert len(retries) == 1
    assert getattr(retries[0], "plan_id", None) == "plan-1"


async def test_500_every_time_is_unknown_and_retryable(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_down", customer="cus_1", behaviour="fail_with_500:100")

    outcome = await gateway.charge(charge_request("pm_down"))

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.retryable is True
    assert outcome.gateway_charge_id == ""
    assert "gateway_error" in outcome.message
    assert len(intent_posts(stripe_server)) == 3  # max_attempts


async def test_429_every_time_is_not_attempted(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_busy", customer="cus_1", behaviour="rate_limit:100")

    outcome = await gateway.charge(charge_request("pm_busy"))

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable is True
    assert "rate_limited" in outcome.message
    assert [p.status for p in intent_posts(stripe_server)] == [429, 429, 429]
    assert stripe_server.payment_intents == []


async def test_429_after_a_500_is_unknown(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_mixed", customer="cus_1", behaviour="fail_with_500:1,rate_limit:9")

    outcome = await gateway.charge(charge_request("pm_mixed"))

    assert [p.status for p in intent_posts(stripe_server)] == [500, 429, 429]
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.retryable is True


async def test_nothing_listening_is_not_attempted(
    make_stripe_gateway: MakeStripeGateway,
    dead_port: int,
) -> None:
    gateway = make_stripe_gateway(api_base=f"http://127.0.0.1:{dead_port}")

    outcome = await gateway.charge(charge_request())

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable is True
    assert "gateway_unreachable" in outcome.message


async def test_timeout_is_unknown_and_a_replay_with_the_key_finds_the_charge(
    make_stripe_gateway: MakeStripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    # The stub takes 0.6 s on the first POST: the answer is lost, the card is still charged.
    stripe_server.add_card("pm_timeout", customer="cus_1", behaviour="slow:0.6:1")
    request = charge_request("pm_timeout", key="timeout-key")
    impatient = make_stripe_gateway(max_attempts=1, timeout_seconds=0.2)

    lost = await impatient.charge(request)

    assert lost.kind is OutcomeKind.UNKNOWN
    assert lost.retryable is True
    assert "timeout" in lost.message
    for _ in range(50):  # the stub finishes the first request after the client gave up
        if stripe_server.payment_intents:
            break
        await asyncio.sleep(0.05)

    replayed = await make_stripe_gateway().charge(request)

    assert replayed.kind is OutcomeKind.SUCCEEDED
    (intent,) = stripe_server.payment_intents
    assert replayed.gateway_charge_id == intent["id"]
    assert intent_posts(stripe_server)[-1].replayed is True


# -- a pending charge read again ----------------------------------------------------------------


async def test_a_processing_charge_read_after_it_settles_is_succeeded(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_bank", customer="cus_1", network="visa", behaviour="processing")
    request = charge_request("pm_bank", key="pending-key")
    pending = await gateway.charge(request)
    assert pending.kind is OutcomeKind.PENDING
    stripe_server.settle_payment_intent(pending.gateway_charge_id)

    replayed = await gateway.charge(request)
    read = await gateway.charge(read_request(request, pending.gateway_charge_id))

    # replaying the create only replays Stripe's saved first answer: that is why we read
    assert replayed == pending
    assert read == ChargeOutcome(
        OutcomeKind.SUCCEEDED, pending.gateway_charge_id, network=CardNetwork.VISA
    )
    (intent,) = stripe_server.payment_intents
    assert intent["status"] == "succeeded"
    assert intent["latest_charge"]["status"] == "succeeded"
    (get,) = intent_gets(stripe_server)
    assert get.path == f"/v1/payment_intents/{pending.gateway_charge_id}"
    assert get.params == {"expand[0]": "latest_charge"}
    assert get.idempotency_key is None
    assert get.status == 200
    # a settled payment is a payment like any other: it can be refunded
    assert stripe_server.refunded_amount(pending.gateway_charge_id) == 0


async def test_reading_a_charge_sends_no_post_and_creates_no_intent(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_bank", customer="cus_1", behaviour="processing")
    request = charge_request("pm_bank")
    pending = await gateway.charge(request)
    before = stripe_server.requests

    still = await gateway.charge(read_request(request, pending.gateway_charge_id))
    again = await gateway.charge(read_request(request, pending.gateway_charge_id))

    assert still == again == pending  # not settled yet: still PENDING, same id
    after = stripe_server.requests[len(before) :]
    assert [(r.method, r.path) for r in after] == [
        ("GET", f"/v1/payment_intents/{pending.gateway_charge_id}")
    ] * 2
    assert len(intent_posts(stripe_server)) == 1
    assert len(stripe_server.payment_intents) == 1


@pytest.mark.parametrize(
    ("network", "settle", "expected"),
    [
        (
            "visa",
            {"decline_code": "insufficient_funds", "network_decline_code": "51"},
            ("insufficient_funds", CardNetwork.VISA, "51", ""),
        ),
        (
            "mastercard",
            {
                "decline_code": "do_not_honor",
                "network_decline_code": "05",
                "network_advice_code": "03",
            },
            ("do_not_honor", CardNetwork.MASTERCARD, "", "03"),
        ),
        ("amex", {}, ("generic_decline", CardNetwork.AMEX, "", "")),
    ],
)
async def test_a_processing_charge_that_fails_is_declined_with_its_codes(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    network: str,
    settle: dict[str, str],
    expected: tuple[str, str, str, str],
) -> None:
    stripe_server.add_card("pm_bank", customer="cus_1", network=network, behaviour="processing")
    request = charge_request("pm_bank")
    pending = await gateway.charge(request)
    stripe_server.settle_payment_intent(pending.gateway_charge_id, succeed=False, **settle)

    read = await gateway.charge(read_request(request, pending.gateway_charge_id))

    decline_code, network_name, visa_code, mac = expected
    assert read.kind is OutcomeKind.DECLINED
    assert read.gateway_charge_id == pending.gateway_charge_id
    assert read.decline_code == decline_code
    assert read.network == network_name
    assert (read.visa_response_code, read.mc_advice_code) == (visa_code, mac)
    assert read.retryable is False
    assert read.message.startswith("stripe: Your card")
    (intent,) = stripe_server.payment_intents
    assert intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == decline_code
    assert intent["latest_charge"]["status"] == "failed"
    assert len(intent_posts(stripe_server)) == 1


async def test_reading_an_unknown_intent_is_unknown_not_retryable(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        read = await gateway.charge(read_request(charge_request(), "pi_never_made"))

    # never NOT_ATTEMPTED nor DECLINED: the id came from Stripe, a person must look
    assert read.kind is OutcomeKind.UNKNOWN
    assert read.retryable is False
    assert read.gateway_charge_id == "pi_never_made"
    assert read.decline_code == ""
    assert read.message.startswith("stripe: resource_missing: ")
    assert [(r.method, r.status) for r in stripe_server.requests] == [("GET", 404)]
    (failed,) = [
        r for r in caplog.records if getattr(r, "action", "") == "stripe_charge_fetch_failed"
    ]
    assert getattr(failed, "gateway_charge_id", None) == "pi_never_made"
    assert getattr(failed, "http_status", None) == 404


async def test_a_500_on_the_read_is_retried(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_card(
        "pm_bank", customer="cus_1", behaviour="processing,fail_retrieve_with_500:1"
    )
    request = charge_request("pm_bank")
    pending = await gateway.charge(request)
    stripe_server.settle_payment_intent(pending.gateway_charge_id)

    with caplog.at_level(logging.DEBUG):
        read = await gateway.charge(read_request(request, pending.gateway_charge_id))

    assert read.kind is OutcomeKind.SUCCEEDED
    assert [r.status for r in intent_gets(stripe_server)] == [500, 200]
    retries = [r for r in caplog.records if getattr(r, "action", "") == "stripe_charge_fetch_retry"]
    assert len(retries) == 1


async def test_a_500_on_every_read_is_unknown_and_retryable(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_card(
        "pm_bank", customer="cus_1", behaviour="processing,fail_retrieve_with_500:100"
    )
    request = charge_request("pm_bank")
    pending = await gateway.charge(request)

    with caplog.at_level(logging.DEBUG):
        read = await gateway.charge(read_request(request, pending.gateway_charge_id))

    assert read.kind is OutcomeKind.UNKNOWN
    assert read.retryable is True
    assert read.gateway_charge_id == pending.gateway_charge_id
    assert read.message.startswith("stripe: gateway_error: ")
    assert [r.status for r in intent_gets(stripe_server)] == [500, 500, 500]  # max_attempts
    assert len(intent_posts(stripe_server)) == 1
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert actions.count("stripe_charge_fetch_retry") == 2
    assert actions.count("stripe_charge_fetch_failed") == 1


async def test_reading_when_unreachable_is_unknown_never_not_attempted(
    make_stripe_gateway: MakeStripeGateway,
    dead_port: int,
) -> None:
    gateway = make_stripe_gateway(api_base=f"http://127.0.0.1:{dead_port}")

    read = await gateway.charge(read_request(charge_request(), "pi_pending"))

    assert read.kind is OutcomeKind.UNKNOWN
    assert read.retryable is True
    assert read.gateway_charge_id == "pi_pending"
    assert "gateway_unreachable" in read.message


async def test_reading_with_a_wrong_api_key_is_unknown_and_retryable(
    make_stripe_gateway: MakeStripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_card("pm_bank", customer="cus_1", behaviour="processing")
    request = charge_request("pm_bank")
    pending = await make_stripe_gateway().charge(request)
    wrong_key = "sk_test_wrong_0123456789abcdef"

    with caplog.at_level(logging.DEBUG):
        read = await make_stripe_gateway(api_key=wrong_key).charge(
            read_request(request, pending.gateway_charge_id)
        )

    # asking again helps once an operator has fixed the key
    assert read.kind is OutcomeKind.UNKNOWN
    assert read.retryable is True
    assert "authentication_failed" in read.message
    assert [r.status for r in intent_gets(stripe_server)] == [401]
    assert wrong_key not in read.message
    assert wrong_key not in caplog.text


async def test_an_intent_of_another_plan_is_unknown_not_retryable(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_1", customer="cus_1")
    other = await gateway.charge(charge_request())  # plan-1's, succeeded
    mine = dataclasses.replace(charge_request(), plan_id="plan-2")

    read = await gateway.charge(read_request(mine, other.gateway_charge_id))

    assert read.kind is OutcomeKind.UNKNOWN
    assert read.retryable is False
    assert read.gateway_charge_id == other.gateway_charge_id
    assert "plan-1" in read.message


# -- mapping of objects the stub does not produce ------------------------------------------------


def payment_intent(status: str, **fields: Any) -> stripe.PaymentIntent:
    values = {"id": "pi_123", "object": "payment_intent", "status": status, **fields}
    return stripe.PaymentIntent.construct_from(values, "sk_test_unused")


def charge(network: str, **outcome: str) -> dict[str, Any]:
    return {
        "id": "ch_1",
        "object": "charge",
        "outcome": {"network_status": "declined_by_network", **outcome},
        "payment_method_details": {"type": "card", "card": {"network": network}},
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("succeeded", OutcomeKind.SUCCEEDED),
        ("processing", OutcomeKind.PENDING),
        ("requires_capture", OutcomeKind.PENDING),
        ("requires_action", OutcomeKind.REQUIRES_ACTION),
        ("requires_confirmation", OutcomeKind.PENDING),  # unexpected: ask again, never guess
    ],
)
def test_payment_intent_statuses(status: str, kind: OutcomeKind) -> None:
    outcome = outcome_for_payment_intent(payment_intent(status, latest_charge=charge("visa")))
    assert outcome.kind is kind
    assert outcome.gateway_charge_id == "pi_123"
    assert outcome.network == CardNetwork.VISA


def test_a_canceled_payment_intent_is_declined_with_its_last_error() -> None:
    intent = payment_intent(
        "canceled",
        last_payment_error={
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "stolen_card",
            "message": "Your card was declined.",
            "network_decline_code": "43",
            "payment_method": {"id": "pm_1", "object": "payment_method", "card": {"brand": "visa"}},
        },
    )

    outcome = outcome_for_payment_intent(intent)

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.decline_code == "stolen_card"
    assert outcome.network == CardNetwork.VISA
    assert outcome.visa_response_code == "43"
    assert outcome.message == "stripe: Your card was declined."


def card_error(error: dict[str, Any]) -> stripe.CardError:
    body = {"error": {"type": "card_error", "message": "Your card was declined.", **error}}
    # The SDK leaves CardError's constructor unannotated.
    return stripe.CardError(  # type: ignore[no-untyped-call]
        body["error"]["message"], None, error.get("code"), http_status=402, json_body=body
    )


def test_an_expanded_charge_gives_the_network_and_its_outcome_codes() -> None:
    # The network the charge went through wins over the card's brand (co-badged cards), and the
    # charge's outcome is the last place the network codes are looked for.
    error = card_error(
        {
            "code": "card_declined",
            "payment_method": {"object": "payment_method", "card": {"brand": "cartes_bancaires"}},
            "payment_intent": {
                "id": "pi_9",
                "object": "payment_intent",
                "status": "requires_payment_method",
                "latest_charge": charge(
                    "mastercard", network_decline_code="05", network_advice_code="21"
                ),
            },
        }
    )

    outcome = outcome_for_card_error(error)

    assert outcome == ChargeOutcome(
        OutcomeKind.DECLINED,
        "pi_9",
        decline_code="generic_decline",  # card_declined without a decline_code
        network=CardNetwork.MASTERCARD,
        mc_advice_code="21",
        message="stripe: Your card was declined.",
    )


def test_a_card_error_without_network_details() -> None:
    outcome = outcome_for_card_error(card_error({"code": "card_declined"}))
    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.decline_code == "generic_decline"
    assert outcome.network == CardNetwork.UNKNOWN
    assert outcome.gateway_charge_id == ""


# -- the stub itself follows Stripe where the gateway relies on it -------------------------------


async def test_stub_payment_intents_answer_like_stripe(
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_raw", customer="cus_raw", network="mastercard")
    stripe_server.add_card(
        "pm_no", customer="cus_raw", network="visa", behaviour="decline:insufficient_funds:51"
    )
    auth = {"Authorization": f"Bearer {stripe_server.api_key}"}
    base = {"amount": "700", "currency": "usd", "customer": "cus_raw", "confirm": "true"}
    no_redirects = {**base, "automatic_payment_methods[allow_redirects]": "never"}
    async with httpx.AsyncClient(base_url=stripe_server.base_url, headers=auth) as client:
        needs_return_url = await client.post(
            "/v1/payment_intents", data={**base, "payment_method": "pm_raw"}
        )
        card_only = await client.post(
            "/v1/payment_intents",
            data={**base, "payment_method": "pm_raw", "payment_method_types[0]": "card"},
        )
        other_customer = await client.post(
            "/v1/payment_intents",
            data={**no_redirects, "payment_method": "pm_raw", "customer": "cus_other"},
        )
        declined = await client.post(
            "/v1/payment_intents", data={**no_redirects, "payment_method": "pm_no"}
        )

    assert needs_return_url.status_code == 400
    assert "return_url" in needs_return_url.json()["error"]["message"]
    assert card_only.status_code == 200
    assert card_only.json()["status"] == "succeeded"
    assert card_only.json()["latest_charge"].startswith("ch_")  # not expanded unless asked
    assert other_customer.status_code == 400
    assert other_customer.json()["error"]["code"] == "resource_missing"
    assert declined.status_code == 402
    error = declined.json()["error"]
    assert error["type"] == "card_error"
    assert (error["code"], error["decline_code"]) == ("card_declined", "insufficient_funds")
    assert error["network_decline_code"] == "51"
    assert error["charge"].startswith("ch_")
    assert error["payment_method"]["card"]["brand"] == "visa"
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert error["payment_intent"]["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert error["payment_intent"]["latest_charge"] == error["charge"]
    failed = stripe_server.payment_intents[-1]["latest_charge"]
    assert failed["status"] == "failed"
    assert failed["outcome"]["network_decline_code"] == "51"
    assert failed["outcome"]["type"] == "issuer_declined"
    assert failed["payment_method_details"]["card"]["network"] == "visa"


async def test_stub_reads_payment_intents_like_stripe(
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_card("pm_bank", customer="cus_raw", network="visa", behaviour="processing")
    auth = {"Authorization": f"Bearer {stripe_server.api_key}"}
    create = {
        "amount": "700",
        "currency": "usd",
        "customer": "cus_raw",
        "payment_method": "pm_bank",
        "confirm": "true",
        "automatic_payment_methods[allow_redirects]": "never",
    }
    async with httpx.AsyncClient(base_url=stripe_server.base_url) as client:
        created = (
            await client.post(
                "/v1/payment_intents", data=create, headers={**auth, "Idempotency-Key": "k"}
            )
        ).json()
        path = f"/v1/payment_intents/{created['id']}"
        anonymous = await client.get(path)
        plain = await client.get(path, headers=auth)
        expanded = await client.get(path, params={"expand[]": "latest_charge"}, headers=auth)
        unknown_param = await client.get(path, params={"amount": "1"}, headers=auth)
        missing = await client.get("/v1/payment_intents/pi_missing", headers=auth)
        stripe_server.settle_payment_intent(created["id"], succeed=False)
        failed = await client.get(path, params={"expand[0]": "latest_charge"}, headers=auth)
        replayed = await client.post(
            "/v1/payment_intents", data=create, headers={**auth, "Idempotency-Key": "k"}
        )

    assert created["status"] == "processing"
    assert anonymous.status_code == 401
    assert plain.status_code == 200
    assert plain.json()["status"] == "processing"
    assert plain.json()["latest_charge"] == created["latest_charge"]  # an id unless expanded
    charge = expanded.json()["latest_charge"]
    assert (charge["id"], charge["status"]) == (created["latest_charge"], "pending")
    assert unknown_param.status_code == 400
    assert unknown_param.json()["error"]["code"] == "parameter_unknown"
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "type": "invalid_request_error",
        "message": "No such payment_intent: 'pi_missing'",
        "code": "resource_missing",
        "param": "intent",
    }
    intent = failed.json()
    assert intent["status"] == "requires_payment_method"
    error = intent["last_payment_error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
    )
    assert error["charge"] == created["latest_charge"]  # the same charge, now failed
    assert intent["latest_charge"]["status"] == "failed"
    assert intent["latest_charge"]["failure_code"] == "card_declined"
    assert intent["latest_charge"]["outcome"]["type"] == "issuer_declined"
    # the idempotency layer replays the first answer, whatever the intent became
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json()["status"] == "processing"
    with pytest.raises(ValueError, match="requires_payment_method"):
        stripe_server.settle_payment_intent(created["id"])
