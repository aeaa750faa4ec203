"""The outbox relay: publishes every outbox row to the service's topic exchange on RabbitMQ and
marks it published once the broker has confirmed it.

- **One active relay** across replicas: each relay waits for a Postgres session advisory lock
  on a connection of its own (``pg_advisory_lock``: the standbys block in the lock, so one
  takes over the moment the leader's session ends) and does all its reads and writes on
  that connection, so a relay that lost it can no longer mark anything.
- **Order**: the leader publishes unpublished rows in position order on one channel, so the
  broker receives them in that order. A change writes its outbox rows right before COMMIT,
  after it took the lock of the aggregate it changed, so for one aggregate the position
  order is the commit order. A row that commits after higher positions were published has
  ``published_at`` still NULL and is picked up by the next batch: nothing is skipped.
- **Confirms**: a batch is published with publisher confirms, all its messages in flight at
  once (their confirms gathered; the next batch is read and sent meanwhile), and only the
  confirmed rows are marked. The others stay unpublished and are sent again, with the same
  ``message_id`` (the event id), after the broker is back: a subscriber may see a duplicate,
  never a loss.
- **Failures** never end the relay: a broker or database error is logged and retried with
  capped exponential backoff, on a fresh connection.

On the wire: routing key = the event type, ``type`` property and header = the event type,
``message_id`` = the event id, ``content_type`` application/x-protobuf, persistent, the
``timestamp`` of the row, and the ``refundretry.v1.Event`` protobuf as the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from refundretry.v1 import events_pb2
from repository import outbox
from repository.database import Connection
from service import broker

log = logging.getLogger(__name__)

RELAY_LOCK = 0x52524F52  # "RROR": the advisory lock held by the active relay
IN_FLIGHT = 2  # batches awaiting confirms while the next one is read
PASS_BATCHES = 20  # batches read before a pass starts again from the lowest unpublished row
CONTENT_TYPE = "application/x-protobuf"


class BrokerTrouble(Exception):
    """The broker did not confirm part of a batch: reconnect before publishing again."""


class Publisher:
    """One AMQP connection and confirming channel, and the exchange it publishes to."""

    def __init__(
        self, connection: AbstractConnection, channel: AbstractChannel, exchange: AbstractExchange
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.exchange = exchange

    @classmethod
    async def open(cls, url: str, exchange_name: str) -> Publisher:
        connection = await aio_pika.connect(url, client_properties={"connection_name": "relay"})
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            await connection.close()
            raise
        return cls(connection, channel, exchange)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)

    def send(
        self, rows: Sequence[asyncpg.Record], confirm_timeout: float
    ) -> asyncio.Future[list[int]]:
        """Start publishing ``rows``, all in flight at once; the future gives the positions
        the broker confirmed. Each publish becomes a task at once, in row order, and the tasks
        reach the channel's (FIFO) lock in that order, so the frames go out in row order,
        also across batches sent one after the other."""
        sends = [
            asyncio.ensure_future(
                self.exchange.publish(
                    _message(row), routing_key=row["event_type"], timeout=confirm_timeout
                )
            )
            for row in rows
        ]

        async def confirmed() -> list[int]:
            results = await asyncio.gather(*sends, return_exceptions=True)
            for result in results:
                if isinstance(result, asyncio.CancelledError):
                    raise result
            return [
                row["position"]
                for row, result in zip(rows, results, strict=True)
                if not isinstance(result, BaseException)
            ]

        return asyncio.ensure_future(confirmed())


def _message(row: asyncpg.Record) -> aio_pika.Message:
    payload = bytes(row["payload"])
    return aio_pika.Message(
        payload,
        correlation_id=events_pb2.Event.FromString(payload).correlation_id or None,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row["event_id"]),
        type=row["event_type"],
        headers={"type": row["event_type"]},
        timestamp=row["created_at"],
        app_id="refund-retry",
    )


class Relay:
    """``run()`` until cancelled. ``published`` counts the rows this relay marked."""

    def __init__(
        self,
        dsn: str,
        amqp_url: str,
        exchange: str,
        *,
        batch: int = 500,
        confirm_timeout: float = 30.0,
        idle_poll: float = 1.0,
        progress_every: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._amqp_url = amqp_url
        self._exchange = exchange
        self._batch = batch
        self._confirm_timeout = confirm_timeout
        self._idle_poll = idle_poll
        self._progress_every = progress_every
        self._max_backoff = max_backoff
        self.published = 0
        self.batches = 0
        self.leading = asyncio.Event()
        self._wake = asyncio.Event()
        self._stuck = False  # nothing confirmed since the last reconnect: back off longer
        self._since_report = 0
        self._last_report = time.monotonic()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: wait, then stand by again
                log.warning(
                    "outbox relay lost the database (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    backoff,
                    extra={"action": "relay.db_error"},
                )
            finally:
                self.leading.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _lead(self) -> None:
        conn: Connection = await asyncpg.connect(self._dsn)
        try:
            await conn.execute("SET application_name = 'refund-retry relay'")
            await conn.fetchval("SELECT pg_advisory_lock($1)", RELAY_LOCK)  # stand by here
            await conn.add_listener(outbox.NOTIFY_CHANNEL, self._notified)
            self.leading.set()
            log.info(
                "outbox relay is the active relay",
                extra={"action": "relay.leading", "exchange": self._exchange},
            )
            await self._publish_forever(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _publish_forever(self, conn: Connection) -> None:
        """Publish while leading. Broker trouble (cannot connect, or part of a batch not
        confirmed) reconnects to the broker with backoff and keeps the lead; a database error
        propagates (the lead is then lost with the connection)."""
        backoff = 0.1
        failures = 0  # connection attempts failed in a row: the first is said, the rest DEBUG
        while True:
            try:
                publisher = await Publisher.open(self._amqp_url, self._exchange)
            except Exception as exc:  # only the broker is involved here
                failures += 1
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "outbox relay cannot reach RabbitMQ (%s): events wait in the outbox, "
                    "none is lost; retrying in the background (next in %.1f s)",
                    broker.connection_failure(exc, self._amqp_url),
                    backoff,
                    extra={"action": "relay.broker_down", "failures": failures},
                )
            else:
                if failures:
                    log.info(
                        "outbox relay reached RabbitMQ after %d failed tries; publishing",
                        failures,
                        extra={"action": "relay.broker_back", "failures": failures},
                    )
                    failures = 0
                try:
                    await self._drain(conn, publisher)
                except BrokerTrouble as exc:
                    log.warning(
                        "outbox relay lost RabbitMQ (%s); unconfirmed events are sent again "
                        "after %.1f s",
                        exc,
                        backoff,
                        extra={"action": "relay.broker_lost"},
                    )
                finally:
                    await publisher.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff) if self._stuck else 0.1
            self._stuck = True

    async def _drain(self, conn: Connection, publisher: Publisher) -> None:
        """Publish until the broker fails. Reading and marking overlap with the broker's work:
        up to ``IN_FLIGHT`` batches await their confirms while the next one is read. A pass
        reads unpublished rows after the last one it sent; it starts again from the lowest
        unpublished row (after the batches in flight are settled) when a read comes back
        short, and every ``PASS_BATCHES`` batches, so a row that committed after higher
        positions is never left waiting for long. Idle, it waits for a notification or a
        slow poll."""
        in_flight: deque[tuple[Sequence[asyncpg.Record], asyncio.Future[list[int]]]] = deque()
        after = 0
        batches_in_pass = 0
        try:
            while True:
                self._wake.clear()
                rows = await outbox.unpublished(conn, after, self._batch)
                if rows:
                    in_flight.append((rows, publisher.send(rows, self._confirm_timeout)))
                    after = rows[-1]["position"]
                    batches_in_pass += 1
                end_of_pass = len(rows) < self._batch or batches_in_pass >= PASS_BATCHES
                while in_flight and (end_of_pass or len(in_flight) >= IN_FLIGHT):
                    await self._settle(conn, in_flight.popleft())
                if end_of_pass:
                    after, batches_in_pass = 0, 0
                    await self._report(conn)
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        except BrokerTrouble:
            # Whatever the broker confirmed of the later batches is still marked.
            for left, confirming in in_flight:
                await self._mark(conn, left, await confirming)
            raise
        finally:
            for _, confirming in in_flight:
                confirming.cancel()

    async def _settle(
        self,
        conn: Connection,
        batch: tuple[Sequence[asyncpg.Record], asyncio.Future[list[int]]],
    ) -> None:
        rows, confirming = batch
        confirmed = await confirming
        await self._mark(conn, rows, confirmed)
        if len(confirmed) < len(rows):
            raise BrokerTrouble(f"{len(rows) - len(confirmed)} of {len(rows)} unconfirmed")

    async def _mark(
        self, conn: Connection, rows: Sequence[asyncpg.Record], confirmed: list[int]
    ) -> None:
        if confirmed:
            await outbox.mark_published(conn, confirmed)
        self.published += len(confirmed)
        self.batches += 1
        self._since_report += len(confirmed)
        self._stuck = not confirmed

    async def _report(self, conn: Connection) -> None:
        """Log progress and the backlog at most every ``progress_every`` seconds, when
        something was published since the last report."""
        now = time.monotonic()
        if not self._since_report or now - self._last_report < self._progress_every:
            return
        log.info(
            "outbox relay published %d events (%.0f/s); backlog %d",
            self._since_report,
            self._since_report / (now - self._last_report),
            await outbox.backlog(conn),
            extra={"action": "relay.progress", "published": self._since_report},
        )
        self._last_report, self._since_report = now, 0
