"""The outbox relay's publish rate against raw aio-pika publishing with gathered confirms,
measured in the same run.

``.venv/bin/python -m bench.outbox_relay [--events 20000] [--batch 500] [--rounds 2]``

1. Creates a database ``rr_bench_relay_<pid>`` (migrated) and a RabbitMQ vhost of the same
   name (``rabbitmqctl``), and always drops both at the end. The vhost has the relay's
   durable topic exchange and one durable queue bound to ``#``, so every message is routed
   and stored, as it would be with one subscriber; the queue is purged between phases.
2. Setup (not measured): ``--events`` outbox rows written by the service's own writer
   (``journal.add_outbox``, 1,000 per transaction), each a serialized ``refund.created``
   event of a realistic size.
3. Baseline: the same messages (same body, properties and routing keys) published with raw
   aio-pika on one confirming channel, ``--batch`` in flight and their confirms gathered
   (TOOLING.md's "confirms gathered 500 at a time"); no database.
4. Relay: ``service.outbox.relay.Relay`` with ``batch=--batch`` from start (leader lock,
   broker connection) until it has marked every row published; then the rows are reset to
   unpublished for the next round.

Both run on uvloop, like ``refund-retry serve``. The phases alternate for ``--rounds``
rounds; the result is the ratio of the medians. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aio_pika
import asyncpg

from refundretry.v1 import events_pb2, money_pb2, refund_pb2
from repository import journal
from repository.database import Database, migrate
from service.outbox.relay import Relay

ROUTING_KEYS = ("refund.created", "refund.processing", "refund.succeeded")


@dataclass(frozen=True, slots=True)
class Setup:
    dsn: str
    amqp_url: str
    exchange: str
    queue: str


def payload(refund_id: str, event_type: str) -> bytes:
    """A serialized event about the size of the service's refund events (about 430 bytes)."""
    usd = money_pb2.Money(currency_code="USD", minor_units=1000)
    event = events_pb2.Event(
        event_id=str(uuid.uuid4()),
        type=event_type,
        aggregate_type="refund",
        aggregate_id=refund_id,
        actor="billing-service",
        refund_created=events_pb2.RefundCreated(
            refund=refund_pb2.RefundEvent(
                refund_id=refund_id,
                payment_id=f"pay_{refund_id[:8]}",
                customer_id="cus_42",
                subscription_id="sub_7",
                amount=usd,
                status=refund_pb2.REFUND_STATUS_APPROVED,
                reason="requested_by_customer",
                requested_by="billing-service",
                required_approvals=1,
                details=[
                    refund_pb2.RefundEventDetail(
                        detail_id=str(uuid.uuid4()),
                        original_transaction_id="pi_3Nabcdefghijklmnop",
                        amount=usd,
                        status=refund_pb2.REFUND_DETAIL_STATUS_PENDING,
                        gateway="sandbox",
                        retry_schedule_code="refund-default",
                    )
                ],
                items=[refund_pb2.RefundEventItem(item_id="pro-plan", amount=usd, tax=usd)],
            )
        ),
    )
    return event.SerializeToString()


async def write_rows(dsn: str, count: int) -> None:
    db = await Database.connect(dsn, max_size=2)
    try:
        for start in range(0, count, 1000):
            async with db.transaction() as conn:
                for n in range(start, min(start + 1000, count)):
                    refund_id = str(uuid.uuid4())
                    event_type = ROUTING_KEYS[n % len(ROUTING_KEYS)]
                    await journal.add_outbox(
                        conn,
                        journal.OutboxRow(
                            event_id=uuid.uuid4(),
                            event_type=event_type,
                            aggregate_type="refund",
                            aggregate_id=refund_id,
                            payload=payload(refund_id, event_type),
                            customer_id="cus_42",
                            payment_id=f"pay_{refund_id[:8]}",
                            subscription_id="sub_7",
                        ),
                    )
    finally:
        await db.close()


async def raw_publish(setup: Setup, rows: list[asyncpg.Record], batch: int) -> float:
    """Seconds to publish ``rows`` with raw aio-pika, ``batch`` confirms gathered at a time."""
    connection = await aio_pika.connect(setup.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(setup.exchange)
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            bytes(row["payload"]),
                            content_type="application/x-protobuf",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=str(row["event_id"]),
                            type=row["event_type"],
                            headers={"type": row["event_type"]},
                            timestamp=row["created_at"],
                            app_id="refund-retry",
                        ),
                        routing_key=row["event_type"],
                    )
                    for row in rows[start : start + batch]
                )
            )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def relay_publish(setup: Setup, count: int, batch: int) -> float:
    """Seconds from the relay's start until it has marked ``count`` rows published."""
    relay = Relay(setup.dsn, setup.amqp_url, setup.exchange, batch=batch, progress_every=3600)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while relay.published < count:
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        return time.perf_counter() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def purge(setup: Setup) -> None:
    connection = await aio_pika.connect(setup.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(setup.queue)
        await queue.purge()
    finally:
        await connection.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@contextlib.asynccontextmanager
async def environment(args: argparse.Namespace) -> AsyncIterator[Setup]:
    name = f"rr_bench_relay_{os.getpid()}"
    dsn = args.admin_url.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(args.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        await migrate(dsn)
        setup = Setup(dsn, f"{args.amqp_base.rstrip('/')}/{quote(name, safe='')}", name, name)
        connection = await aio_pika.connect(setup.amqp_url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            setup.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(setup.queue, durable=True)
        await queue.bind(exchange, "#")
        await connection.close()
        yield setup
    finally:
        rabbitmqctl("delete_vhost", name)
        admin = await asyncpg.connect(args.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with environment(args) as setup:
        await write_rows(setup.dsn, args.events)
        conn = await asyncpg.connect(setup.dsn)
        try:
            rows = await conn.fetch(
                "SELECT position, event_id, event_type, payload, created_at FROM outbox"
                " ORDER BY position"
            )
            raw: list[float] = []
            relayed: list[float] = []
            for _ in range(args.rounds):
                await purge(setup)
                raw.append(args.events / await raw_publish(setup, list(rows), args.batch))
                await purge(setup)
                await conn.execute("UPDATE outbox SET published_at = NULL")
                await conn.execute("VACUUM outbox")
                relayed.append(args.events / await relay_publish(setup, args.events, args.batch))
        finally:
            await conn.close()
    return {
        "events": args.events,
        "batch": args.batch,
        "raw_per_s": raw,
        "relay_per_s": relayed,
        "ratio": statistics.median(relayed) / statistics.median(raw),
        "at": datetime.now(UTC).isoformat(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "REFUND_RETRY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--amqp-base", default="amqp://guest:guest@127.0.0.1:5672/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = parse_args(argv)
    result = uvloop.run(run(args))
    print(f"outbox relay, {result['events']} events, {result['batch']} in flight")
    print(f"{'round':>5} {'raw aio-pika msg/s':>20} {'relay msg/s':>12}")
    for n, (raw, relayed) in enumerate(
        zip(result["raw_per_s"], result["relay_per_s"], strict=True)
    ):
        print(f"{n + 1:>5} {raw:>20,.0f} {relayed:>12,.0f}")
    print(f"relay / raw (medians): {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
