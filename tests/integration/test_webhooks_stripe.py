"""Stripe webhooks on the HTTP port: signed as Stripe signs them, applied once, in order of the
refund state machine, with the same workflows and events as outcomes learned by polling."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from refundretry.v1 import events_pb2, refund_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.conftest_stripe import (  # noqa: F401  (fixtures)
    make_stripe_gateway,
)
from tests.integration.retry_builders import events, plan_of, processing_plan, run_retries
from tests.integration.webhook_builders import (
    STRIPE_SECRET,
    audit_actions,
    outbox_types,
    post_stripe,
    snapshot,
    stripe_dispute,
    stripe_event,
    stripe_refund,
    stripe_signature,
    table_counts,
    webhook_rows,
)
from tests.stripe_server import StripeStubServer

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus
PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome


@pytest.fixture
def config_overrides(stripe_server: StripeStubServer) -> dict[str, str]:
    return {
        "REFUND_RETRY_STRIPE_API_KEY": stripe_server.api_key,
        "REFUND_RETRY_STRIPE_API_BASE": stripe_server.base_url,
        "REFUND_RETRY_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    }


async def pending_refund(
    client: Client, server: StripeStubServer, *, behaviour: str = "pending_then_succeed"
) -> tuple[str, str, str]:
    """A refund of a Stripe payment that the billing job left pending at Stripe:
    (refund id, Stripe refund id, payment id)."""
    intent = f"pi_{int(time.time() * 1e6)}"
    server.add_payment(intent, amount=10000, behaviour=behaviour)
    payment = await b.record_payment(
        client, gateway="stripe", transaction_id=intent, items=[("plan", 9000, 1000)]
    )
    await b.set_policy(client, auto={"USD": 100000})
    refund = await b.create_refund(client, payment.payment_id, amount=2500)
    summary = await b.run_job(client)
    assert summary.refunds_pending_at_gateway == 1
    pending = await b.get_refund(client, refund.refund_id)
    assert pending.status == RS.REFUND_STATUS_PROCESSING
    stripe_id = pending.details[0].gateway_refund_id
    assert stripe_id.startswith("re_")
    return refund.refund_id, stripe_id, payment.payment_id


async def test_refund_updated_succeeded_finishes_a_pending_refund_with_its_journal_and_event(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    refund_id, stripe_id, payment_id = await pending_refund(client, stripe_server)
    settled = stripe_server.settle(stripe_id)  # Stripe's refund object, now succeeded
    body = stripe_event("refund.updated", settled)

    answer = await post_stripe(client.service, body)

    assert answer.status == 200
    assert json.loads(answer.text)["outcome"] == "applied"
    done = await b.get_refund(client, refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].status == DS.REFUND_DETAIL_STATUS_SUCCEEDED
    assert done.details[0].attempt_count == 1
    payment = await b.get_payment(client, payment_id)
    assert payment.refunded_amount.minor_units == 2500
    assert payment.pending_refund_amount.minor_units == 0
    async with db.connection() as conn:
        lines = await conn.fetch(
            "SELECT l.account, l.debit, l.credit FROM journal_entry j"
            " JOIN ledger_line l USING (journal_id) WHERE j.refund_id = $1 ORDER BY l.line_no",
            refund_id,
        )
    assert sum(r["debit"] for r in lines) == sum(r["credit"] for r in lines) == 2500
    assert [r["account"] for r in lines if r["credit"]] == ["gateway_clearing:stripe"]
    assert (await outbox_types(db, refund_id))[-1] == "refund.succeeded"
    assert (await audit_actions(db, refund_id))[-1] == ("webhook:stripe", "refund.succeeded")
    # The billing job has nothing left to ask Stripe.
    gets = len([r for r in stripe_server.requests if r.method == "GET"])
    assert (
        await b.run_job(client, end=datetime.now(UTC) + timedelta(hours=1))
    ).refunds_claimed == 0
    assert len([r for r in stripe_server.requests if r.method == "GET"]) == gets
    report = await client.call("t-reader", "Reconcile", pb.ReconcileRequest())
    assert report.balanced, report.issues


async def test_the_same_event_twice_is_applied_once(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    refund_id, stripe_id, _ = await pending_refund(client, stripe_server)
    body = stripe_event("charge.refund.updated", stripe_server.settle(stripe_id))
    assert (await post_stripe(client.service, body)).status == 200
    before, moved = await table_counts(db), await snapshot(db)

    again = await post_stripe(client.service, body)

    assert again.status == 200
    assert json.loads(again.text)["outcome"] == "duplicate"
    assert await table_counts(db) == before
    assert await snapshot(db) == moved
    assert (await outbox_types(db, refund_id)).count("refund.succeeded") == 1


@pytest.mark.parametrize(
    "case", ["tampered body", "wrong secret", "no signature", "old signature", "not hex"]
)
async def test_a_bad_signature_is_refused_with_401_and_changes_nothing(
    client: Client, db: Database, stripe_server: StripeStubServer, case: str
) -> None:
    refund_id, stripe_id, _ = await pending_refund(client, stripe_server)
    body = stripe_event("refund.updated", stripe_server.settle(stripe_id))
    before, state = await table_counts(db), await snapshot(db)
    signature = stripe_signature(body)
    sent = body
    if case == "tampered body":  # signed, then the amount changed on the way
        sent = body.replace('"amount": 2500', '"amount": 2501')
        assert sent != body
    elif case == "wrong secret":
        signature = stripe_signature(body, secret="whsec_someone_else")
    elif case == "no signature":
        signature = ""
    elif case == "old signature":  # a request captured an hour ago, sent again
        signature = stripe_signature(body, at=int(time.time()) - 3600)
    else:
        signature = "t=1,v1=zz"

    answer = await post_stripe(client.service, sent, signature)

    assert answer.status == 401, answer.text
    assert await table_counts(db) == before
    assert await snapshot(db) == state
    assert (await b.get_refund(client, refund_id)).status == RS.REFUND_STATUS_PROCESSING


async def test_an_older_pending_event_after_succeeded_is_stored_and_ignored(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    refund_id, stripe_id, payment_id = await pending_refund(client, stripe_server)
    pending = stripe_refund(stripe_id, "pending", amount=2500)
    succeeded = stripe_server.settle(stripe_id)
    newer = stripe_event("refund.updated", succeeded, event_id="evt_newer")
    older = stripe_event("refund.updated", pending, event_id="evt_older")
    failed = stripe_event(
        "refund.failed",
        stripe_refund(stripe_id, "failed", amount=2500, failure_reason="declined"),
        event_id="evt_failed",
    )

    assert (await post_stripe(client.service, newer)).status == 200
    late = await post_stripe(client.service, older)
    after_success = await post_stripe(client.service, failed)

    assert late.status == after_success.status == 200
    rows = {r["event_id"]: r for r in await webhook_rows(db, "stripe")}
    assert rows["evt_newer"]["status"] == "APPLIED"
    assert rows["evt_older"]["status"] == "IGNORED"
    assert rows["evt_failed"]["status"] == "IGNORED"
    assert "backwards" in rows["evt_failed"]["note"]
    done = await b.get_refund(client, refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert (await b.get_payment(client, payment_id)).refunded_amount.minor_units == 2500
    assert (await outbox_types(db, refund_id)).count("refund.failed") == 0


async def test_refund_failed_fails_the_refund_and_gives_the_amount_back(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    refund_id, stripe_id, payment_id = await pending_refund(
        client, stripe_server, behaviour="pending_then_fail"
    )
    failed = stripe_server.settle(stripe_id)
    assert failed["status"] == "failed"

    answer = await post_stripe(client.service, stripe_event("refund.failed", failed))

    assert answer.status == 200
    refund = await b.get_refund(client, refund_id)
    assert refund.status == RS.REFUND_STATUS_FAILED
    assert refund.details[0].last_error_code == "card_expired_or_canceled"
    payment = await b.get_payment(client, payment_id)
    assert payment.pending_refund_amount.minor_units == 0
    assert payment.refunded_amount.minor_units == 0
    assert (await outbox_types(db, refund_id))[-1] == "refund.failed"


async def test_an_event_about_an_unknown_refund_is_stored_as_unmatched_and_reported(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.webhooks")
    body = stripe_event("refund.updated", stripe_refund("re_nobody_knows", "succeeded"))
    before = await snapshot(db)

    answer = await post_stripe(client.service, body)

    assert answer.status == 200
    assert json.loads(answer.text)["outcome"] == "unmatched"
    (row,) = await webhook_rows(db, "stripe")
    assert (row["object_id"], row["status"]) == ("re_nobody_knows", "UNMATCHED")
    assert await snapshot(db) == before
    (line,) = [r for r in caplog.records if getattr(r, "action", "") == "webhook.unmatched"]
    assert line.levelno == logging.WARNING
    assert "re_nobody_knows" in line.getMessage()


async def test_an_event_type_the_service_does_not_use_is_stored_and_ignored(
    client: Client, db: Database
) -> None:
    body = stripe_event("customer.created", {"id": "cus_1", "object": "customer"})
    answer = await post_stripe(client.service, body)
    assert answer.status == 200
    (row,) = await webhook_rows(db, "stripe")
    assert (row["event_type"], row["status"]) == ("customer.created", "IGNORED")


async def test_a_signed_body_that_is_no_event_is_a_400(client: Client, db: Database) -> None:
    answer = await post_stripe(client.service, '["not", "an", "event"]')
    assert answer.status == 400
    assert (await table_counts(db))["webhook_event"] == 0


# -- a retry attempt's charge ------------------------------------------------------------------


async def test_payment_intent_succeeded_makes_the_plan_due_and_the_job_records_the_recovery(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    plan_id = await processing_plan(client, stripe_server)
    (intent,) = stripe_server.payment_intents
    assert (await run_retries(client)).plans_claimed == 0  # not due yet: read again in 30 s
    settled = stripe_server.settle_payment_intent(intent["id"], succeed=True)
    settled["latest_charge"] = settled["latest_charge"]["id"]  # as a webhook carries it

    answer = await post_stripe(client.service, stripe_event("payment_intent.succeeded", settled))

    assert answer.status == 200
    assert json.loads(answer.text)["outcome"] == "applied"
    due = await plan_of(client, plan_id)
    assert due.next_attempt_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    types = [e.type for e in await events(db, plan_id)]
    assert types[-1] == "retry.gateway_notified"
    assert (await audit_actions(db, plan_id))[-1] == ("webhook:stripe", "retry.gateway_notified")
    # The job reads the charge now, through its normal path.
    assert (await run_retries(client)).recovered == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED
    assert [e.type for e in await events(db, plan_id)][-2:] == [
        "retry.attempted",
        "payment.recovered",
    ]
    assert len([r for r in stripe_server.requests if r.method == "POST"]) == 1

    # The same outcome told again after it was recorded: stored, nothing to do.
    late = stripe_event("payment_intent.succeeded", settled)
    assert json.loads((await post_stripe(client.service, late)).text)["outcome"] == "ignored"


async def test_payment_intent_failed_makes_the_plan_due_and_the_job_records_the_decline(
    client: Client, stripe_server: StripeStubServer
) -> None:
    plan_id = await processing_plan(client, stripe_server)
    (intent,) = stripe_server.payment_intents
    failed = stripe_server.settle_payment_intent(
        intent["id"], succeed=False, decline_code="insufficient_funds"
    )
    failed["latest_charge"] = failed["latest_charge"]["id"]
    body = stripe_event("payment_intent.payment_failed", failed)
    assert (await post_stripe(client.service, body)).status == 200

    assert (await run_retries(client)).rescheduled == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert plan.attempts[-1].decline.decline_code == "insufficient_funds"


async def test_a_payment_intent_of_no_retry_attempt_is_unmatched(
    client: Client, db: Database
) -> None:
    intent = {"id": "pi_elsewhere", "object": "payment_intent", "status": "succeeded"}
    answer = await post_stripe(client.service, stripe_event("payment_intent.succeeded", intent))
    assert answer.status == 200
    (row,) = await webhook_rows(db, "stripe")
    assert row["status"] == "UNMATCHED"


# -- disputes ----------------------------------------------------------------------------------


async def test_a_dispute_is_recorded_with_its_event_and_moves_only_forward(
    client: Client, db: Database
) -> None:
    payment = await b.record_payment(
        client, gateway="stripe", transaction_id="pi_disputed", items=[("plan", 4500, 500)]
    )
    balances = await snapshot(db)
    opened = stripe_dispute("dp_1", "needs_response", charge="ch_x", payment_intent="pi_disputed")
    lost = stripe_dispute("dp_1", "lost", charge="ch_x", payment_intent="pi_disputed")

    created = await post_stripe(client.service, stripe_event("charge.dispute.created", opened))
    closed = await post_stripe(client.service, stripe_event("charge.dispute.closed", lost))
    late = await post_stripe(client.service, stripe_event("charge.dispute.created", opened))

    assert created.status == closed.status == late.status == 200
    assert [r["status"] for r in await webhook_rows(db, "stripe")] == [
        "APPLIED",
        "APPLIED",
        "IGNORED",
    ]
    async with db.connection() as conn:
        (dispute,) = await conn.fetch("SELECT * FROM payment_dispute")
    assert (dispute["payment_id"], dispute["amount"], dispute["currency"]) == (
        payment.payment_id,
        5000,
        "USD",
    )
    assert (dispute["status"], dispute["gateway_status"], dispute["reason"]) == (
        "LOST",
        "lost",
        "fraudulent",
    )
    assert await outbox_types(db, payment.payment_id) == [
        "payment.recorded",
        "payment.disputed",
        "payment.dispute_updated",
    ]
    last = await last_event(db, payment.payment_id)
    disputed = last.payment_disputed
    assert disputed.status == events_pb2.DISPUTE_STATUS_LOST
    assert (disputed.dispute_id, disputed.customer_id) == ("dp_1", payment.customer_id)
    assert disputed.amount.minor_units == 5000
    assert await snapshot(db) == balances  # no money moves


async def test_a_dispute_of_an_unknown_payment_is_unmatched(client: Client, db: Database) -> None:
    dispute = stripe_dispute("dp_2", "needs_response", charge="ch_unknown", payment_intent=None)
    answer = await post_stripe(client.service, stripe_event("charge.dispute.created", dispute))
    assert answer.status == 200
    (row,) = await webhook_rows(db, "stripe")
    assert (row["status"], row["object_id"]) == ("UNMATCHED", "dp_2")


async def last_event(db: Database, aggregate_id: str) -> Any:
    async with db.connection() as conn:
        payload = await conn.fetchval(
            "SELECT payload FROM outbox WHERE aggregate_id = $1 ORDER BY position DESC LIMIT 1",
            aggregate_id,
        )
    event = events_pb2.Event()
    event.ParseFromString(payload)
    return event
