"""The circuit breaker in front of a real gateway (the Stripe SDK against the Stripe stub)
inside the billing jobs: it opens on repeated 500s, calls stop reaching Stripe, due work stays
scheduled without using up attempts, and after the cool-down one call goes through and closes
it. The breaker's clock is the test's, so the cool-down passes without waiting."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from refundretry.v1 import refund_pb2, retry_plan_pb2
from repository.database import Database
from service.gateways.breaker import BreakerGateway, BreakerState, breaker_states, with_breakers
from service.jobs.billing_job import JobRequest
from service.jobs.retry_job import RetryJob
from tests.integration import builders as b
from tests.integration.conftest import Client, job_with
from tests.integration.conftest_stripe import (  # noqa: F401  (fixtures)
    MakeStripeGateway,
    make_stripe_gateway,
)
from tests.integration.retry_builders import failure, plan_of, record, schedule
from tests.stripe_server import StripeStubServer

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus
PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
COOLDOWN = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config_overrides(stripe_server: StripeStubServer) -> dict[str, str]:
    return {
        "REFUND_RETRY_STRIPE_API_KEY": stripe_server.api_key,
        "REFUND_RETRY_STRIPE_API_BASE": stripe_server.base_url,
    }


def posts(server: StripeStubServer) -> list[int]:
    return [r.status for r in server.requests if r.method == "POST"]


async def stripe_refunds(
    client: Client, server: StripeStubServer, behaviours: list[str]
) -> list[str]:
    """Approved refunds, each of its own Stripe payment with the stub behaviour given."""
    await b.set_policy(client, auto={"USD": 100000})
    refund_ids = []
    for i, behaviour in enumerate(behaviours):
        intent = f"pi_breaker_{i}_{int(time.time() * 1e6)}"
        server.add_payment(intent, amount=5000, behaviour=behaviour)
        payment = await b.record_payment(
            client, gateway="stripe", transaction_id=intent, items=[("plan", 5000, 0)]
        )
        refund_ids.append((await b.create_refund(client, payment.payment_id)).refund_id)
    return refund_ids


async def test_the_breaker_opens_on_500s_keeps_work_scheduled_and_closes_after_the_cooldown(
    client: Client,
    stripe_server: StripeStubServer,
    make_stripe_gateway: MakeStripeGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.gateways.breaker")
    clock = Clock()
    gateways = with_breakers(
        {"stripe": make_stripe_gateway(max_attempts=1)},
        failure_threshold=2,
        cooldown_seconds=COOLDOWN,
        clock=clock,
    )
    job = job_with(client.service, dict(gateways), concurrency=1)  # one call at a time
    first, second, third = await stripe_refunds(
        client, stripe_server, ["fail_with_500:1", "fail_with_500:1", "succeed"]
    )

    # Two 500s (outcome unknown: the refund may exist) open the breaker; the third refund is
    # not sent at all, and its attempt is given back.
    run = await job.run(JobRequest())
    assert (run.unknown, run.retries_scheduled, run.failed) == (2, 1, 0)
    assert posts(stripe_server) == [500, 500]
    assert breaker_states(gateways)["stripe"].state is BreakerState.OPEN
    held = await b.get_refund(client, third)
    assert held.status == RS.REFUND_STATUS_PROCESSING
    (detail,) = held.details
    assert (detail.status, detail.attempt_count) == (DS.REFUND_DETAIL_STATUS_RETRY_SCHEDULED, 0)
    assert detail.last_error_code == "circuit_open"
    assert "circuit breaker of gateway stripe is open" in detail.last_error_message

    # While it is open, due work is looked at, nothing reaches Stripe, nothing fails, and the
    # open attempts stay open (they are replayed with their keys later).
    later = datetime.now(UTC) + timedelta(minutes=5)
    run = await job.run(JobRequest(end=later))
    assert (run.claimed, run.not_attempted, run.retries_scheduled, run.failed) == (3, 2, 1, 0)
    assert posts(stripe_server) == [500, 500]
    for refund_id in (first, second, third):
        assert (await b.get_refund(client, refund_id)).status == RS.REFUND_STATUS_PROCESSING
    unknown = (await b.get_refund(client, first)).details[0]
    assert (unknown.status, unknown.attempt_count) == (DS.REFUND_DETAIL_STATUS_PROCESSING, 1)

    # After the cool-down one call goes through as a probe; Stripe answers, the breaker closes
    # and the rest follow. Every refund is made once, with its first attempt's key.
    clock.now += COOLDOWN
    assert breaker_states(gateways)["stripe"].state is BreakerState.HALF_OPEN
    run = await job.run(JobRequest(end=later))
    assert (run.succeeded, run.failed) == (3, 0)
    assert breaker_states(gateways)["stripe"].state is BreakerState.CLOSED
    assert posts(stripe_server) == [500, 500, 200, 200, 200]
    keys = sorted(r["metadata"]["attempt"] for r in stripe_server.refunds)
    assert keys == ["1", "1", "1"]
    for refund_id in (first, second, third):
        done = await b.get_refund(client, refund_id)
        assert done.status == RS.REFUND_STATUS_SUCCEEDED
        assert done.details[0].attempt_count == 1
    actions = [
        a for r in caplog.records if (a := getattr(r, "action", "")).startswith("gateway_breaker")
    ]
    assert actions == [
        "gateway_breaker.opened",
        "gateway_breaker.half_open",
        "gateway_breaker.closed",
    ]


async def test_an_open_breaker_leaves_due_retries_scheduled_until_it_closes(
    client: Client,
    db: Database,
    stripe_server: StripeStubServer,
    make_stripe_gateway: MakeStripeGateway,
) -> None:
    """While Stripe's breaker is open the retry job does not touch Stripe's due plans (no
    attempt, no event, the time unchanged); half-open, it claims one plan as the probe; closed
    again, the rest."""
    now = [1000.0]
    gateways = with_breakers(
        {"stripe": make_stripe_gateway()},
        failure_threshold=1,
        cooldown_seconds=COOLDOWN,
        clock=lambda: now[0],
    )
    stripe = gateways["stripe"]
    assert isinstance(stripe, BreakerGateway)
    breaker = stripe.breaker
    admitted = breaker.admit()
    assert admitted is not None
    breaker.record(admitted, failed=True)  # Stripe just failed: open
    await schedule(client, "stripe-fast", [60, 120], attempts=4)
    plan_ids = []
    for card in ("pm_visa_ok", "pm_visa_two"):
        stripe_server.add_card(card, customer="cus_9")
        request = failure(card=card, schedule_code="stripe-fast", at=datetime.now(UTC))
        request.gateway = "stripe"
        plan_ids.append((await record(client, request)).plan.plan_id)
    plan_id = plan_ids[0]
    before = await plan_of(client, plan_id)
    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    job = RetryJob(db, gateways, context)
    due = datetime.now(UTC) + timedelta(seconds=61)

    summary = await job.run(due_by=due)

    assert (summary.claimed, summary.errors) == (0, 0)
    assert stripe_server.requests == []
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert plan.attempt_count == 1  # only the original failure
    assert len(plan.attempts) == 1
    assert plan.next_attempt_time == before.next_attempt_time

    now[0] += COOLDOWN + 1  # half-open: one plan is claimed, the probe; it closes the breaker
    assert breaker.snapshot().state is BreakerState.HALF_OPEN
    summary = await job.run(due_by=due)
    assert (summary.claimed, summary.recovered, summary.not_attempted) == (1, 1, 0)
    assert breaker.snapshot().state is BreakerState.CLOSED
    summary = await job.run(due_by=due)  # closed: the rest of the due work
    assert (summary.claimed, summary.recovered) == (1, 1)
    for plan_id in plan_ids:
        assert (await plan_of(client, plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert len(stripe_server.payment_intents) == 2


async def test_the_service_puts_every_gateway_behind_a_breaker(client: Client) -> None:
    states = breaker_states(client.service.gateways)
    assert set(states) == set(client.service.gateways) >= {"sandbox", "stripe"}
    assert all(s.state is BreakerState.CLOSED for s in states.values())
