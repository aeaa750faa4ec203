"""AdyenGateway's charges (payment-retry attempts) through the real ``Adyen`` SDK against the
local Adyen stub: merchant-initiated payments of a stored card, refusals normalised into the
decline vocabulary, pending payments settled by their AUTHORISATION notification.
"""

from __future__ import annotations

import pytest
from Adyen.util import is_valid_hmac_notification

from service.domain.money import Money
from service.gateways.adyen_gateway import AdyenGateway, outcome_for_authorisation_notification
from service.gateways.base import ChargeRequest, OutcomeKind
from tests.adyen_server import AdyenStubServer, RecordedRequest
from tests.integration.conftest_adyen import (  # noqa: F401  (fixtures)
    MakeAdyenGateway,
    adyen_server,
    make_adyen_gateway,
)

SHOPPER = "cus_adyen_7"
KEY = "retry-5e4c1f0a-plan-attempt-2"


@pytest.fixture
async def gateway(make_adyen_gateway: MakeAdyenGateway) -> AdyenGateway:
    return make_adyen_gateway()


def charge_request(
    card: str,
    *,
    amount: int = 2500,
    currency: str = "EUR",
    key: str = KEY,
    charge_id: str = "",
    metadata: dict[str, str] | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        plan_id="5e4c1f0a-plan",
        customer_id=SHOPPER,
        payment_method=card,
        amount=Money(currency, amount),
        idempotency_key=key,
        attempt=2,
        metadata=metadata or {},
        gateway_charge_id=charge_id,
    )


def payment_posts(server: AdyenStubServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path == "/v71/payments"]


async def test_an_authorised_payment_recovers_and_is_sent_as_a_merchant_initiated_one(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487234100", shopper_reference=SHOPPER, brand="visa")

    outcome = await gateway.charge(
        charge_request("8415995487234100", metadata={"segment": "smb", "x" * 21: "dropped"})
    )

    assert outcome.kind is OutcomeKind.SUCCEEDED
    (answer,) = adyen_server.payments
    assert outcome.gateway_charge_id == answer["pspReference"]
    assert outcome.network == "VISA"
    assert outcome.decline_code == ""
    (post,) = payment_posts(adyen_server)
    assert post.idempotency_key == KEY
    assert post.body == {
        "merchantAccount": adyen_server.merchant_account,
        "amount": {"value": 2500, "currency": "EUR"},
        "reference": KEY,
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "8415995487234100"},
        "shopperReference": SHOPPER,
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": "Subscription",
        # Adyen's limits: keys up to 20 characters; the longer one is left out.
        "metadata": {"plan_id": "5e4c1f0a-plan", "attempt": "2", "segment": "smb"},
    }


