"""The ``adyen`` gateway end to end, as the billing system and an operator would notice it: a
refund of an Adyen payment made through gRPC and the billing job stays PROCESSING, sent once,
until Adyen's notification, which the stub delivers to the service's ``/webhooks/adyen``;
payment retries charge the stored card through Adyen.

Real PostgreSQL, a real gRPC server; the service's ``adyen`` gateway points at the Adyen stub
(``config_overrides`` below), through the real ``Adyen`` SDK.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from Adyen.util import is_valid_hmac_notification

from refundretry.v1 import refund_pb2, retry_plan_pb2
from service.gateways.adyen_gateway import (
    AdyenGateway,
    outcome_for_refund_notification,
)
from service.gateways.base import OutcomeKind, RefundOutcome, RefundRequest
from service.jobs.billing_job import JobRequest
from tests.adyen_server import AdyenStubServer, RecordedRequest
from tests.integration import builders as b
from tests.integration.conftest import Client, job_with
from tests.integration.conftest_adyen import adyen_server, adyen_settings  # noqa: F401
from tests.integration.retry_builders import failure, plan_of, record, run_retries, schedule

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus
PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
CUSTOMER = "cus_9"  # the customer ``failure()`` records
WEBHOOK_USER, WEBHOOK_PASSWORD = "adyen-webhooks", "s3cret-basic-auth"


@pytest.fixture
def config_overrides(adyen_server: AdyenStubServer) -> dict[str, str]:
    return {
        **adyen_settings(adyen_server),
        "REFUND_RETRY_ADYEN_WEBHOOK_HMAC_KEYS": adyen_server.hmac_key,
        "REFUND_RETRY_ADYEN_WEBHOOK_USERNAME": WEBHOOK_USER,
        "REFUND_RETRY_ADYEN_WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
    }


def refund_posts(server: AdyenStubServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path.endswith("/refunds")]


async def adyen_refund(client: Client, server: AdyenStubServer, amount: int = 2000) -> Any:
    """An approved refund of ``amount`` of a 5000 Adyen payment."""
    payment = server.add_payment(amount=5000)
    recorded = await b.record_payment(
        client, gateway="adyen", transaction_id=payment.psp_reference, items=[("plan", 5000, 0)]
    )
    refund = await b.create_refund(client, recorded.payment_id, amount=amount)
    await b.approve(client, refund.refund_id, token="t-bob")
    return refund


# -- refunds -------------------------------------------------------------------------------------


async def test_an_adyen_refund_stays_processing_and_is_sent_once_until_its_notification(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    refund = await adyen_refund(client, adyen_server)

    first = await b.run_job(client)

    assert first.refunds_pending_at_gateway == 1
    processing = await b.get_refund(client, refund.refund_id)
    assert processing.status == RS.REFUND_STATUS_PROCESSING
    (detail,) = processing.details
    (received,) = adyen_server.refunds
    assert detail.gateway_refund_id == received.psp_reference
    assert detail.status == DS.REFUND_DETAIL_STATUS_PROCESSING
    (post,) = refund_posts(adyen_server)
    assert post.idempotency_key == f"refund-{detail.detail_id}-attempt-1"
    assert post.body is not None
    assert post.body["amount"] == {"value": 2000, "currency": "USD"}

    # The job looks once more (a notification may have outrun Adyen's answer), then leaves the
    # refund to wait for Adyen: nothing is sent, nothing changes.
    for minutes, looked in ((2, 1), (4, 0), (6, 0)):
        later = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=minutes))
        assert later.refunds_pending_at_gateway == looked  # still pending, or not looked at
        assert later.refunds_succeeded == later.refunds_failed == 0
    still = await b.get_refund(client, refund.refund_id)
    assert still.status == RS.REFUND_STATUS_PROCESSING
    assert still.details[0].attempt_count == 1
    assert still.details[0].gateway_refund_id == received.psp_reference
    assert len(adyen_server.requests) == 1
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.refundable_amount.minor_units == 3000  # still reserved

    # Adyen settles it: the notification it sends is signed and means SUCCEEDED for this detail.
    notification = adyen_server.settle_refund(received.psp_reference)
    assert is_valid_hmac_notification(notification, adyen_server.hmac_key)
    (wrapped,) = notification["notificationItems"]
    item = wrapped["NotificationRequestItem"]
    assert item["merchantReference"] == post.idempotency_key
    outcome = outcome_for_refund_notification(item)
    assert outcome == RefundOutcome(OutcomeKind.SUCCEEDED, detail.gateway_refund_id)


class Crash(BaseException):
    """The worker died after Adyen answered and before the outcome was stored."""


async def test_a_crash_after_adyen_answered_replays_with_the_same_key_and_one_refund(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    refund = await adyen_refund(client, adyen_server)
    gateway = AdyenGateway(
        adyen_server.api_key, adyen_server.merchant_account, api_base=adyen_server.base_url
    )

    async def die(request: RefundRequest, outcome: RefundOutcome) -> None:
        raise Crash(request.idempotency_key)

    crashing = job_with(
        client.service, {"adyen": gateway}, lease=timedelta(seconds=1), after_gateway_call=die
    )
    try:
        with pytest.raises(Crash):
            await crashing.run(JobRequest())
    finally:
        await gateway.close()
    assert len(adyen_server.refunds) == 1
    stuck = await b.get_refund(client, refund.refund_id)
    assert stuck.details[0].gateway_refund_id == ""  # the answer was never stored

    await asyncio.sleep(1.2)  # the dead worker's lease expires
    summary = await b.run_job(client)

    assert summary.refunds_pending_at_gateway == 1
    replayed = await b.get_refund(client, refund.refund_id)
    (only,) = adyen_server.refunds
    assert replayed.details[0].gateway_refund_id == only.psp_reference
    assert replayed.details[0].attempt_count == 1
    posts = refund_posts(adyen_server)
    assert [p.replayed for p in posts] == [False, True]
    assert len({p.idempotency_key for p in posts}) == 1


async def test_an_adyen_refund_of_an_unknown_payment_fails_with_the_reason(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    recorded = await b.record_payment(
        client, gateway="adyen", transaction_id="8835511210681145", items=[("plan", 5000, 0)]
    )
    refund = await b.create_refund(client, recorded.payment_id, amount=1000)
    await b.approve(client, refund.refund_id, token="t-bob")

    assert (await b.run_job(client)).refunds_failed == 1
    failed = await b.get_refund(client, refund.refund_id)
    assert failed.status == RS.REFUND_STATUS_FAILED
    assert failed.details[0].last_error_code == "transaction_not_found"
    assert adyen_server.refunds == []


# -- payment retries -----------------------------------------------------------------------------


async def adyen_plan(client: Client, card: str) -> str:
    await schedule(client, "adyen-fast", [60, 120], attempts=4)
    request = failure(card=card, schedule_code="adyen-fast")
    request.gateway = "adyen"
    response = await record(client, request)
    assert response.plan.gateway == "adyen"
    return response.plan.plan_id  # type: ignore[no-any-return]


async def test_an_adyen_plan_is_recovered_by_a_merchant_initiated_payment(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card("8415995487230001", shopper_reference=CUSTOMER)
    plan_id = await adyen_plan(client, "8415995487230001")

    summary = await run_retries(client, ahead=timedelta(seconds=61))

    assert (summary.plans_claimed, summary.recovered) == (1, 1)
    (answer,) = adyen_server.payments
    (post,) = adyen_server.requests
    assert post.idempotency_key == f"retry-{plan_id}-attempt-2"
    assert post.body is not None
    assert post.body["shopperInteraction"] == "ContAuth"
    assert post.body["recurringProcessingModel"] == "Subscription"
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED
    assert plan.attempts[-1].gateway_charge_id == answer["pspReference"]


async def test_an_adyen_refusal_is_recorded_in_the_decline_vocabulary(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card(
        "8415995487230002", shopper_reference=CUSTOMER, behaviour="refuse:12:51"
    )
    plan_id = await adyen_plan(client, "8415995487230002")

    summary = await run_retries(client, ahead=timedelta(seconds=61))

    assert (summary.plans_claimed, summary.rescheduled) == (1, 1)
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    attempt = plan.attempts[-1]
    assert attempt.outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert attempt.decline.decline_code == "insufficient_funds"
    assert attempt.decline.visa_response_code == "51"
    assert "visa.category2" in plan.decisions[-1].rule_ids


async def test_a_pending_adyen_payment_is_never_charged_twice(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    adyen_server.add_stored_card(
        "8415995487230003", shopper_reference=CUSTOMER, behaviour="received"
    )
    plan_id = await adyen_plan(client, "8415995487230003")

    first = await run_retries(client, ahead=timedelta(seconds=61))
    again = await run_retries(client, ahead=timedelta(minutes=10))

    assert first.outcomes_unknown == again.outcomes_unknown == 1
    plan = await plan_of(client, plan_id)
    (answer,) = adyen_server.payments
    assert plan.attempts[-1].gateway_charge_id == answer["pspReference"]
    assert plan.attempt_count == 2
    assert len(adyen_server.requests) == 1  # the pending payment waits for its notification


async def test_the_refund_notification_delivered_to_the_service_settles_the_refund(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    refund = await adyen_refund(client, adyen_server)
    await b.run_job(client)
    (received,) = adyen_server.refunds
    assert client.service.http is not None
    url = f"http://127.0.0.1:{client.service.http.port}/webhooks/adyen"

    notification = adyen_server.settle_refund(received.psp_reference)
    status, body = await adyen_server.deliver(
        url, notification, username=WEBHOOK_USER, password=WEBHOOK_PASSWORD
    )

    assert (status, body) == (200, "[accepted]")
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].attempt_count == 1
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.refundable_amount.minor_units == 3000
    assert payment.refunded_amount.minor_units == 2000
    # Nothing more is sent: the job has nothing left to do.
    later = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=5))
    assert later.refunds_claimed == 0
    assert len(adyen_server.requests) == 1
