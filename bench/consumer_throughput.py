"""Consume rate of the payment.failed consumer against raw aio-pika consumption of the same
messages, measured in the same run.

``.venv/bin/python -m bench.consumer_throughput [--events 5000] [--prefetch 32] [--pool 16]``

1. Creates its own RabbitMQ vhost (``rabbitmqctl add_vhost``) and two databases
   ``rr_bench_consumers_<pid>_{direct,consumer}``, migrated; all are deleted at the end.
2. Builds ``--events`` distinct payment.failed events (protobuf binary; one payment and one
   card each, declined ``insufficient_funds``, schedule ``payment-fixed``).
3. **raw**: the messages are published to a quorum queue declared like the service's (same
   arguments), then consumed with aio-pika, manual ack, the same prefetch: time from the first
   delivery to the last ack. Nothing else is done per message: the broker and client ceiling.
4. **direct**: ``service.retries.record_payment_failure`` called for each event with as many
   calls in flight as the prefetch, on a pool of ``--pool``: the application function's own
   ceiling, no broker and no inbox.
5. **consumer**: the messages are published to the billing exchange and wait in the service's
   queue; then the real service starts (``service.server.start``, consumers on, billing loop
   and outbox relay off) and consumes them: decode, inbox row, ``record_payment_failure``,
   ack. Time from the consumers being ready to the last inbox row (polled every 100 ms).

Prints events/s for each and the ratios consumer/raw and consumer/direct. All on loopback, in
this process under uvloop (as ``serve`` runs). Absolute rates depend on the machine; the ratios
are the result. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import aio_pika
import asyncpg

from consumers import topology
from consumers.handlers import SPECS, request_id_of
from refundretry.v1 import billing_events_pb2 as ev
from refundretry.v1 import money_pb2, retry_plan_pb2
from repository.database import Database, migrate
from service import retries
from service.auth import Principal, Role
from service.config import SETTINGS, Config
from service.domain.decline_codes import CardNetwork, Decline
from service.domain.money import Money
from service.domain.retry_plan import Method
from service.server import start

ADMIN_URL = os.environ.get(
    "REFUND_RETRY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_HOST = os.environ.get("REFUND_RETRY_BENCH_AMQP_HOST", "127.0.0.1:5672")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def events(count: int) -> list[ev.PaymentFailed]:
    failed_at = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for n in range(count):
        event = ev.PaymentFailed(
            event_id=f"bench-{n}",
            payment_id=f"inv_bench_{n}",
            customer_id=f"cus_{n % 500}",
            amount=money_pb2.Money(currency_code="USD", minor_units=4900),
            gateway="sandbox",
            payment_method=retry_plan_pb2.PaymentMethod(
                payment_method_id=f"pm_{n}", network="VISA"
            ),
            decline=retry_plan_pb2.Decline(decline_code="insufficient_funds"),
            time_zone="America/New_York",
            retry_schedule_code="payment-fixed",
        )
        event.failure_time.FromDatetime(failed_at)
        out.append(event)
    return out


async def publish(exchange: aio_pika.abc.AbstractExchange, bodies: list[bytes]) -> None:
    """Persistent, confirmed, 500 confirms gathered at a time."""
    for start_at in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/x-protobuf",
                        type="payment.failed",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="payment.failed",
                )
                for body in bodies[start_at : start_at + 500]
            )
        )


async def raw(url: str, bodies: list[bytes], prefetch: int, limit: int) -> float:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("raw", aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(
            "raw.payment.failed",
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": limit},
        )
        await queue.bind(exchange, "payment.failed")
        await publish(exchange, bodies)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=prefetch)
        queue = await consume.get_queue("raw.payment.failed")
        done = asyncio.Event()
        acked = 0
        first = 0.0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal acked, first
            if not first:
                first = time.perf_counter()
            await message.ack()
            acked += 1
            if acked == len(bodies):
                done.set()

        await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), 600)
        return len(bodies) / (time.perf_counter() - first)
    finally:
        await connection.close()


async def direct(url: str, batch: list[ev.PaymentFailed], prefetch: int, pool: int) -> float:
    db = await Database.connect(url, max_size=pool)
    principal = Principal("bench", frozenset({Role.PAYMENT_RECORD}))
    context = retries.RetryContext()
    slots = asyncio.Semaphore(prefetch)

    async def one(event: ev.PaymentFailed) -> None:
        async with slots:
            await retries.record_payment_failure(
                db,
                principal,
                retries.RecordFailure(
                    request_id=request_id_of("payment.failed", event.event_id),
                    payment_id=event.payment_id,
                    billing_event_id="",
                    customer_id=event.customer_id,
                    subscription_id="",
                    amount=Money("USD", event.amount.minor_units),
                    gateway="sandbox",
                    method=Method(event.payment_method.payment_method_id, CardNetwork.VISA),
                    decline=Decline(event.decline.decline_code, CardNetwork.VISA, "", ""),
                    failed_at=event.failure_time.ToDatetime(tzinfo=UTC),
                    time_zone=event.time_zone,
                    schedule_code=event.retry_schedule_code,
                ),
                context=context,
            )

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(e) for e in batch))
        return len(batch) / (time.perf_counter() - started)
    finally:
        await db.close()


async def consumer(
    amqp_url: str, db_url: str, bodies: list[bytes], prefetch: int, pool: int, limit: int
) -> float:
    config = Config.from_env(
        {
            "REFUND_RETRY_DATABASE_URL": db_url,
            "REFUND_RETRY_GRPC_HOST": "127.0.0.1",
            "REFUND_RETRY_GRPC_PORT": "0",
            "REFUND_RETRY_HTTP_HOST": "127.0.0.1",
            "REFUND_RETRY_HTTP_PORT": "0",
            "REFUND_RETRY_TOKENS": json.dumps({"t": {"principal": "bench", "roles": ["read"]}}),
            "REFUND_RETRY_PLAINTEXT": "true",
            "REFUND_RETRY_DB_POOL_SIZE": str(pool),
            "REFUND_RETRY_RABBITMQ_URL": amqp_url,
            "REFUND_RETRY_CONSUMER_PREFETCH": str(prefetch),
            "REFUND_RETRY_CONSUMER_DELIVERY_LIMIT": str(limit),
            "REFUND_RETRY_BILLING_JOB_INTERVAL_SECONDS": "0",
            # The outbox relay would publish each plan's events meanwhile: not what is measured.
            "REFUND_RETRY_RELAY": "false",
        }
    )
    names = topology.Topology.from_config(config)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await topology.declare(channel, names, list(SPECS))
        exchange = await channel.get_exchange(names.billing_exchange)
        await publish(exchange, bodies)
    finally:
        await connection.close()
    service = await start(config, run_billing_loop=False)
    counter = await asyncpg.connect(db_url)
    try:
        assert service.consumers is not None
        await asyncio.wait_for(service.consumers.ready.wait(), 60)
        started = time.perf_counter()
        deadline = started + 600
        while await counter.fetchval("SELECT count(*) FROM inbox") < len(bodies):
            assert time.perf_counter() < deadline, "the consumer did not finish in 10 minutes"
            await asyncio.sleep(0.1)
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await counter.close()
        await service.stop()


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    pid = os.getpid()
    vhost = f"rr_bench_consumers_{pid}"
    amqp_url = f"amqp://guest:guest@{AMQP_HOST}/{quote(vhost, safe='')}"
    names = [f"rr_bench_consumers_{pid}_{phase}" for phase in ("direct", "consumer")]
    urls = [ADMIN_URL.rsplit("/", 1)[0] + "/" + name for name in names]
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        for name, url in zip(names, urls, strict=True):
            await admin(f'CREATE DATABASE "{name}"')
            await migrate(url)
        batch = events(args.events)
        bodies = [e.SerializeToString() for e in batch]
        limit = int(SETTINGS["CONSUMER_DELIVERY_LIMIT"][0])
        rates = {
            "raw aio-pika consume + ack": await raw(amqp_url, bodies, args.prefetch, limit),
            "direct record_payment_failure": await direct(urls[0], batch, args.prefetch, args.pool),
            "consumer (decode, inbox, record, ack)": await consumer(
                amqp_url, urls[1], bodies, args.prefetch, args.pool, limit
            ),
        }
    finally:
        for name in names:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        rabbitmqctl("delete_vhost", vhost)
    print(f"{args.events} payment.failed events, prefetch {args.prefetch}, pool {args.pool}")
    for label, rate in rates.items():
        print(f"  {label:<40} {rate:>9,.0f} events/s")
    values = list(rates.values())
    print(f"  consumer / raw      {values[2] / values[0]:.3f}")
    print(f"  consumer / direct   {values[2] / values[1]:.3f}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=32, help="the service's default")
    parser.add_argument("--pool", type=int, default=16, help="the service's default")
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse()))
