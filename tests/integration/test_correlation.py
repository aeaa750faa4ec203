"""One correlation id follows a piece of work: from the caller's gRPC metadata (or a consumed
message) into the log lines and every event the work publishes, and back to the caller."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from refundretry.v1 import events_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service import correlation
from service.logs import JsonFormatter
from service.outbox.relay import _message
from service.server import Service
from tests.integration import builders as b
from tests.integration import event_builders as e
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import Broker, broker, rabbitmq_vhost  # noqa: F401


async def events_of(db: Database, aggregate_id: str) -> list[events_pb2.Event]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE aggregate_id = $1 ORDER BY position", aggregate_id
        )
    return [events_pb2.Event.FromString(r["payload"]) for r in rows]


async def record_payment(client: Client, sent: str | None) -> tuple[str, str]:
    """RecordPayment with ``sent`` as x-correlation-id: (payment id, id the server answered)."""
    metadata: list[tuple[str, str]] = [("authorization", "Bearer t-billing")]
    if sent is not None:
        metadata.append((correlation.METADATA_KEY, sent))
    call: Any = client.stub.RecordPayment(
        pb.RecordPaymentRequest(request_id=b.request_id(), payment=b.payment_message()),
        metadata=tuple(metadata),
    )
    answered = dict(await call.initial_metadata())[correlation.METADATA_KEY]
    return (await call).payment.payment_id, answered


async def test_the_callers_id_reaches_the_events_and_comes_back(
    client: Client, db: Database
) -> None:
    payment_id, answered = await record_payment(client, "order-service:req-42")
    assert answered == "order-service:req-42"
    (event,) = await events_of(db, payment_id)
    assert event.type == "payment.recorded"
    assert event.correlation_id == "order-service:req-42"


@pytest.mark.parametrize("sent", [None, "", "has spaces in it", "x" * 200])
async def test_without_a_usable_id_the_service_makes_one_up(
    client: Client, db: Database, sent: str | None
) -> None:
    payment_id, answered = await record_payment(client, sent)
    assert re.fullmatch(r"[0-9a-f]{32}", answered)
    (event,) = await events_of(db, payment_id)
    assert event.correlation_id == answered


async def test_two_calls_at_once_keep_their_own_ids(client: Client, db: Database) -> None:
    results = await asyncio.gather(*(record_payment(client, f"req-{i}") for i in range(8)))
    for i, (payment_id, answered) in enumerate(results):
        assert answered == f"req-{i}"
        assert [ev.correlation_id for ev in await events_of(db, payment_id)] == [f"req-{i}"]


def test_log_lines_carry_the_id_of_the_work_that_wrote_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(correlation.CorrelationFilter())
    logger = logging.getLogger("test.correlation")
    logger.addHandler(handler)
    logger.propagate = False
    try:

        async def work(cid: str) -> None:
            correlation.begin(cid)
            await asyncio.sleep(0)
            logger.warning("step", extra={"action": "test.step"})

        async def both() -> None:
            await asyncio.gather(work("a-1"), work("b-2"))

        asyncio.run(both())
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sorted(line["correlation_id"] for line in lines) == ["a-1", "b-2"]


def test_the_relay_sets_the_amqp_correlation_id() -> None:
    event = events_pb2.Event(event_id=str(uuid.uuid4()), type="t.x", correlation_id="req-7")
    row: Any = {
        "payload": event.SerializeToString(),
        "event_id": uuid.uuid4(),
        "event_type": "t.x",
        "created_at": datetime.now(UTC),
    }
    assert _message(row).correlation_id == "req-7"
    row["payload"] = events_pb2.Event(event_id=str(uuid.uuid4())).SerializeToString()
    assert _message(row).correlation_id is None


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return broker.settings()


async def test_a_consumed_messages_id_reaches_the_events_it_causes(
    service: Service, broker: Broker, db: Database
) -> None:
    await e.consuming(service)
    event = e.payment_failed()
    await broker.publish_raw(
        event.SerializeToString(),
        routing_key="payment.failed",
        type="payment.failed",
        headers={correlation.METADATA_KEY: "billing:evt-9"},
        message_id=event.event_id,
    )
    await e.handled(service, "payment.failed", event.event_id)
    async with db.connection() as conn:
        plan_id = await conn.fetchval(
            "SELECT plan_id::text FROM retry_plan WHERE payment_id = $1", event.payment_id
        )
    published = await events_of(db, plan_id)
    assert published
    assert {ev.correlation_id for ev in published} == {"billing:evt-9"}
