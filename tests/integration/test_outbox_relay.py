"""The outbox relay against the real RabbitMQ (this run's own vhost) and PostgreSQL: every row
published once, in order, with its properties, marked only when the broker confirmed it; a
broker restart loses nothing; two relays at once still publish each event once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from refundretry.v1 import events_pb2
from repository.database import Database
from service.outbox.relay import Relay
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import (  # noqa: F401  (fixtures)
    Broker,
    amqp_url,
    broker,
    rabbitmq_vhost,
    rabbitmqctl,
    wait_for_broker,
)
from tests.integration.outbox_events import outbox_rows, unpublished, write_events

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60  # a bound on every wait, so a lost event fails the test instead of hanging


def exchange_of(broker: Broker) -> str:
    return f"{broker.prefix}.events"


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return {
        "REFUND_RETRY_RELAY": "true",
        "REFUND_RETRY_RABBITMQ_URL": broker.url,
        "REFUND_RETRY_EVENTS_EXCHANGE": exchange_of(broker),
    }


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(WAIT_SECONDS * 20):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never became true")


async def bind_queue(broker: Broker, name: str = "all", **arguments: Any) -> AbstractQueue:
    """A durable queue of every event the relay publishes (it survives a broker restart)."""
    channel = await (await broker.connect()).channel()
    exchange = await channel.declare_exchange(
        exchange_of(broker), aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(
        f"{broker.prefix}.{name}", durable=True, arguments=arguments or None
    )
    await queue.bind(exchange, "#")
    return queue


async def receive(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    """The next ``count`` messages of ``queue`` (acked)."""
    found: list[AbstractIncomingMessage] = []
    for _ in range(WAIT_SECONDS * 20):
        while len(found) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                break
            found.append(message)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(found)} of {count} messages arrived")


async def all_published(db: Database) -> None:
    async def done() -> bool:
        return await unpublished(db) == 0

    await eventually(done)


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def relay_for(database_url: str, broker: Broker, **kwargs: Any) -> Relay:
    kwargs.setdefault("max_backoff", 0.5)
    return Relay(database_url, broker.url, exchange_of(broker), **kwargs)


def event_ids(messages: list[AbstractIncomingMessage]) -> list[str]:
    return [str(m.message_id) for m in messages]


async def test_every_row_is_published_in_order_with_its_properties_and_marked(
    database_url: str, db: Database, broker: Broker
) -> None:
    queue = await bind_queue(broker)
    await write_events(db, 40, aggregates=4, per_transaction=5)
    relay = relay_for(database_url, broker, batch=16)
    async with running(relay):
        messages = await receive(queue, 40)
        await write_events(db, 7, per_transaction=1)  # while it runs: woken by NOTIFY
        messages += await receive(queue, 7)
        await all_published(db)
    rows = await outbox_rows(db)
    assert event_ids(messages) == [str(r["event_id"]) for r in rows]
    for message, row in zip(messages, rows, strict=True):
        assert message.routing_key == row["event_type"]
        assert message.type == row["event_type"]
        assert message.headers["type"] == row["event_type"]
        assert message.content_type == "application/x-protobuf"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.timestamp is not None
        event = events_pb2.Event.FromString(message.body)
        assert event.event_id == message.message_id
        assert event.type == row["event_type"]
        assert event.refund_created.refund.refund_id == row["aggregate_id"]
        assert row["published_at"] is not None
    assert await queue.get(no_ack=True, fail=False) is None  # nothing twice


async def test_a_row_is_marked_only_when_the_broker_confirmed_it(
    database_url: str, db: Database, broker: Broker
) -> None:
    """The only queue takes 5 messages and makes the broker refuse (nack) the rest: those rows
    stay unpublished, and go out once the queue has room again."""
    queue = await bind_queue(broker, "small", **{"x-max-length": 5, "x-overflow": "reject-publish"})
    await write_events(db, 12, per_transaction=12)
    relay = relay_for(database_url, broker)
    async with running(relay):
        await eventually(lambda: _at_least(relay, batches=2))  # refused, then tried again
        rows = await outbox_rows(db)
        assert [r["published_at"] is not None for r in rows] == [True] * 5 + [False] * 7
        messages = await receive(queue, 5)  # room again: the rest is sent
        messages += await receive(queue, 5)
        messages += await receive(queue, 2)
        await all_published(db)
    assert event_ids(messages) == [str(r["event_id"]) for r in rows]


async def _at_least(relay: Relay, *, batches: int) -> bool:
    return relay.batches >= batches


async def test_a_broker_restart_mid_stream_loses_no_event(
    database_url: str, db: Database, broker: Broker, rabbitmq_vhost: str
) -> None:
    """Events are written one per transaction all along; the broker is stopped while the
    relay publishes them and started again while they are still being written."""
    queue_name = f"{broker.prefix}.all"
    await bind_queue(broker)
    await broker.close()
    relay = relay_for(database_url, broker, batch=20)
    writing = True

    async def keep_writing() -> None:  # until told to stop, however fast the writes are
        while writing:
            await write_events(db, 10, aggregates=5, per_transaction=1)

    writer = asyncio.create_task(keep_writing())
    stopped = False
    async with running(relay):
        try:
            await eventually(lambda: _published_some(relay))
            stopped = True
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            written = len(await outbox_rows(db))
            await eventually(lambda: _written(db, written + 50))  # while the broker is down
        finally:
            if stopped:
                await asyncio.to_thread(rabbitmqctl, "start_app")
                await wait_for_broker(amqp_url(rabbitmq_vhost))
                written = len(await outbox_rows(db))
                await eventually(lambda: _written(db, written + 50))  # after it is back
            writing = False
            await writer
        await all_published(db)
    channel = await (await broker.connect()).channel()
    queue = await channel.declare_queue(queue_name, durable=True, passive=True)
    rows = await outbox_rows(db)
    messages = await receive(queue, len(rows))
    messages += await _rest(queue)
    received = event_ids(messages)
    assert set(received) == {str(r["event_id"]) for r in rows}  # nothing lost
    for message in messages:  # a duplicate is the same event under the same id
        assert events_pb2.Event.FromString(message.body).event_id == message.message_id


async def _written(db: Database, count: int) -> bool:
    return len(await outbox_rows(db)) >= count


async def _published_some(relay: Relay) -> bool:
    return relay.published >= 20


async def _rest(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    rest = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        rest.append(message)
    return rest


async def test_two_relays_publish_each_event_once_in_order_and_one_takes_over(
    database_url: str, db: Database, broker: Broker
) -> None:
    queue = await bind_queue(broker)
    first, second = relay_for(database_url, broker), relay_for(database_url, broker)
    async with running(first) as first_task, running(second) as second_task:
        await write_events(db, 60, aggregates=3, per_transaction=3)
        messages = await receive(queue, 60)
        await all_published(db)
        assert {first.published, second.published} == {0, 60}
        (first_task if first.published else second_task).cancel()  # the active relay dies
        await write_events(db, 20, aggregates=3, per_transaction=2)
        messages += await receive(queue, 20)
        await all_published(db)
        assert first.published + second.published == 80
    rows = await outbox_rows(db)
    assert event_ids(messages) == [str(r["event_id"]) for r in rows]
    assert await queue.get(no_ack=True, fail=False) is None


async def test_the_service_publishes_what_its_rpcs_record(client: Client, broker: Broker) -> None:
    queue = await bind_queue(broker)
    payment = await b.record_payment(client)
    refund = await b.create_refund(client, payment.payment_id, amount=100)
    messages = await receive(queue, 2)
    assert [m.routing_key for m in messages] == ["payment.recorded", "refund.created"]
    event = events_pb2.Event.FromString(messages[1].body)
    assert event.refund_created.refund.refund_id == refund.refund_id
