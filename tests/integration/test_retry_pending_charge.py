"""A Stripe charge that answers ``processing`` is read again, not created again: replaying the
create call with its idempotency key would only replay Stripe's first answer, and the plan would
wait for nothing until an operator stepped in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refundretry.v1 import retry_plan_pb2
from repository.database import Database
from tests.integration.conftest import Client
from tests.integration.conftest_stripe import (  # noqa: F401  (fixtures)
    make_stripe_gateway,
)
from tests.integration.retry_builders import events, plan_of, processing_plan, run_retries
from tests.stripe_server import RecordedRequest, StripeStubServer

PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
LATER = timedelta(minutes=5)  # past the first attempt (60 s) and the unknown-outcome replay


@pytest.fixture
def config_overrides(stripe_server: StripeStubServer) -> dict[str, str]:
    return {
        "REFUND_RETRY_STRIPE_API_KEY": stripe_server.api_key,
        "REFUND_RETRY_STRIPE_API_BASE": stripe_server.base_url,
    }


def intent_calls(server: StripeStubServer, method: str) -> list[RecordedRequest]:
    return [
        r
        for r in server.requests
        if r.method == method and r.path.startswith("/v1/payment_intents")
    ]


async def test_a_processing_charge_that_succeeds_later_recovers_the_plan(
    client: Client, stripe_server: StripeStubServer, db: Database
) -> None:
    plan_id = await processing_plan(client, stripe_server)
    (intent,) = stripe_server.payment_intents
    pending = await plan_of(client, plan_id)
    assert pending.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert pending.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_UNKNOWN
    assert pending.attempts[-1].gateway_charge_id == intent["id"]

    # Still processing: read again, still pending, nothing created.
    assert (await run_retries(client, ahead=LATER)).outcomes_unknown == 1
    stripe_server.settle_payment_intent(intent["id"], succeed=True)
    assert (await run_retries(client, ahead=LATER)).recovered == 1

    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert plan.attempt_count == 2  # one attempt, however many times it was read
    assert [a.outcome for a in plan.attempts[1:]] == [AO.ATTEMPT_OUTCOME_SUCCEEDED]
    assert plan.attempts[-1].gateway_charge_id == intent["id"]
    assert len(intent_calls(stripe_server, "POST")) == 1
    reads = intent_calls(stripe_server, "GET")
    assert [r.path for r in reads] == [f"/v1/payment_intents/{intent['id']}"] * 2
    assert [e.type for e in await events(db, plan_id)][-2:] == [
        "retry.attempted",
        "payment.recovered",
    ]


async def test_a_processing_charge_that_fails_later_is_declined_and_rescheduled(
    client: Client, stripe_server: StripeStubServer
) -> None:
    plan_id = await processing_plan(client, stripe_server)
    (intent,) = stripe_server.payment_intents
    stripe_server.settle_payment_intent(intent["id"], succeed=False)
    assert (await run_retries(client, ahead=LATER)).rescheduled == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert plan.attempts[-1].gateway_charge_id == intent["id"]
    assert plan.next_attempt_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    assert len(intent_calls(stripe_server, "POST")) == 1
