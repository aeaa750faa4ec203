"""A producer that is not Python: tests/node/publish.js (npm `amqplib`, run with the machine's
node) publishes hand-written proto3 JSON events, and the service handles all three."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refundretry.v1 import refund_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from service.server import Service
from tests.integration import builders as b
from tests.integration import event_builders as e
from tests.integration.cli import run_program
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import Broker, broker, rabbitmq_vhost  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return broker.settings()


async def test_events_published_from_node_are_handled(
    service: Service, broker: Broker, client: Client
) -> None:
    assert NODE, "node is needed (scripts/bootstrap installs amqplib with npm)"
    await e.consuming(service)
    run = uuid.uuid4().hex[:8]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=15)
    params = {
        "runId": f"node-{run}",
        "paymentId": f"pay_node_{run}",
        "failedPaymentId": f"inv_node_{run}",
        "subscriptionId": f"sub_node_{run}",
        "periodStart": start.isoformat().replace("+00:00", "Z"),
        "periodEnd": (start + timedelta(days=30)).isoformat().replace("+00:00", "Z"),
        "cancelTime": (start + timedelta(days=20)).isoformat().replace("+00:00", "Z"),
    }
    code, out, err = await run_program(
        NODE,
        str(ROOT / "tests" / "node" / "publish.js"),
        broker.url,
        broker.billing_exchange,
        json.dumps(params),
        seconds=60,
    )
    assert code == 0, err
    published = json.loads(out)["published"]
    assert published == [f"node-{run}-paid", f"node-{run}-failed", f"node-{run}-cancelled"]
    for consumer, event_id in zip(
        ("payment.succeeded", "payment.failed", "subscription.cancelled"), published, strict=True
    ):
        row = await e.handled(service, consumer, event_id)
        assert row["outcome"] == "APPLIED", row["note"]

    payment = await b.get_payment(client, params["paymentId"])
    assert payment.captured_amount == b.usd(9900)
    plans = await client.call(
        "t-reader", "ListRetryPlans", pb.ListRetryPlansRequest(payment_id=params["failedPaymentId"])
    )
    [plan] = plans.plans
    assert plan.status == retry_plan_pb2.RETRY_PLAN_STATUS_ACTIVE
    assert plan.time_zone == "America/New_York"
    refunds = await client.call(
        "t-reader", "ListRefunds", pb.ListRefundsRequest(payment_id=params["paymentId"])
    )
    [refund] = refunds.refunds
    assert refund.amount == b.usd(3300)  # 10 of 30 days of 99.00 unused
    assert refund.status == refund_pb2.REFUND_STATUS_PENDING_APPROVAL
