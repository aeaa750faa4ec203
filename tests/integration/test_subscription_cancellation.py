"""A cancelled subscription's unpaid invoices are not collected any more: subscription.cancelled
cancels its open retry plans, and a failure of its payments handled later starts none (the two
consumer queues are independent). Stripe's default, "to prevent unexpected payment attempts
after the customer has canceled"."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from consumers import handlers
from consumers.codec import JSON
from consumers.failures import RetryLater
from refundretry.v1 import billing_events_pb2 as ev
from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import retry_plan_pb2
from repository import inbox
from repository.database import Database
from service import cancellations
from service.auth import Principal, Role
from service.domain.proration import CancellationPolicy
from service.errors import InvalidArgument
from service.gateways.base import ChargeOutcome, ChargeRequest
from service.server import Service
from tests.integration import builders as b
from tests.integration import event_builders as e
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import Broker, broker, rabbitmq_vhost  # noqa: F401
from tests.integration.event_builders import live, plans_of  # noqa: F401  (fixture)
from tests.integration.retry_builders import (
    events,
    failure,
    fast_schedule,  # noqa: F401  (autouse fixture)
    plan_of,
    record,
    retry_job,
    rpc_error,
    run_retries,
)
from tests.integration.test_dunning import NOTIFY, create_campaign

PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
CANCELLER = Principal("consumer:subscription.cancelled", frozenset({Role.REFUND_CREATE}))


def new_subscription() -> str:
    return f"sub_{uuid.uuid4().hex[:10]}"


def cancellation(subscription_id: str, customer_id: str = "") -> cancellations.Cancellation:
    return cancellations.Cancellation(
        subscription_id=subscription_id,
        cancel_at=datetime.now(UTC) - timedelta(hours=1),
        policy=CancellationPolicy.NONE,
        customer_id=customer_id,
    )


async def failed(live: Service, broker: Broker, client: Client, subscription_id: str) -> Any:
    """A payment.failed of the subscription, handled: its retry plan."""
    event = e.payment_failed(subscription_id=subscription_id)
    await broker.publish("payment.failed", event)
    row = await e.handled(live, "payment.failed", event.event_id)
    assert row["outcome"] == "APPLIED"
    [plan] = await plans_of(client, event.payment_id)
    return plan


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return broker.settings()


async def test_a_cancellation_stops_retrying_the_subscriptions_unpaid_invoices(
    live: Service, broker: Broker, client: Client, db: Database
) -> None:
    subscription = new_subscription()
    active = await failed(live, broker, client, subscription)
    paused = await failed(live, broker, client, subscription)
    await client.call(
        "t-ops",
        "PauseRetryPlan",
        pb.PauseRetryPlanRequest(request_id=b.request_id(), plan_id=paused.plan_id),
    )
    other = await failed(live, broker, client, new_subscription())

    cancel = e.subscription_cancelled(subscription, datetime.now(UTC) - timedelta(hours=1))
    await broker.publish("subscription.cancelled", cancel, content_type=JSON)
    row = await e.handled(live, "subscription.cancelled", cancel.event_id)

    # Nothing to refund (no payment of it was recorded), but collection stopped: applied.
    assert row["outcome"] == "APPLIED"
    for plan in (active, paused):
        ended = await plan_of(client, plan.plan_id)
        assert ended.status == PS.RETRY_PLAN_STATUS_CANCELED
        assert ended.status_reason.startswith(f"subscription {subscription} was cancelled")
        last = (await events(db, plan.plan_id))[-1]
        assert (last.type, last.actor) == ("retry.canceled", "consumer:subscription.cancelled")
        assert last.retry_plan_changed.plan.status == PS.RETRY_PLAN_STATUS_CANCELED
        audit = await client.call(
            "t-reader",
            "ListAuditEvents",
            pb.ListAuditEventsRequest(entity_type="retry_plan", entity_id=plan.plan_id),
        )
        assert audit.audit_events[-1].action == "retry.canceled"
    assert (await plan_of(client, other.plan_id)).status == PS.RETRY_PLAN_STATUS_ACTIVE
    stopped = await client.call(
        "t-reader",
        "ListAuditEvents",
        pb.ListAuditEventsRequest(entity_type="subscription", entity_id=subscription),
    )
    assert [a.action for a in stopped.audit_events] == ["subscription.collection_stopped"]
    # Published too, in the same transaction: billing systems learn that collection stopped,
    # and which plans it ended; WatchEvents' subscription filter finds it.
    [published] = await events(db, subscription)
    assert (published.type, published.actor) == (
        "subscription.collection_stopped",
        "consumer:subscription.cancelled",
    )
    body = published.subscription_collection_stopped
    assert body.subscription_id == subscription
    assert body.cancellation_event_id == cancel.event_id
    assert body.cancel_time.ToDatetime(UTC) == cancel.cancel_time.ToDatetime(UTC)
    assert sorted(body.canceled_plan_ids) == sorted([active.plan_id, paused.plan_id])
    async with db.connection() as conn:
        filed_under = await conn.fetchval(
            "SELECT subscription_id FROM outbox WHERE aggregate_id = $1", subscription
        )
    assert filed_under == subscription

    # The billing job charges the other subscription's invoice, and neither of these.
    await run_retries(client, ahead=timedelta(days=30))
    assert (await plan_of(client, other.plan_id)).attempt_count == 2
    for plan in (active, paused):
        assert (await plan_of(client, plan.plan_id)).attempt_count == 1


async def test_a_failure_handled_after_its_subscriptions_cancellation_starts_no_retries(
    live: Service, broker: Broker, client: Client
) -> None:
    subscription = new_subscription()
    cancel = e.subscription_cancelled(subscription, datetime.now(UTC) - timedelta(hours=1))
    await broker.publish("subscription.cancelled", cancel)
    row = await e.handled(live, "subscription.cancelled", cancel.event_id)
    assert row["outcome"] == "APPLIED"  # the cancellation is kept

    late = e.payment_failed(subscription_id=subscription)
    await broker.publish("payment.failed", late)
    row = await e.handled(live, "payment.failed", late.event_id)
    assert row["outcome"] == "IGNORED"  # acknowledged, not dead-lettered
    assert f"subscription {subscription!r} was cancelled" in row["note"]
    assert await plans_of(client, late.payment_id) == []

    # The RPC says so too, and writes nothing.
    request = failure(subscription_id=subscription)
    error = await rpc_error(record(client, request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "start no retries" in (error.details() or "")
    assert await plans_of(client, request.payment_id) == []
    # Another subscription's failure, and one of no subscription, still start plans.
    for subscription_id in (new_subscription(), ""):
        started = await record(client, failure(subscription_id=subscription_id))
        assert started.plan.status == PS.RETRY_PLAN_STATUS_ACTIVE

    # Another cancellation of it (another event id) changes nothing more: ignored.
    again = e.subscription_cancelled(subscription, datetime.now(UTC))
    await broker.publish("subscription.cancelled", again)
    row = await e.handled(live, "subscription.cancelled", again.event_id)
    assert row["outcome"] == "IGNORED"
    assert "collection was stopped before (no open retry plan)" in row["note"]
    [published] = await events(live.db, subscription)
    assert published.subscription_collection_stopped.cancellation_event_id == cancel.event_id
    assert list(published.subscription_collection_stopped.canceled_plan_ids) == []


async def test_a_cancellation_whose_refund_must_wait_has_stopped_collection_already(
    client: Client, service: Service
) -> None:
    """The cancellation names a payment whose payment.succeeded is still queued: the refund
    waits (the handler asks for a later delivery, and the inbox keeps no row), but the
    retries stopped at once, and the later delivery that refunds cancels nothing twice."""
    subscription = new_subscription()
    plan = (await record(client, failure(subscription_id=subscription))).plan
    payment_id = f"pay_{uuid.uuid4().hex[:8]}"
    event = e.subscription_cancelled(
        subscription,
        datetime.now(UTC) - timedelta(days=1),
        ev.CANCELLATION_REFUND_POLICY_FULL,
        payment_id=payment_id,
    )
    event.customer_id = "cus_9"  # failure()'s customer
    spec = handlers.SPECS[handlers.SUBSCRIPTION_CANCELLED]
    context = handlers.Context(client.service.billing_job.retry_job.context)  # type: ignore[union-attr]

    async def deliver() -> handlers.Handled:
        entry = inbox.Entry(spec.event_type, event.event_id, spec.event_type, datetime.now(UTC))
        db = inbox.InboxDatabase(service.db, entry)
        handled = await spec.handler(context, db, event.event_id, event)
        assert db.claimed == handled.applied
        return handled

    with pytest.raises(RetryLater):
        await deliver()
    assert (await plan_of(client, plan.plan_id)).status == PS.RETRY_PLAN_STATUS_CANCELED
    assert await e.inbox_row(service.db, spec.event_type, event.event_id) is None

    await b.record_payment(
        client, payment_id=payment_id, subscription_id=subscription, customer_id="cus_9"
    )
    handled = await deliver()
    assert handled.applied
    assert "refund_id" in handled.ids
    assert "collection was stopped before (no open retry plan)" in handled.note
    assert await e.inbox_row(service.db, spec.event_type, event.event_id) is not None
    canceled = [x for x in await events(service.db, plan.plan_id) if x.type == "retry.canceled"]
    assert len(canceled) == 1


async def test_a_cancellation_naming_another_customer_changes_nothing(
    client: Client, service: Service
) -> None:
    subscription = new_subscription()
    plan = (await record(client, failure(subscription_id=subscription))).plan
    with pytest.raises(InvalidArgument) as raised:
        await cancellations.stop_collection(
            service.db, CANCELLER, cancellation(subscription, customer_id="cus_someone_else")
        )
    assert raised.value.field == "customer_id"
    assert (await plan_of(client, plan.plan_id)).status == PS.RETRY_PLAN_STATUS_ACTIVE
    # Not kept either: a failure of the subscription still starts retries.
    assert (await record(client, failure(subscription_id=subscription))).plan.status == (
        PS.RETRY_PLAN_STATUS_ACTIVE
    )


async def test_a_failure_and_its_subscriptions_cancellation_at_once_leave_nothing_to_retry(
    client: Client, service: Service
) -> None:
    """Whichever commits first, no plan of the subscription stays open: either the failure
    waits for the cancellation and is refused, or its plan commits first and is canceled."""
    subscriptions = [new_subscription() for _ in range(12)]

    async def fail(subscription_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # FAILED_PRECONDITION when later
            await record(client, failure(subscription_id=subscription_id))

    async def cancel(subscription_id: str) -> None:
        await cancellations.stop_collection(service.db, CANCELLER, cancellation(subscription_id))

    await asyncio.gather(*(step(s) for s in subscriptions for step in (fail, cancel)))
    async with service.db.connection() as conn:
        open_plans = await conn.fetchval(
            "SELECT count(*) FROM retry_plan WHERE subscription_id = ANY($1::text[]) "
            "AND status IN ('ACTIVE', 'PAUSED')",
            subscriptions,
        )
        all_plans = await conn.fetchval(
            "SELECT count(*) FROM retry_plan WHERE subscription_id = ANY($1::text[])",
            subscriptions,
        )
    assert open_plans == 0
    assert all_plans <= len(subscriptions)


async def test_a_plan_canceled_while_its_attempt_is_charged_records_that_attempt(
    client: Client, db: Database, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription is cancelled while the billing job charges its invoice: the plan is
    CANCELED, its reason names the attempt in flight, and the job still records what the
    gateway did. Here it succeeded: the job says so as an error for a person."""
    subscription = new_subscription()
    plan = (await record(client, failure(outcome="succeed", subscription_id=subscription))).plan

    async def cancel_meanwhile(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        await cancellations.stop_collection(service.db, CANCELLER, cancellation(subscription))

    job = retry_job(client, db, after_charge=cancel_meanwhile)
    summary = await job.run(due_by=datetime.now(UTC) + timedelta(minutes=2))

    assert (summary.settled_meanwhile, summary.lease_lost, summary.recovered) == (1, 0, 0)
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_CANCELED
    assert "; attempt 2 was being charged (key " in done.status_reason
    assert done.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED  # not left OPEN
    said = [r for r in caplog.records if getattr(r, "action", "") == "retry_job.settled_meanwhile"]
    assert [r.levelname for r in said] == ["ERROR"]
    assert "collected although the plan is CANCELED" in said[0].getMessage()


async def test_a_cancelled_subscriptions_customer_gets_no_more_dunning_notices(
    client: Client, service: Service
) -> None:
    await create_campaign(
        client,
        "after-cancel",
        [(0, NOTIFY, "failed"), (1, NOTIFY, "reminder")],
        segment={"plan": "after-cancel"},
    )
    plans = {}
    for name in ("cancelled", "kept"):
        request = failure(
            subscription_id=new_subscription(),
            at=datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2),
            outcome="decline:insufficient_funds",
        )
        request.metadata["plan"] = "after-cancel"
        plans[name] = (await record(client, request)).plan
    await cancellations.stop_collection(
        service.db, CANCELLER, cancellation(plans["cancelled"].subscription_id)
    )
    await asyncio.sleep(2.2)  # day 1 begins: both plans' reminders are due

    summary = await b.run_job(client)
    assert summary.payment_retries.dunning_steps == 1  # the kept plan's
    steps = {
        n: [s.template for s in (await plan_of(client, p.plan_id)).dunning_steps]
        for n, p in plans.items()
    }
    assert steps == {"cancelled": ["failed"], "kept": ["failed", "reminder"]}
