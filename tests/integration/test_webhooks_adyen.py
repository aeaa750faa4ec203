"""Adyen notifications on ``/webhooks/adyen``: every item's HMAC checked as Adyen documents it,
answered ``[accepted]``, each event applied once; refunds, payments of retry attempts and
chargebacks update the same workflows as outcomes learned from the gateway.

The notifications come from the Adyen stub (``tests/adyen_server.py``: its own signing code)
or are built and signed here (``webhook_builders``), never by the service's code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from refundretry.v1 import refund_pb2, retry_plan_pb2
from repository.database import Database
from service.gateways.base import Gateway, RefundOutcome, RefundRequest
from service.jobs.billing_job import JobRequest
from service.webhooks import with_reported_outcomes
from tests.adyen_server import AdyenStubServer
from tests.integration import builders as b
from tests.integration.conftest import Client, job_with
from tests.integration.conftest_adyen import adyen_server, adyen_settings  # noqa: F401
from tests.integration.retry_builders import events, failure, plan_of, record, run_retries, schedule
from tests.integration.webhook_builders import (
    ADYEN_OLD_KEY,
    adyen_body,
    adyen_item,
    adyen_sign,
    audit_actions,
    outbox_types,
    post_adyen,
    processing_adyen_refund,
    snapshot,
    table_counts,
    webhook_rows,
)

RS = refund_pb2.RefundStatus
PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
CUSTOMER = "cus_9"  # the customer ``failure()`` records
UNUSED_KEY = "A1" * 32


@pytest.fixture
def config_overrides(adyen_server: AdyenStubServer) -> dict[str, str]:
    # The current key, and the previous one still accepted while Adyen switches over.
    return {
        **adyen_settings(adyen_server),
        "REFUND_RETRY_ADYEN_WEBHOOK_HMAC_KEYS": f"{adyen_server.hmac_key}, {ADYEN_OLD_KEY}",
    }


def url(client: Client) -> str:
    assert client.service.http is not None
    return f"http://127.0.0.1:{client.service.http.port}/webhooks/adyen"


async def test_a_refused_refund_fails_and_a_replay_changes_nothing(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    refund_id = refund.refund_id
    notification = adyen_server.settle_refund(psp, success=False, reason="Insufficient balance")

    first = await adyen_server.deliver(url(client), notification)
    before, state = await table_counts(db), await snapshot(db)
    again = await adyen_server.deliver(url(client), notification)

    assert first == again == (200, "[accepted]")
    assert await table_counts(db) == before
    assert await snapshot(db) == state
    refund = await b.get_refund(client, refund_id)
    assert refund.status == RS.REFUND_STATUS_FAILED
    assert "Insufficient balance" in refund.details[0].last_error_message
    assert (await outbox_types(db, refund_id)).count("refund.failed") == 1
    assert (await audit_actions(db, refund_id))[-1] == ("webhook:adyen", "refund.failed")
    (row,) = await webhook_rows(db, "adyen")
    assert (row["event_id"], row["status"]) == (f"REFUND:{psp}:false", "APPLIED")


async def test_refund_failed_after_success_is_stored_but_cannot_move_the_refund_back(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    refund_id = refund.refund_id
    succeeded = adyen_server.settle_refund(psp)
    bounced = adyen_server.settle_refund(psp, event_code="REFUND_FAILED")

    assert await adyen_server.deliver(url(client), succeeded) == (200, "[accepted]")
    assert await adyen_server.deliver(url(client), bounced) == (200, "[accepted]")

    assert (await b.get_refund(client, refund_id)).status == RS.REFUND_STATUS_SUCCEEDED
    rows = {r["event_type"]: r for r in await webhook_rows(db, "adyen")}
    assert rows["REFUND"]["status"] == "APPLIED"
    assert rows["REFUND_FAILED"]["status"] == "IGNORED"  # kept for a person to see


def signed_refund_item(psp: str, **changes: Any) -> dict[str, Any]:
    return adyen_item("REFUND", psp, original_reference="8815000000000001", **changes)


@pytest.mark.parametrize(
    "case", ["tampered amount", "wrong key", "no signature", "one forged item of two"]
)
async def test_a_bad_hmac_is_refused_with_401_and_changes_nothing(
    client: Client, db: Database, adyen_server: AdyenStubServer, case: str
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    refund_id = refund.refund_id
    good = adyen_sign(signed_refund_item(psp, value=2000, currency="USD"), adyen_server.hmac_key)
    if case == "tampered amount":
        item = json.loads(json.dumps(good))
        item["amount"]["value"] = 1
        items = [item]
    elif case == "wrong key":
        items = [adyen_sign(signed_refund_item(psp, value=2000, currency="USD"), UNUSED_KEY)]
    elif case == "no signature":
        items = [signed_refund_item(psp, value=2000, currency="USD")]
    else:
        other = adyen_sign(adyen_item("CAPTURE", "8815000000000009"), UNUSED_KEY)
        items = [good, other]
    before, state = await table_counts(db), await snapshot(db)

    answer = await post_adyen(client.service, adyen_body(*items))

    assert answer.status == 401, answer.text
    assert answer.text != "[accepted]"
    assert await table_counts(db) == before
    assert await snapshot(db) == state
    assert (await b.get_refund(client, refund_id)).status == RS.REFUND_STATUS_PROCESSING


async def test_an_item_signed_with_the_previous_key_is_accepted(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    refund_id = refund.refund_id
    item = adyen_sign(signed_refund_item(psp, value=2000, currency="USD"), ADYEN_OLD_KEY)

    answer = await post_adyen(client.service, adyen_body(item))

    assert (answer.status, answer.text) == (200, "[accepted]")
    assert (await b.get_refund(client, refund_id)).status == RS.REFUND_STATUS_SUCCEEDED


async def test_unknown_references_are_stored_unmatched_and_other_codes_ignored(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    items = [
        adyen_sign(adyen_item("REFUND", "8815999999999991"), adyen_server.hmac_key),
        adyen_sign(adyen_item("AUTHORISATION", "8815999999999992"), adyen_server.hmac_key),
        adyen_sign(adyen_item("CAPTURE", "8815999999999993"), adyen_server.hmac_key),
    ]

    answer = await post_adyen(client.service, adyen_body(*items))

    assert (answer.status, answer.text) == (200, "[accepted]")
    rows = {r["event_type"]: r["status"] for r in await webhook_rows(db, "adyen")}
    assert rows == {"REFUND": "UNMATCHED", "AUTHORISATION": "UNMATCHED", "CAPTURE": "IGNORED"}


async def test_a_body_that_is_no_notification_is_a_400(client: Client, db: Database) -> None:
    for body in ("not json", '{"live": "false"}', '{"notificationItems": [{"x": 1}]}'):
        answer = await post_adyen(client.service, body)
        assert answer.status == 400, body
    assert (await table_counts(db))["webhook_event"] == 0


# -- a retry attempt's payment -----------------------------------------------------------------


async def pending_adyen_plan(client: Client, server: AdyenStubServer, card: str) -> str:
    """A plan whose Adyen payment answered ``Pending`` (its attempt UNKNOWN)."""
    server.add_stored_card(card, shopper_reference=CUSTOMER, behaviour="pending")
    await schedule(client, "adyen-fast", [60, 120], attempts=4)
    request = failure(card=card, schedule_code="adyen-fast")
    request.gateway = "adyen"
    plan_id: str = (await record(client, request)).plan.plan_id
    first = await run_retries(client, ahead=timedelta(seconds=61))
    assert (first.plans_claimed, first.outcomes_unknown) == (1, 1)
    return plan_id


async def test_an_authorisation_recovers_the_plan_through_the_retry_job(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    plan_id = await pending_adyen_plan(client, adyen_server, "8415995487230101")
    (answer,) = adyen_server.payments
    assert (await run_retries(client)).plans_claimed == 0  # not due yet
    notification = adyen_server.settle_payment(answer["pspReference"])

    assert await adyen_server.deliver(url(client), notification) == (200, "[accepted]")

    assert [e.type for e in await events(db, plan_id)][-1] == "retry.gateway_notified"
    recovered = await run_retries(client)
    assert recovered.recovered == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED
    assert plan.attempts[-1].gateway_charge_id == answer["pspReference"]
    assert [e.type for e in await events(db, plan_id)][-2:] == [
        "retry.attempted",
        "payment.recovered",
    ]
    assert len(adyen_server.requests) == 1  # the payment was made once, and never asked about


async def test_a_refused_authorisation_is_recorded_as_its_decline(
    client: Client, adyen_server: AdyenStubServer
) -> None:
    plan_id = await pending_adyen_plan(client, adyen_server, "8415995487230102")
    (answer,) = adyen_server.payments
    notification = adyen_server.settle_payment(
        answer["pspReference"], success=False, refusal_code="12", raw_code="51"
    )

    assert await adyen_server.deliver(url(client), notification) == (200, "[accepted]")

    assert (await run_retries(client)).rescheduled == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    attempt = plan.attempts[-1]
    assert attempt.outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert attempt.decline.decline_code == "insufficient_funds"
    assert attempt.decline.visa_response_code == "51"


# -- chargebacks -------------------------------------------------------------------------------


async def test_chargebacks_are_recorded_in_order_and_move_no_money(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)
    recorded = await b.record_payment(
        client, gateway="adyen", transaction_id=payment.psp_reference, items=[("plan", 5000, 0)]
    )
    balances = await snapshot(db)

    def chargeback(code: str, status: str) -> dict[str, Any]:
        return adyen_sign(
            adyen_item(
                code,
                "9915000000000001",
                original_reference=payment.psp_reference,
                value=5000,
                currency="USD",
                reason="Fraudulent Multiple Transactions",
                additional={"disputeStatus": status, "chargebackReasonCode": "10.4"},
            ),
            adyen_server.hmac_key,
        )

    charged_back = chargeback("CHARGEBACK", "Undefended")
    notified = chargeback("NOTIFICATION_OF_CHARGEBACK", "Pending")  # older, arrives late
    for item in (charged_back, notified):
        answer = await post_adyen(client.service, adyen_body(item))
        assert (answer.status, answer.text) == (200, "[accepted]")

    assert [r["status"] for r in await webhook_rows(db, "adyen")] == ["APPLIED", "IGNORED"]
    async with db.connection() as conn:
        (dispute,) = await conn.fetch("SELECT * FROM payment_dispute")
    assert (dispute["dispute_id"], dispute["payment_id"]) == (
        "9915000000000001",
        recorded.payment_id,
    )
    assert (dispute["status"], dispute["gateway_status"], dispute["amount"]) == (
        "OPEN",
        "Undefended",
        5000,
    )
    assert (await outbox_types(db, recorded.payment_id))[-1] == "payment.disputed"
    assert await snapshot(db) == balances
    assert dispute["reason"] == "Fraudulent Multiple Transactions"


async def test_a_notification_that_outruns_adyens_answer_is_read_at_the_next_sync(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    payment = adyen_server.add_payment(amount=5000)
    recorded = await b.record_payment(
        client, gateway="adyen", transaction_id=payment.psp_reference, items=[("plan", 5000, 0)]
    )
    await b.set_policy(client, auto={"USD": 100000})
    refund = await b.create_refund(client, recorded.payment_id, amount=2000)
    delivered: list[tuple[int, str]] = []

    async def notified_before_recorded(request: RefundRequest, outcome: RefundOutcome) -> None:
        # Adyen settled the refund and its notification arrived before the job stored the
        # refund's pspReference: nothing to match it to yet.
        if delivered:
            return
        notification = adyen_server.settle_refund(outcome.gateway_refund_id)
        delivered.append(await adyen_server.deliver(url(client), notification))

    service = client.service
    gateways: dict[str, Gateway] = dict(with_reported_outcomes(service.gateways, service.db))
    job = job_with(service, gateways, after_gateway_call=notified_before_recorded)

    assert (await job.run(JobRequest())).pending_at_gateway == 1
    assert delivered == [(200, "[accepted]")]
    assert [r["status"] for r in await webhook_rows(db, "adyen")] == ["UNMATCHED"]
    assert (await b.get_refund(client, refund.refund_id)).status == RS.REFUND_STATUS_PROCESSING

    # The job's next sync of the pending refund reads the stored notification.
    synced = await job.run(JobRequest(end=datetime.now(UTC) + timedelta(minutes=2)))

    assert synced.succeeded == 1
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert len(adyen_server.requests) == 1  # sent once, never asked about
