"""The consumer process part: connect, declare, consume, and settle every message exactly once.

Per message: decode it (``consumers.codec``), call its handler with a database that puts the
message's inbox row into the effect's transaction (``repository.inbox``), and only then ack.
Outcomes, each logged with the event id:

- **applied**: the effect and its inbox row committed -> ack.
- **ignored**: handled, deliberately without an effect (e.g. a cancellation of a period already
  refunded) -> an inbox row with the reason, then ack.
- **duplicate**: the inbox has the event id -> ack, nothing else.
- **dead-lettered**: the message cannot be parsed, has the wrong type, or the application
  refused it (``consumers.failures``) -> published to the dead-letter exchange with the reason
  in its headers (publisher-confirmed), then acked.
- **retry**: a transient failure (database down, deadlock...) -> after a backoff that doubles
  per delivery (``CONSUMER_RETRY_DELAY_MS``, at most 30 s) nacked back to the queue; on the
  delivery that reaches ``CONSUMER_DELIVERY_LIMIT`` it is dead-lettered instead, with the last
  error. The quorum queue's own ``x-delivery-limit`` (the same number) is the backstop for a
  message whose handling never finishes (the process dies each time).

Messages are handled concurrently, at most the prefetch count per queue. Each is handled in a
task of its own rather than in the channel's callback, so a broker connection lost mid-way
does not cancel a database transaction half done: the handler finishes, its ack fails, the
broker redelivers the message on the new connection and the inbox makes it a duplicate.
``aio_pika.connect_robust`` reconnects after a broker restart and restores the channels, the
queues and the consumers; a broker that is down at start-up is retried here, with backoff,
without holding up the rest of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from consumers import failures, topology
from consumers.codec import Envelope, decode
from consumers.handlers import SPECS, Context, EventSpec, Handled
from repository import inbox
from repository.database import Database
from service import broker, correlation
from service.config import Config
from service.errors import ServiceError
from service.metrics import Metrics
from service.retries import RetryContext

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 30.0
MAX_SETUP_DELAY = 30.0
MAX_REASON = 2000  # characters of an error kept in the dead-letter header


class _RetryNoise(logging.Filter):
    """Drops the AMQP client's own lines about a connection attempt that failed: aiormq's
    ERROR "error when creating transport" and aio-pika's "closed. Reconnecting" after it.
    Whoever made the attempt gets the exception and says what it means (the consumers once,
    in ``_log_broker_unavailable``), so a broker that is down is not an ERROR every second."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (
            text.startswith("error when creating transport")
            or (record.name == "aio_pika.robust_connection" and "closed. Reconnecting" in text)
        )


_RETRY_NOISE = _RetryNoise()


def _quiet_connection_retries() -> None:
    for name in ("aiormq.connection", "aio_pika.robust_connection"):
        logger = logging.getLogger(name)
        if _RETRY_NOISE not in logger.filters:
            logger.addFilter(_RETRY_NOISE)


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the message was delivered before this delivery (the quorum queue's
    ``x-delivery-count`` header; 0 or 1 from the redelivered flag on a classic queue)."""
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and count >= 0:
        return count
    return 1 if message.redelivered else 0


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def retry_delay(base: float, delivery: int) -> float:
    """The wait before the ``delivery``-th delivery's message goes back to the queue."""
    return min(base * 2.0 ** max(delivery - 1, 0), MAX_RETRY_DELAY)