async def test_the_recurring_processing_model_is_configurable(
    make_adyen_gateway: MakeAdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487234101", shopper_reference=SHOPPER)
    gateway = make_adyen_gateway(recurring_processing_model="UnscheduledCardOnFile")

    assert (await gateway.charge(charge_request("8415995487234101"))).kind is OutcomeKind.SUCCEEDED
    (post,) = payment_posts(adyen_server)
    assert post.body is not None
    assert post.body["recurringProcessingModel"] == "UnscheduledCardOnFile"


@pytest.mark.parametrize(
    ("brand", "behaviour", "kind", "code", "network", "visa", "mac"),
    [
        # Visa: the issuer's response code comes from refusalReasonRaw.
        ("visa", "refuse:12:51", OutcomeKind.DECLINED, "insufficient_funds", "VISA", "51", ""),
        ("visa", "refuse:2:R1", OutcomeKind.DECLINED, "generic_decline", "VISA", "R1", ""),
        ("visa", "refuse:6:54", OutcomeKind.DECLINED, "expired_card", "VISA", "54", ""),
        # Mastercard: the merchant advice code; its raw code is no Visa code.
        ("mc", "refuse:2:05:21", OutcomeKind.DECLINED, "generic_decline", "MASTERCARD", "", "21"),
        ("mc", "refuse:12:51:24", OutcomeKind.DECLINED, "insufficient_funds", "MASTERCARD", "",
         "24"),
        ("amex", "refuse:26", OutcomeKind.DECLINED, "revocation_of_authorization", "AMEX", "", ""),
        # The shopper must authenticate: no one is there off-session.
        ("visa", "refuse:38", OutcomeKind.REQUIRES_ACTION, "authentication_required", "VISA", "",
         ""),
        # resultCode Error with Adyen's reason; a soft decline.
        ("visa", "error:4", OutcomeKind.DECLINED, "processing_error", "VISA", "", ""),
    ],
)  # fmt: skip
async def test_a_refusal_is_normalised_into_the_decline_vocabulary(
    gateway: AdyenGateway,
    adyen_server: AdyenStubServer,
    brand: str,
    behaviour: str,
    kind: OutcomeKind,
    code: str,
    network: str,
    visa: str,
    mac: str,
) -> None:
    adyen_server.add_stored_card(
        "8415995487234102", shopper_reference=SHOPPER, brand=brand, behaviour=behaviour
    )

    outcome = await gateway.charge(charge_request("8415995487234102"))

    (answer,) = adyen_server.payments
    assert outcome.kind is kind
    assert outcome.gateway_charge_id == answer["pspReference"]
    assert (outcome.decline_code, outcome.network) == (code, network)
    assert (outcome.visa_response_code, outcome.mc_advice_code) == (visa, mac)
    assert answer["refusalReasonCode"] in outcome.message
    assert not outcome.retryable


async def test_a_pending_payment_is_never_created_again_and_its_notification_settles_it(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card(
        "8415995487234103", shopper_reference=SHOPPER, brand="mc", behaviour="received"
    )
    pending = await gateway.charge(charge_request("8415995487234103"))
    assert pending.kind is OutcomeKind.PENDING
    assert pending.network == "MASTERCARD"

    # Reading it again: the Checkout API has no call for that, and no new payment is made.
    again = await gateway.charge(
        charge_request("8415995487234103", charge_id=pending.gateway_charge_id)
    )
    assert again.kind is OutcomeKind.PENDING
    assert again.gateway_charge_id == pending.gateway_charge_id
    assert len(adyen_server.requests) == 1

    notification = adyen_server.settle_payment(
        pending.gateway_charge_id, success=False, refusal_code="12", advice_code="24"
    )
    assert is_valid_hmac_notification(notification, adyen_server.hmac_key)
    (wrapped,) = notification["notificationItems"]
    item = wrapped["NotificationRequestItem"]
    assert (item["eventCode"], item["success"], item["reason"]) == (
        "AUTHORISATION",
        "false",
        "Not enough balance",
    )
    settled = outcome_for_authorisation_notification(item)
    assert settled.kind is OutcomeKind.DECLINED
    assert settled.gateway_charge_id == pending.gateway_charge_id
    assert (settled.decline_code, settled.network, settled.mc_advice_code) == (
        "insufficient_funds",
        "MASTERCARD",
        "24",
    )


async def test_an_authorised_notification_recovers_a_pending_payment(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card(
        "8415995487234104", shopper_reference=SHOPPER, brand="visa", behaviour="pending"
    )
    pending = await gateway.charge(charge_request("8415995487234104"))
    assert pending.kind is OutcomeKind.PENDING

    notification = adyen_server.settle_payment(pending.gateway_charge_id)

    (wrapped,) = notification["notificationItems"]
    settled = outcome_for_authorisation_notification(wrapped["NotificationRequestItem"])
    assert settled.kind is OutcomeKind.SUCCEEDED
    assert (settled.gateway_charge_id, settled.network) == (pending.gateway_charge_id, "VISA")


async def test_a_replay_with_the_same_key_charges_once(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487234105", shopper_reference=SHOPPER)

    first = await gateway.charge(charge_request("8415995487234105"))
    second = await gateway.charge(charge_request("8415995487234105"))

    assert first == second
    assert len(adyen_server.payments) == 1
    assert [p.replayed for p in payment_posts(adyen_server)] == [False, True]


async def test_a_transient_500_is_retried_with_the_same_key_and_charges_once(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card(
        "8415995487234106", shopper_reference=SHOPPER, behaviour="fail_with_500:1"
    )

    outcome = await gateway.charge(charge_request("8415995487234106"))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    posts = payment_posts(adyen_server)
    assert [(p.status, p.idempotency_key) for p in posts] == [(500, KEY), (200, KEY)]
    assert len(adyen_server.payments) == 1


async def test_a_refused_api_key_is_not_an_attempt_on_the_card(
    make_adyen_gateway: MakeAdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487234107", shopper_reference=SHOPPER)
    gateway = make_adyen_gateway(api_key="AQE_not_the_key")

    outcome = await gateway.charge(charge_request("8415995487234107"))

    # The issuer was never asked: the plan must not use up an attempt on it.
    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable
    assert "authentication_failed" in outcome.message
    assert adyen_server.payments == []


async def test_a_card_of_another_shopper_is_declined_without_a_payment(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487234108", shopper_reference="cus_someone_else")

    outcome = await gateway.charge(charge_request("8415995487234108"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert "803" in outcome.message
    assert not outcome.retryable
    assert adyen_server.payments == []
