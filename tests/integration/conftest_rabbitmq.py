"""Fixtures for tests against the real RabbitMQ, isolated from everything else on the broker.

A plain module, not a conftest: import the fixtures where they are needed
(``from tests.integration.conftest_rabbitmq import rabbitmq_vhost, broker``).

- ``rabbitmq_vhost`` (session): a vhost of this test run (``rabbitmqctl add_vhost`` with the
  guest user's permissions), deleted with everything in it at the end of the run. Other runs
  and other vhosts are never touched.
- ``broker``: per test, unique exchange and queue names in that vhost, the service settings
  that point the consumers at them (``broker.settings()``), a publisher as the billing system
  would publish, and a reader of the dead-letter queue.
- ``broker_restarted``: stops and starts the broker's application (``rabbitmqctl stop_app`` /
  ``start_app``), always starting it again, and waits until it accepts connections.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from google.protobuf.message import Message

from consumers.codec import PROTOBUF, encode

AMQP_HOST = os.environ.get("REFUND_RETRY_TEST_AMQP_HOST", "127.0.0.1:5672")
_names = itertools.count(1)


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}/{quote(vhost, safe='')}"


def _add_vhost(name: str, seconds: float = 60) -> None:
    """``add_vhost``, waiting while the broker application is stopped (another test run on
    this machine may be restarting it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            rabbitmqctl("add_vhost", name)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    name = f"rr_test_{os.getpid()}_{secrets.token_hex(3)}"
    _add_vhost(name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


@dataclass
class Broker:
    """Names of one test's exchanges and queues in the run's vhost, and clients on them."""

    vhost: str
    prefix: str
    connections: list[AbstractConnection] = field(default_factory=list)

    @property
    def url(self) -> str:
        return amqp_url(self.vhost)

    @property
    def billing_exchange(self) -> str:
        return f"{self.prefix}.billing"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letter"

    def queue(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"

    def settings(self, **more: str) -> dict[str, str]:
        """Service settings (full names) that run the consumers on this test's names."""
        return {
            "REFUND_RETRY_CONSUMERS": "true",
            "REFUND_RETRY_RABBITMQ_URL": self.url,
            "REFUND_RETRY_BILLING_EXCHANGE": self.billing_exchange,
            "REFUND_RETRY_CONSUMER_QUEUE_PREFIX": self.prefix,
            "REFUND_RETRY_DEAD_LETTER_EXCHANGE": f"{self.prefix}.dlx",
            "REFUND_RETRY_DEAD_LETTER_QUEUE": self.dead_letter_queue,
            "REFUND_RETRY_CONSUMER_RETRY_DELAY_MS": "50",
            **{f"REFUND_RETRY_{k}": v for k, v in more.items()},
        }

    async def connect(self) -> AbstractConnection:
        connection = await aio_pika.connect(self.url)
        self.connections.append(connection)
        return connection

    async def channel(self) -> AbstractChannel:
        return await (await self.connect()).channel(publisher_confirms=True)

    async def publish_raw(
        self,
        body: bytes,
        *,
        routing_key: str,
        content_type: str | None = PROTOBUF,
        type: str | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        channel: AbstractChannel | None = None,
    ) -> None:
        """Publish as the billing system would: persistent, to its topic exchange, confirmed."""
        channel = channel or await self.channel()
        exchange = await channel.declare_exchange(
            self.billing_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type=content_type,
                type=type,
                headers=headers,
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def publish(
        self,
        event_type: str,
        message: Message,
        *,
        content_type: str = PROTOBUF,
        channel: AbstractChannel | None = None,
    ) -> None:
        """Publish ``message`` as an event of ``event_type`` in ``content_type``."""
        await self.publish_raw(
            encode(message, content_type),
            routing_key=event_type,
            content_type=content_type,
            type=event_type,
            channel=channel,
        )

    async def dead_letters(
        self, count: int, *, seconds: float = 30
    ) -> list[AbstractIncomingMessage]:
        """The next ``count`` messages of the dead-letter queue (acked), waiting for them up to
        ``seconds``; fails if fewer arrive."""
        channel = await (await self.connect()).channel()
        queue = await channel.get_queue(self.dead_letter_queue, ensure=True)
        found: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + seconds
        while len(found) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                found.append(message)
                continue
            assert time.monotonic() < deadline, f"{len(found)} of {count} dead letters arrived"
            await asyncio.sleep(0.05)
        return found

    async def queue_depth(self, name: str) -> int:
        channel = await (await self.connect()).channel()
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0)

    async def close(self) -> None:
        for connection in self.connections:
            if not connection.is_closed:
                await connection.close()
        self.connections.clear()


@pytest.fixture
async def broker(rabbitmq_vhost: str) -> AsyncIterator[Broker]:
    found = Broker(rabbitmq_vhost, f"t{next(_names)}-{secrets.token_hex(2)}")
    try:
        yield found
    finally:
        await found.close()


async def wait_for_broker(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=5)
        except Exception:
            assert time.monotonic() < deadline, "RabbitMQ did not come back"
            await asyncio.sleep(0.25)
            continue
        await connection.close()
        return


@pytest.fixture
async def broker_restart(rabbitmq_vhost: str) -> AsyncIterator[Any]:
    """``await broker_restart()`` stops the broker application and starts it again; it is
    started again at the end of the test whatever happened."""
    stopped = False

    async def restart() -> None:
        nonlocal stopped
        stopped = True
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.to_thread(rabbitmqctl, "start_app")
        stopped = False
        await wait_for_broker(amqp_url(rabbitmq_vhost))

    try:
        yield restart
    finally:
        if stopped:
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await wait_for_broker(amqp_url(rabbitmq_vhost))
