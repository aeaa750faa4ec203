"""AdyenGateway's refunds through the real ``Adyen`` SDK against the local Adyen stub, and the
refund notifications the stub sends as Adyen does.

Nothing here reaches the internet: the stub listens on 127.0.0.1 (``tests/adyen_server.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from Adyen.util import is_valid_hmac_notification

from service.domain.money import Money
from service.gateways.adyen_gateway import (
    AdyenGateway,
    outcome_for_refund_notification,
)
from service.gateways.base import OutcomeKind, RefundErrorCode, RefundRequest
from tests.adyen_server import AdyenStubServer, RecordedRequest, hmac_signature
from tests.integration.conftest_adyen import (  # noqa: F401  (fixtures)
    MakeAdyenGateway,
    adyen_server,
    make_adyen_gateway,
)
from tests.integration.conftest_stripe import dead_port  # noqa: F401  (fixture)

KEY = "refund-0b7c6a52-detail-attempt-1"


@pytest.fixture
async def gateway(make_adyen_gateway: MakeAdyenGateway) -> AdyenGateway:
    return make_adyen_gateway()


def refund_request(
    psp: str, minor_units: int, *, key: str = KEY, currency: str = "USD", reason: str = ""
) -> RefundRequest:
    return RefundRequest(
        payment_id="pay_1",
        gateway_transaction_id=psp,
        amount=Money(currency, minor_units),
        idempotency_key=key,
        attempt=1,
        reason=reason,
    )


def refund_posts(server: AdyenStubServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path.endswith("/refunds")]


def item_of(notification: dict[str, Any]) -> dict[str, Any]:
    (wrapped,) = notification["notificationItems"]
    item: dict[str, Any] = wrapped["NotificationRequestItem"]
    return item


# -- a refund is received, then settled by a notification ----------------------------------------


async def test_a_refund_is_received_and_its_notification_settles_it(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)

    outcome = await gateway.refund(
        refund_request(payment.psp_reference, 2000, reason="requested_by_customer")
    )

    # Adyen only says it received the refund: pending, under the refund's own pspReference.
    assert outcome.kind is OutcomeKind.PENDING
    (refund,) = adyen_server.refunds
    assert outcome.gateway_refund_id == refund.psp_reference != payment.psp_reference
    assert (refund.amount, refund.currency, refund.status) == (2000, "USD", "received")
    assert adyen_server.refunded_amount(payment.psp_reference) == 0  # nothing moved yet
    (post,) = refund_posts(adyen_server)
    assert post.path == f"/v71/payments/{payment.psp_reference}/refunds"
    assert post.idempotency_key == KEY
    assert post.body == {
        "merchantAccount": adyen_server.merchant_account,
        "amount": {"value": 2000, "currency": "USD"},
        "reference": KEY,
        "merchantRefundReason": "CUSTOMER REQUEST",
    }

    notification = adyen_server.settle_refund(refund.psp_reference)

    item = item_of(notification)
    assert notification["live"] == "false"
    assert item["eventCode"] == "REFUND"
    assert item["success"] == "true"
    assert item["pspReference"] == refund.psp_reference
    assert item["originalReference"] == payment.psp_reference
    assert item["merchantReference"] == KEY
    assert item["amount"] == {"currency": "USD", "value": 2000}
    # The stub's signature is the one Adyen's own SDK verifies.
    assert is_valid_hmac_notification(notification, adyen_server.hmac_key)
    settled = outcome_for_refund_notification(item)
    assert settled.kind is OutcomeKind.SUCCEEDED
    assert settled.gateway_refund_id == outcome.gateway_refund_id
    assert adyen_server.refunded_amount(payment.psp_reference) == 2000


async def test_reading_a_pending_refund_sends_nothing_and_it_stays_pending(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)
    outcome = await gateway.refund(refund_request(payment.psp_reference, 1000))

    again = await gateway.fetch_refund(outcome.gateway_refund_id, refund_request("", 1000))

    assert again.kind is OutcomeKind.PENDING
    assert again.gateway_refund_id == outcome.gateway_refund_id
    assert len(adyen_server.requests) == 1  # no second refund, no call at all


async def test_a_refund_over_what_is_left_is_refused_by_its_notification(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=1000)
    outcome = await gateway.refund(refund_request(payment.psp_reference, 1500))
    assert outcome.kind is OutcomeKind.PENDING

    item = item_of(adyen_server.settle_refund(outcome.gateway_refund_id))

    assert (item["eventCode"], item["success"]) == ("REFUND", "false")
    assert item["reason"] == "Insufficient balance on payment"
    refused = outcome_for_refund_notification(item)
    assert refused.kind is OutcomeKind.DECLINED
    assert refused.error_code == RefundErrorCode.DECLINED
    assert not refused.retryable
    assert "Insufficient balance on payment" in refused.error_message
    assert refused.gateway_refund_id == outcome.gateway_refund_id
    assert adyen_server.refunded_amount(payment.psp_reference) == 0


async def test_a_refund_the_scheme_bounces_later_is_a_final_failure(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=1000)
    outcome = await gateway.refund(refund_request(payment.psp_reference, 1000))
    adyen_server.settle_refund(outcome.gateway_refund_id)

    item = item_of(
        adyen_server.settle_refund(
            outcome.gateway_refund_id, event_code="REFUND_FAILED", reason="Account closed"
        )
    )

    assert item["eventCode"] == "REFUND_FAILED"
    failed = outcome_for_refund_notification(item)
    assert failed.kind is OutcomeKind.DECLINED
    assert not failed.retryable
    assert "Account closed" in failed.error_message
    assert adyen_server.refunded_amount(payment.psp_reference) == 0


async def test_the_stub_signs_as_adyen_documents_and_a_wrong_key_does_not_verify(
    adyen_server: AdyenStubServer,
) -> None:
    payment = adyen_server.add_payment(amount=1000)
    item = {
        "pspReference": "7914073381342284",
        "originalReference": payment.psp_reference,
        "merchantAccountCode": "TestMerchant",
        "merchantReference": "TestPayment-1407325143704",
        "amount": {"value": 1130, "currency": "EUR"},
        "eventCode": "REFUND",
        "success": "true",
    }
    other_key = "00" * 32

    signed = adyen_server.sign(item)
    wrong = adyen_server.sign(item, other_key)
    tampered = adyen_server.sign(item)
    tampered["amount"] = {"value": 11300, "currency": "EUR"}

    assert signed["additionalData"]["hmacSignature"] == hmac_signature(item, adyen_server.hmac_key)
    assert is_valid_hmac_notification(adyen_server.notification(signed), adyen_server.hmac_key)
    assert not is_valid_hmac_notification(adyen_server.notification(wrong), adyen_server.hmac_key)
    assert not is_valid_hmac_notification(
        adyen_server.notification(tampered), adyen_server.hmac_key
    )


# -- idempotency: never two refunds for one key --------------------------------------------------


async def test_a_replay_with_the_same_key_gets_the_first_answer_and_no_second_refund(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)

    first = await gateway.refund(refund_request(payment.psp_reference, 2000))
    second = await gateway.refund(refund_request(payment.psp_reference, 2000))

    assert first == second
    assert len(adyen_server.refunds) == 1
    posts = refund_posts(adyen_server)
    assert [(p.idempotency_key, p.replayed) for p in posts] == [(KEY, False), (KEY, True)]
    assert posts[0].body == posts[1].body


async def test_a_second_send_while_the_first_is_in_progress_is_unknown_never_a_new_refund(
    make_adyen_gateway: MakeAdyenGateway, adyen_server: AdyenStubServer
) -> None:
    """Two workers send the same attempt at once: Adyen answers the second 704 (in progress).
    That may become a refund: the outcome is UNKNOWN (replay with the same key), and the replay
    gets the first answer."""
    payment = adyen_server.add_payment(amount=5000, behaviour="hold:1")
    gateway = make_adyen_gateway(max_attempts=2)
    first = asyncio.create_task(gateway.refund(refund_request(payment.psp_reference, 2000)))
    assert await asyncio.to_thread(adyen_server.wait_until_in_progress, KEY)

    second = await gateway.refund(refund_request(payment.psp_reference, 2000))

    assert second.kind is OutcomeKind.UNKNOWN
    assert second.retryable
    assert "704" in second.error_message
    adyen_server.release()
    received = await first
    assert received.kind is OutcomeKind.PENDING
    replayed = await gateway.refund(refund_request(payment.psp_reference, 2000))
    assert replayed == received
    assert len(adyen_server.refunds) == 1
    assert [p.status for p in refund_posts(adyen_server)] == [422, 422, 201, 201]


# -- transient errors are retried with the same key ----------------------------------------------


async def test_a_transient_500_is_retried_with_the_same_key(
    gateway: AdyenGateway, adyen_server: AdyenStubServer, caplog: pytest.LogCaptureFixture
) -> None:
    payment = adyen_server.add_payment(amount=5000, behaviour="fail_with_500:2")

    with caplog.at_level(logging.WARNING, logger="service.gateways.adyen_gateway"):
        outcome = await gateway.refund(refund_request(payment.psp_reference, 2000))

    assert outcome.kind is OutcomeKind.PENDING
    posts = refund_posts(adyen_server)
    assert [p.status for p in posts] == [500, 500, 201]
    assert {p.idempotency_key for p in posts} == {KEY}
    assert len(adyen_server.refunds) == 1
    retries = [r for r in caplog.records if r.__dict__.get("action") == "adyen_refund_create_retry"]
    assert len(retries) == 2
    assert all(adyen_server.api_key not in r.getMessage() for r in caplog.records)


async def test_500s_until_the_retries_run_out_leave_the_outcome_unknown(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000, behaviour="fail_with_500:3")

    outcome = await gateway.refund(refund_request(payment.psp_reference, 2000))

    # A 500 may come after the refund was made: replay with the same key, never a new one.
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.retryable
    assert outcome.error_code == RefundErrorCode.GATEWAY_ERROR
    assert "HTTP 500" in outcome.error_message


async def test_rate_limits_only_are_not_attempted(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000, behaviour="rate_limit:3")

    outcome = await gateway.refund(refund_request(payment.psp_reference, 2000))

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable
    assert outcome.error_code == RefundErrorCode.RATE_LIMITED
    assert adyen_server.refunds == []


async def test_a_gateway_nobody_listens_on_is_not_attempted(
    make_adyen_gateway: MakeAdyenGateway, dead_port: int
) -> None:
    gateway = make_adyen_gateway(api_base=f"http://127.0.0.1:{dead_port}", max_attempts=2)

    outcome = await gateway.refund(refund_request("8835511210681145", 2000))

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.retryable
    assert outcome.error_code == RefundErrorCode.GATEWAY_UNREACHABLE


async def test_a_lost_answer_is_unknown_and_its_replay_finds_the_one_refund(
    make_adyen_gateway: MakeAdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000, behaviour="hold:1")
    impatient = make_adyen_gateway(timeout_seconds=0.3, max_attempts=1)

    lost = await impatient.refund(refund_request(payment.psp_reference, 2000))

    assert lost.kind is OutcomeKind.UNKNOWN
    assert lost.error_code == RefundErrorCode.TIMEOUT
    assert lost.retryable
    # The stub goes on and makes the refund; the replay with the same key reads its answer.
    adyen_server.release()
    assert await asyncio.to_thread(adyen_server.wait_for_refunds, 1)
    replayed = await make_adyen_gateway().refund(refund_request(payment.psp_reference, 2000))
    assert replayed.kind is OutcomeKind.PENDING
    (refund,) = adyen_server.refunds
    assert replayed.gateway_refund_id == refund.psp_reference
    assert refund_posts(adyen_server)[-1].replayed


# -- permanent errors ----------------------------------------------------------------------------


async def test_a_wrong_api_key_is_refused_and_never_shown(
    make_adyen_gateway: MakeAdyenGateway,
    adyen_server: AdyenStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payment = adyen_server.add_payment(amount=5000)
    wrong_key = "AQE_wrong_key_never_to_be_logged_42"
    gateway = make_adyen_gateway(api_key=wrong_key)

    with caplog.at_level(logging.DEBUG):
        outcome = await gateway.refund(refund_request(payment.psp_reference, 2000))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.AUTHENTICATION_FAILED
    assert not outcome.retryable
    assert "HTTP 401" in outcome.error_message
    assert wrong_key not in outcome.error_message
    assert all(wrong_key not in r.getMessage() for r in caplog.records)
    assert all(wrong_key not in str(r.__dict__) for r in caplog.records)
    assert adyen_server.refunds == []
    assert len(adyen_server.requests) == 1  # not retried


async def test_a_refund_of_an_unknown_payment_is_declined_as_not_found(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    outcome = await gateway.refund(refund_request("8835511210681145", 2000))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.TRANSACTION_NOT_FOUND
    assert "167" in outcome.error_message
    assert not outcome.retryable


async def test_an_invalid_amount_is_declined_as_an_invalid_request(
    gateway: AdyenGateway, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)

    outcome = await gateway.refund(refund_request(payment.psp_reference, 0))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.INVALID_REQUEST
    assert "137" in outcome.error_message
    assert adyen_server.refunds == []


def test_the_gateway_refuses_a_bad_configuration() -> None:
    with pytest.raises(ValueError, match="merchant_account"):
        AdyenGateway("key", "")
    with pytest.raises(ValueError, match="live_url_prefix"):
        AdyenGateway("key", "Merchant", environment="live")
    with pytest.raises(ValueError, match="recurring_processing_model"):
        AdyenGateway("key", "Merchant", recurring_processing_model="Yearly")
    with pytest.raises(ValueError, match="-live"):
        AdyenGateway("key", "Merchant", api_base="https://x-checkout-live.adyenpayments.com")