class Consumers:
    """The three consumers of the billing system's events, on one robust connection."""

    def __init__(
        self,
        config: Config,
        db: Database,
        retry_context: RetryContext,
        *,
        specs: dict[str, EventSpec] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()  # each outcome is counted where it is logged
        self.db = db
        self.topology = topology.Topology.from_config(config)
        self.context = Context(retry_context)
        self.specs = SPECS if specs is None else specs
        self.ready = asyncio.Event()  # set once queues are declared and consumed
        self._stopping = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._dead_letters: AbstractExchange | None = None
        self._consuming: list[tuple[AbstractQueue, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._setup: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and consume in the background; ``ready`` is set when consuming."""
        self._setup = asyncio.create_task(self._set_up_until_done(), name="consumers-setup")

    async def stop(self, grace: float) -> None:
        """Stop taking messages, let those in hand finish within ``grace`` seconds (the rest
        are cancelled and redelivered later), close the connection."""
        self._stopping.set()
        if self._setup is not None:
            self._setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._setup
        for queue, tag in self._consuming:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consuming.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close()
        log.info("consumers stopped", extra={"action": "consumer.stopped"})

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _set_up_until_done(self) -> None:
        """Connect, declare and consume, retrying with backoff until it works. A broker that
        cannot be reached is said once, in one line (the retries are DEBUG lines); any other
        failure (e.g. a queue declared elsewhere with other arguments) at every try."""
        delay = 1.0
        failures = 0
        _quiet_connection_retries()
        while not self._stopping.is_set():
            try:
                await self._set_up()
            except Exception as exc:
                failures += 1
                unreachable = isinstance(exc, OSError | TimeoutError)
                if unreachable and failures == 1:
                    self._log_broker_unavailable(exc)
                else:
                    log.log(
                        logging.DEBUG if unreachable else logging.WARNING,
                        "cannot consume from RabbitMQ (%s); trying again in %.0f s",
                        broker.connection_failure(exc, self.config.rabbitmq_url),
                        delay,
                        extra={"action": "consumer.setup_failed", "error": type(exc).__name__},
                    )
                self._consuming.clear()
                await self._close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, MAX_SETUP_DELAY)
                continue
            self.ready.set()
            log.info(
                "consuming %s from exchange %s%s",
                ", ".join(self.topology.queue_name(t) for t in self.specs),
                self.topology.billing_exchange,
                f" (RabbitMQ is reachable after {failures} failed tries)" if failures else "",
                extra={
                    "action": "consumer.started",
                    "prefetch": self.config.consumer_prefetch,
                    "failed_tries": failures,
                },
            )
            return

    def _log_broker_unavailable(self, exc: BaseException) -> None:
        parts = urlsplit(self.config.rabbitmq_url)
        try:
            port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        except ValueError:
            port = 5672
        relay = " and the outbox relay (events wait in the outbox)" if self.config.relay else ""
        log.warning(
            "RabbitMQ is not reachable at %s:%s (%s): the consumers of the billing system's "
            "events%s are off until it is; gRPC, HTTP and the billing job keep running, and "
            "the connection is retried in the background",
            parts.hostname,
            port,
            exc,
            relay,
            extra={
                "action": "consumer.setup_failed",
                "error": type(exc).__name__,
                "broker_unavailable": True,
            },
        )

    async def _set_up(self) -> None:
        connection = self._connection = await aio_pika.connect_robust(
            self.config.rabbitmq_url,
            reconnect_interval=1,
            client_properties={"connection_name": "refund-retry consumers"},
        )
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.config.consumer_prefetch)
        declared = await topology.declare(channel, self.topology, list(self.specs))
        publisher = await connection.channel(publisher_confirms=True)
        self._dead_letters = await topology.declare_dead_letter_exchange(publisher, self.topology)
        for event_type, queue in declared.queues.items():
            callback = functools.partial(self._deliver, self.specs[event_type])
            self._consuming.append((queue, await queue.consume(callback)))

    def _on_connection_lost(self, _: Any, exc: BaseException | None = None) -> None:
        if not self._stopping.is_set():
            log.warning(
                "lost the RabbitMQ connection (%s); reconnecting",
                exc,
                extra={"action": "consumer.disconnected"},
            )

    def _on_reconnected(self, _: Any) -> None:
        log.info("reconnected to RabbitMQ", extra={"action": "consumer.reconnected"})

    # -- one message ----------------------------------------------------------------------

    async def _deliver(self, spec: EventSpec, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle_safely(spec, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_safely(self, spec: EventSpec, message: AbstractIncomingMessage) -> None:
        """``_handle``, and if it fails itself (a bug), the message back to the queue rather
        than held unacknowledged, blocking a prefetch slot, until the connection closes."""
        try:
            await self._handle(spec, message)
        except Exception:
            log.exception(
                "%s: handling a message failed",
                spec.event_type,
                extra={"action": "consumer.internal_error", "consumer": spec.event_type},
            )
            await self._settle(message, ack=False)

    async def _handle(self, spec: EventSpec, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        # Its own task (see the module docstring): the id holds for this message's work only.
        correlation.begin(message.correlation_id or _header(message, correlation.METADATA_KEY))
        delivery = delivery_count(message) + 1
        event_id: str | None = None
        try:
            event_id, event = decode(
                Envelope(
                    body=message.body,
                    content_type=message.content_type,
                    type=message.type,
                    headers=message.headers or {},
                    message_id=message.message_id,
                ),
                spec.event_type,
                spec.message_class,
            )
            entry = inbox.Entry(spec.event_type, event_id, spec.event_type, datetime.now(UTC))
            outcome, handled = await self._apply(spec, entry, event)
        except Exception as exc:
            await self._failed(spec, message, exc, event_id, delivery)
            return
        acked = await self._settle(message, ack=True)
        self.metrics.consumer_outcome(spec.event_type, outcome, delivery=delivery)
        log.info(
            "%s event %s %s: %s%s",
            spec.event_type,
            event_id,
            outcome,
            handled.note,
            "" if acked else " (ack lost: the broker redelivers it, the inbox drops it)",
            extra={
                "action": f"consumer.{outcome}",
                "consumer": spec.event_type,
                "event_id": event_id,
                "delivery": delivery,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                **handled.ids,
            },
        )

    async def _apply(self, spec: EventSpec, entry: inbox.Entry, event: Any) -> tuple[str, Handled]:
        """Run the handler with the inbox; ("applied" | "ignored" | "duplicate", what it did)."""
        db = inbox.InboxDatabase(self.db, entry)
        try:
            handled = await spec.handler(self.context, db, entry.event_id, event)
            if db.claimed:
                return "applied", handled
            async with self.db.transaction() as conn:
                if not await inbox.claim(conn, entry, inbox.Outcome.IGNORED, handled.note):
                    raise inbox.AlreadyProcessed(entry)
            return "ignored", handled
        except inbox.AlreadyProcessed:
            return "duplicate", Handled(False, f"event {entry.event_id} was handled before")

    async def _failed(
        self,
        spec: EventSpec,
        message: AbstractIncomingMessage,
        exc: Exception,
        event_id: str | None,
        delivery: int,
    ) -> None:
        error = exc.message if isinstance(exc, ServiceError) else str(exc)
        error = error or type(exc).__name__
        extra = {
            "consumer": spec.event_type,
            "event_id": event_id,
            "delivery": delivery,
            "error": type(exc).__name__,
        }
        if not failures.expected(exc):
            log.error(
                "%s: unexpected error handling event %s",
                spec.event_type,
                event_id,
                exc_info=exc,
                extra={"action": "consumer.unexpected_error", **extra},
            )
        if failures.verdict(exc) is failures.Verdict.DEAD_LETTER:
            await self._dead_letter(spec, message, error, event_id, delivery)
            return
        limit = self.config.consumer_delivery_limit
        if delivery >= limit:
            reason = f"still failing after {delivery} deliveries: {type(exc).__name__}: {error}"
            await self._dead_letter(spec, message, reason, event_id, delivery)
            return
        delay = retry_delay(self.config.consumer_retry_delay_ms / 1000, delivery)
        log.warning(
            "%s: event %s failed (%s); delivery %d of %d again in %.1f s",
            spec.event_type,
            event_id,
            error,
            delivery + 1,
            limit,
            delay,
            extra={"action": "consumer.retry", **extra},
        )
        self.metrics.consumer_outcome(spec.event_type, "retry", delivery=delivery)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        await self._settle(message, ack=False)

    async def _dead_letter(
        self,
        spec: EventSpec,
        message: AbstractIncomingMessage,
        reason: str,
        event_id: str | None,
        delivery: int,
    ) -> None:
        """Publish the message to the dead-letter exchange with why, then ack it. If the
        publish is not confirmed the message goes back to the queue instead (never lost)."""
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-death-reason": reason[:MAX_REASON],
                "x-death-consumer": spec.event_type,
                "x-death-time": datetime.now(UTC).isoformat(),
                "x-original-exchange": message.exchange or "",
                "x-original-routing-key": message.routing_key or "",
                "x-event-id": event_id or "",
                "x-deliveries": delivery,
            }
        )
        try:
            assert self._dead_letters is not None
            await self._dead_letters.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    type=message.type,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    timestamp=message.timestamp,
                    app_id=message.app_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=message.routing_key or spec.event_type,
            )
        except Exception as exc:
            log.warning(
                "%s: could not dead-letter event %s (%s); it goes back to the queue",
                spec.event_type,
                event_id,
                exc,
                extra={"action": "consumer.dead_letter_failed", "consumer": spec.event_type},
            )
            await self._settle(message, ack=False)
            return
        await self._settle(message, ack=True)
        self.metrics.consumer_outcome(spec.event_type, "dead_lettered", delivery=delivery)
        log.warning(
            "%s: dead-lettered event %s: %s",
            spec.event_type,
            event_id,
            reason,
            extra={
                "action": "consumer.dead_lettered",
                "consumer": spec.event_type,
                "event_id": event_id,
                "delivery": delivery,
                "routing_key": message.routing_key,
            },
        )

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> bool:
        """Ack, or nack back to the queue; False when the channel is gone (the broker then
        redelivers the message by itself)."""
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=True)
        except Exception as exc:
            log.info(
                "could not %s a message (%s): the broker will deliver it again",
                "ack" if ack else "nack",
                exc,
                extra={"action": "consumer.settle_failed"},
            )
            return False
        return True
