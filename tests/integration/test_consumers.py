"""The billing system's events through RabbitMQ (its own vhost) into the real service and
database: each event type in both encodings, with its effect seen in the database and through
gRPC; the same message twice has one effect."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumers.codec import JSON, PROTOBUF
from refundretry.v1 import billing_events_pb2 as ev
from refundretry.v1 import refund_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from service.server import Service
from tests.integration import builders as b
from tests.integration import event_builders as e
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import Broker, broker, rabbitmq_vhost  # noqa: F401
from tests.integration.event_builders import live, plans_of  # noqa: F401  (fixture)
from tests.integration.retry_builders import plan_of

PS = retry_plan_pb2.RetryPlanStatus
RS = refund_pb2.RefundStatus
ENCODINGS = pytest.mark.parametrize("encoding", [PROTOBUF, JSON])


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return broker.settings()


async def refunds_of(client: Client, payment_id: str) -> list[Any]:
    response = await client.call(
        "t-reader", "ListRefunds", pb.ListRefundsRequest(payment_id=payment_id)
    )
    return list(response.refunds)


# -- payment.failed -----------------------------------------------------------------------------


@ENCODINGS
async def test_payment_failed_starts_a_retry_plan_as_the_rpc_does(
    live: Service, broker: Broker, client: Client, encoding: str
) -> None:
    failed_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    event = e.payment_failed(at=failed_at)
    await broker.publish("payment.failed", event, content_type=encoding)

    row = await e.handled(live, "payment.failed", event.event_id)
    assert (row["outcome"], row["event_type"]) == ("APPLIED", "payment.failed")
    [plan] = await plans_of(client, event.payment_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert plan.attempt_count == 1
    assert plan.amount == b.usd(4900)
    assert [m.payment_method_id for m in plan.payment_methods] == ["pm_visa_4242", "pm_mc_5454"]
    assert plan.attempts[0].decline.decline_code == "insufficient_funds"

    # The same failure through RecordPaymentFailure decides the same.
    request = pb.RecordPaymentFailureRequest(
        request_id=b.request_id(),
        payment_id=event.payment_id + "-rpc",
        customer_id=event.customer_id,
        subscription_id=event.subscription_id,
        amount=event.amount,
        gateway=event.gateway,
        payment_method=event.payment_method,
        decline=event.decline,
        failure_time=event.failure_time,
        time_zone=event.time_zone,
        wallet=event.wallet,
        retry_schedule_code=event.retry_schedule_code,
    )
    by_rpc = (await client.call("t-billing", "RecordPaymentFailure", request)).decision
    by_event = plan.decisions[-1]
    assert (by_event.action, by_event.next_attempt_time, list(by_event.rule_ids)) == (
        by_rpc.action,
        by_rpc.next_attempt_time,
        list(by_rpc.rule_ids),
    )
    assert by_event.reason == by_rpc.reason

    audit = await client.call(
        "t-reader",
        "ListAuditEvents",
        pb.ListAuditEventsRequest(entity_type="retry_plan", entity_id=plan.plan_id),
    )
    assert {a.actor for a in audit.audit_events} == {"consumer:payment.failed"}


async def test_a_second_failure_of_the_payment_advances_its_plan(
    live: Service, broker: Broker, client: Client
) -> None:
    first = e.payment_failed(at=datetime.now(UTC) - timedelta(hours=2))
    second = e.payment_failed(
        payment_id=first.payment_id, at=datetime.now(UTC) - timedelta(hours=1)
    )
    await broker.publish("payment.failed", first)
    await e.handled(live, "payment.failed", first.event_id)
    await broker.publish("payment.failed", second, content_type=JSON)
    await e.handled(live, "payment.failed", second.event_id)
    [plan] = await plans_of(client, first.payment_id)
    assert plan.attempt_count == 2
    assert len(plan.decisions) == 2


# -- payment.succeeded --------------------------------------------------------------------------


@ENCODINGS
async def test_payment_succeeded_records_a_refundable_payment(
    live: Service, broker: Broker, client: Client, encoding: str
) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    event = e.payment_succeeded(
        items=[
            e.period_item("pro-plan", 9000, 900, start, start + timedelta(days=30)),
            e.period_item("seats", 5000, 500, None, None),
        ]
    )
    await broker.publish("payment.succeeded", event, content_type=encoding)
    row = await e.handled(live, "payment.succeeded", event.event_id)
    assert row["outcome"] == "APPLIED"

    payment = await b.get_payment(client, event.payment.payment_id)
    assert payment.captured_amount == b.usd(15400)
    assert payment.refundable_amount == b.usd(15400)
    assert [i.item_id for i in payment.items] == ["pro-plan", "seats"]
    assert payment.items[0].service_period_end == event.payment.items[0].service_period_end
    refund = await b.create_refund(client, payment.payment_id, amount=1000)
    assert refund.amount == b.usd(1000)


async def test_payment_succeeded_recovers_the_plan_of_its_billing_event(
    live: Service, broker: Broker, client: Client
) -> None:
    failed = e.payment_failed(billing_event_id="be_77")
    await broker.publish("payment.failed", failed)
    await e.handled(live, "payment.failed", failed.event_id)
    [plan] = await plans_of(client, failed.payment_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE

    # The customer paid the invoice another way: another payment of the same billing event.
    paid = e.payment_succeeded(billing_event_id="be_77")
    await broker.publish("payment.succeeded", paid, content_type=JSON)
    await e.handled(live, "payment.succeeded", paid.event_id)
    recovered = await plan_of(client, plan.plan_id)
    assert recovered.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert paid.payment.payment_id in recovered.status_reason


async def test_payment_succeeded_of_a_payment_recorded_by_rpc_is_ignored(
    live: Service, broker: Broker, client: Client
) -> None:
    payment = await b.record_payment(client)
    event = e.payment_succeeded(payment_id=payment.payment_id)
    await broker.publish("payment.succeeded", event)
    row = await e.handled(live, "payment.succeeded", event.event_id)
    assert row["outcome"] == "IGNORED"
    assert "already exists" in row["note"]
    assert (await b.get_payment(client, payment.payment_id)).captured_amount == b.usd(10000)


async def test_a_failure_handled_after_the_payment_that_settled_it_starts_no_retries(
    live: Service, broker: Broker, client: Client
) -> None:
    """The queues are consumed independently: the customer's payment of the invoice can be
    handled before the failure that came first. Retrying then would charge them twice."""
    paid = e.payment_succeeded(billing_event_id="be_late")
    await broker.publish("payment.succeeded", paid)
    await e.handled(live, "payment.succeeded", paid.event_id)

    late = e.payment_failed(billing_event_id="be_late")  # the failed charge of that invoice
    await broker.publish("payment.failed", late)
    row = await e.handled(live, "payment.failed", late.event_id)

    assert row["outcome"] == "IGNORED"  # acknowledged, not dead-lettered
    assert "paid already" in row["note"]
    assert paid.payment.payment_id in row["note"]
    assert await plans_of(client, late.payment_id) == []


# -- subscription.cancelled ---------------------------------------------------------------------


START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
END = START + timedelta(days=30)


async def paid_subscription(live: Service, broker: Broker, subscription_id: str) -> Any:
    """A payment of the subscription by event: 90.00 + 9.00 tax for a 30-day period that
    started 10 days ago, and a one-off 50.00 + 5.00 setup fee."""
    event = e.payment_succeeded(
        subscription_id=subscription_id,
        items=[
            e.period_item("pro-plan", 9000, 900, START, END),
            e.period_item("setup", 5000, 500, None, None),
        ],
    )
    await broker.publish("payment.succeeded", event)
    await e.handled(live, "payment.succeeded", event.event_id)
    return event.payment


@ENCODINGS
async def test_prorated_cancellation_refunds_the_unused_part_of_the_period(
    live: Service, broker: Broker, client: Client, encoding: str
) -> None:
    payment = await paid_subscription(live, broker, "sub_pro")
    cancel = e.subscription_cancelled("sub_pro", START + timedelta(days=10))
    await broker.publish("subscription.cancelled", cancel, content_type=encoding)
    row = await e.handled(live, "subscription.cancelled", cancel.event_id)
    assert row["outcome"] == "APPLIED"

    [refund] = await refunds_of(client, payment.payment_id)
    # 20 of 30 days unused of 99.00: 66.00, split 60.00 net + 6.00 tax; the setup fee stays.
    assert refund.amount == b.usd(6600)
    assert [(i.item_id, i.amount.minor_units, i.tax.minor_units) for i in refund.items] == [
        ("pro-plan", 6000, 600)
    ]
    # The default policy auto-approves nothing: a person approves it, as any refund.
    assert refund.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert refund.requested_by == "consumer:subscription.cancelled"
    assert "sub_pro cancelled (prorated): too expensive" in refund.reason
    approved = await b.approve(client, refund.refund_id)
    assert approved.status == RS.REFUND_STATUS_APPROVED


async def test_cancellation_refund_is_auto_approved_under_the_threshold(
    live: Service, broker: Broker, client: Client
) -> None:
    await b.set_policy(client, auto={"USD": 10_000})
    payment = await paid_subscription(live, broker, "sub_auto")
    cancel = e.subscription_cancelled("sub_auto", START + timedelta(days=25))
    await broker.publish("subscription.cancelled", cancel)
    await e.handled(live, "subscription.cancelled", cancel.event_id)
    [refund] = await refunds_of(client, payment.payment_id)
    assert refund.amount == b.usd(1650)  # 5 of 30 days of 99.00
    assert refund.status == RS.REFUND_STATUS_APPROVED


async def test_full_cancellation_refunds_what_is_left_of_the_last_payment(
    live: Service, broker: Broker, client: Client
) -> None:
    older = await paid_subscription(live, broker, "sub_full")
    # A later period, paid later: the one a cancellation refunds.
    later = e.payment_succeeded(
        subscription_id="sub_full",
        items=[e.period_item("pro-plan", 9000, 900, END, END + timedelta(days=30))],
    )
    await broker.publish("payment.succeeded", later)
    await e.handled(live, "payment.succeeded", later.event_id)
    partial = await b.create_refund(client, later.payment.payment_id, amount=990)

    cancel = e.subscription_cancelled(
        "sub_full", START + timedelta(days=1), ev.CANCELLATION_REFUND_POLICY_FULL
    )
    await broker.publish("subscription.cancelled", cancel, content_type=JSON)
    await e.handled(live, "subscription.cancelled", cancel.event_id)
    refunds = await refunds_of(client, later.payment.payment_id)
    assert sorted(r.amount.minor_units for r in refunds) == [990, 9900 - 990]
    assert partial.refund_id in {r.refund_id for r in refunds}
    assert await refunds_of(client, older.payment_id) == []


async def test_cancellation_with_policy_none_or_nothing_left_does_nothing(
    live: Service, broker: Broker, client: Client
) -> None:
    payment = await paid_subscription(live, broker, "sub_none")
    none = e.subscription_cancelled(
        "sub_none", START + timedelta(days=1), ev.CANCELLATION_REFUND_POLICY_NONE
    )
    await broker.publish("subscription.cancelled", none)
    row = await e.handled(live, "subscription.cancelled", none.event_id)
    # No refund, but the cancellation is kept (its invoices are not collected any more).
    assert row["outcome"] == "APPLIED"
    assert await refunds_of(client, payment.payment_id) == []
    again = e.subscription_cancelled(
        "sub_none", START + timedelta(days=1), ev.CANCELLATION_REFUND_POLICY_NONE
    )
    await broker.publish("subscription.cancelled", again)
    row = await e.handled(live, "subscription.cancelled", again.event_id)
    assert row["outcome"] == "IGNORED"
    assert row["note"] == (
        "the policy is NONE: nothing to refund; collection was stopped before (no open retry plan)"
    )

    await b.create_refund(client, payment.payment_id)  # a full refund, by hand
    full = e.subscription_cancelled(
        "sub_none", START + timedelta(days=1), ev.CANCELLATION_REFUND_POLICY_FULL
    )
    await broker.publish("subscription.cancelled", full, content_type=JSON)
    row = await e.handled(live, "subscription.cancelled", full.event_id)
    assert row["outcome"] == "IGNORED"
    assert "nothing of payment" in row["note"]
    assert len(await refunds_of(client, payment.payment_id)) == 1

    for outcome in ("APPLIED", "IGNORED"):  # the first keeps the cancellation
        unknown = e.subscription_cancelled("sub_never_paid", datetime.now(UTC))
        await broker.publish("subscription.cancelled", unknown)
        row = await e.handled(live, "subscription.cancelled", unknown.event_id)
        assert row["outcome"] == outcome
    assert "has no recorded payment" in row["note"]


async def test_the_same_cancellation_twice_gives_one_refund(
    live: Service, broker: Broker, client: Client
) -> None:
    payment = await paid_subscription(live, broker, "sub_twice")
    first = e.subscription_cancelled("sub_twice", START + timedelta(days=10))
    again = ev.SubscriptionCancelled()
    again.CopyFrom(first)
    again.event_id = e.event_id()  # re-sent by the billing system as a new event
    for event in (first, again):
        await broker.publish("subscription.cancelled", event)
        await e.handled(live, "subscription.cancelled", event.event_id)
    [refund] = await refunds_of(client, payment.payment_id)
    assert refund.amount == b.usd(6600)
    row = await e.inbox_row(live.db, "subscription.cancelled", again.event_id)
    assert row is not None
    assert (row["outcome"], row["note"]) == (
        "IGNORED",
        f"the period of payment {payment.payment_id!r} was refunded already; "
        "collection was stopped before (no open retry plan)",
    )


# -- the README's examples ----------------------------------------------------------------------


def readme_examples() -> dict[str, str]:
    """The JSON event examples of the README's Events section, by event type."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    section = readme.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```json\n(.*?)```", section, re.DOTALL) if "eventId" in b]
    kinds = {"payment": "payment.succeeded", "decline": "payment.failed"}
    by_type = {}
    for block in blocks:
        keys = json.loads(block).keys()
        by_type[next((t for k, t in kinds.items() if k in keys), "subscription.cancelled")] = block
    return by_type


async def test_the_readme_json_examples_are_handled(
    live: Service, broker: Broker, client: Client
) -> None:
    examples = readme_examples()
    assert sorted(examples) == ["payment.failed", "payment.succeeded", "subscription.cancelled"]
    for event_type in ("payment.succeeded", "payment.failed", "subscription.cancelled"):
        body = examples[event_type]
        await broker.publish_raw(
            body.encode(), routing_key=event_type, content_type=JSON, type=event_type
        )
        row = await e.handled(live, event_type, json.loads(body)["eventId"])
        assert row["outcome"] == "APPLIED", row["note"]
    assert len(await plans_of(client, "inv_2002")) == 1
    [refund] = await refunds_of(client, "pay_2001")
    assert refund.amount == b.usd(3300)
    assert [(i.amount.minor_units, i.tax.minor_units) for i in refund.items] == [(3000, 300)]
