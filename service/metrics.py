"""Prometheus metrics, served at ``GET /metrics`` on the HTTP port (``service.http.metrics``).

One :class:`Metrics` per running service, each with its own ``CollectorRegistry`` rather than
the library's global one: the tests start many services in one process, and each must count
its own calls. Parts of the service count what they do through it:

* the gRPC server, through :class:`GrpcMetrics` (a server interceptor): calls by method and
  status code, and their latency;
* the RabbitMQ consumers (``consumers.runner``): messages by event type and outcome, and
  redeliveries;
* the billing job, through :class:`MeteredBillingJob`: every run's refund and payment retry
  outcomes, read from the summary the run returns (a replayed ``RunBillingJob`` runs nothing
  and counts nothing);
* at scrape time (:class:`StateCollector`): the outbox backlog, whether the database answers,
  and each gateway's circuit breaker.

Names follow Prometheus conventions: the ``refund_retry_`` prefix, ``_total`` on counters, the
unit (``_seconds``) in the name, labels for bounded sets only (methods, codes, outcomes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from repository import outbox
from repository.database import Database
from service.gateways.breaker import BreakerState, breaker_states
from service.health import DatabaseHealth
from service.jobs.billing_job import BillingJob, JobRequest, JobSummary

log = logging.getLogger(__name__)

PREFIX = "refund_retry_"

# Consumer outcomes (consumers/runner.py logs each as ``consumer.<outcome>``).
CONSUMER_OUTCOMES = ("applied", "ignored", "duplicate", "dead_lettered", "retry")

# JobSummary attribute -> the outcome label (the names JobSummary.count is given).
REFUND_OUTCOMES = {
    "succeeded": "succeeded",
    "pending_at_gateway": "pending",
    "retries_scheduled": "retry",
    "failed": "failed",
    "requires_action": "requires_action",
    "unknown": "unknown",
    "lease_lost": "lease_lost",
    "errors": "error",
    "not_attempted": "not_attempted",
}
# RetrySummary attribute -> the outcome label of a payment retry attempt.
RETRY_OUTCOMES = {
    "recovered": "recovered",
    "rescheduled": "rescheduled",
    "waiting_for_customer": "waiting_for_customer",
    "exhausted": "exhausted",
    "blocked_by_rules": "blocked_by_rules",
    "unknown": "unknown",
    "not_attempted": "not_attempted",
    "card_busy": "card_busy",
    "lease_lost": "lease_lost",
    "settled_meanwhile": "settled_meanwhile",
    "errors": "error",
}

BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

# A scrape waits at most this long for the outbox count; then it reports the last one.
BACKLOG_TIMEOUT = 2.0


class Metrics:
    """The service's metrics and the registry they are exposed from."""

    def __init__(self) -> None:
        # No ``*_created`` series beside each counter: the text format makes them gauges of
        # their own, which double the series and which no dashboard reads.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.grpc_handled = Counter(
            f"{PREFIX}grpc_server_handled",
            "gRPC calls completed, by method and status code",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            f"{PREFIX}grpc_server_handling_seconds",
            "gRPC call latency (a stream: until it ends)",
            ["grpc_service", "grpc_method", "grpc_type"],
            registry=r,
        )
        self.consumed = Counter(
            f"{PREFIX}messages_consumed",
            "RabbitMQ messages handled, by event type and outcome",
            ["event_type", "outcome"],
            registry=r,
        )
        self.redelivered = Counter(
            f"{PREFIX}messages_redelivered",
            "RabbitMQ deliveries of a message delivered before",
            ["event_type"],
            registry=r,
        )
        self.job_runs = Counter(
            f"{PREFIX}billing_job_runs", "billing job runs completed", registry=r
        )
        self.job_seconds = Histogram(
            f"{PREFIX}billing_job_run_seconds",
            "billing job run duration",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.job_refunds = Counter(
            f"{PREFIX}billing_job_refunds",
            "refund details processed by the billing job, by outcome",
            ["outcome"],
            registry=r,
        )
        self.job_retries = Counter(
            f"{PREFIX}billing_job_retry_attempts",
            "payment retry plans processed by the billing job, by outcome",
            ["outcome"],
            registry=r,
        )
        self.job_lease_renewals = Counter(
            f"{PREFIX}billing_job_lease_renewals",
            "payment retry plans whose lease the billing job renewed while their chunk was "
            "still charging (a gateway slower than a third of LEASE_SECONDS), each time it did",
            registry=r,
        )
        # Every known outcome is exported from the start (at 0), so rates work from the first
        # event on.
        for outcome in REFUND_OUTCOMES.values():
            self.job_refunds.labels(outcome)
        for outcome in RETRY_OUTCOMES.values():
            self.job_retries.labels(outcome)
        self.grpc_interceptor = GrpcMetrics(self)
        self.state: StateCollector | None = None

    def watch(self, db: Database, health: DatabaseHealth, gateways: Mapping[str, object]) -> None:
        """Export, at each scrape, the outbox backlog, the database's health and the
        gateways' breakers."""
        self.state = StateCollector(db, health, gateways)
        self.registry.register(self.state)

    def consumer_outcome(self, event_type: str, outcome: str, *, delivery: int) -> None:
        """One message settled with ``outcome``; ``delivery`` counts from 1."""
        self.consumed.labels(event_type, outcome).inc()
        if delivery > 1:
            self.redelivered.labels(event_type).inc()

    def billing_run(self, summary: JobSummary) -> None:
        self.job_runs.inc()
        self.job_seconds.observe(summary.elapsed.total_seconds())
        for attribute, outcome in REFUND_OUTCOMES.items():
            self.job_refunds.labels(outcome).inc(getattr(summary, attribute))
        for attribute, outcome in RETRY_OUTCOMES.items():
            self.job_retries.labels(outcome).inc(getattr(summary.payment_retries, attribute))
        self.job_lease_renewals.inc(summary.payment_retries.leases_renewed)

    async def exposition(self) -> bytes:
        """The text a scrape gets (the outbox backlog refreshed first)."""
        if self.state is not None:
            await self.state.refresh()
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Values read when scraped rather than counted as they happen. The outbox backlog needs
    a query, which a collector (synchronous) cannot run: :meth:`refresh` runs it before the
    registry is read, and keeps the last value when the database does not answer, so a
    scrape never fails (``refund_retry_database_up`` then says why the value is old)."""

    def __init__(
        self, db: Database, health: DatabaseHealth, gateways: Mapping[str, object]
    ) -> None:
        self._db = db
        self._health = health
        self._gateways = gateways
        self.backlog: int | None = None  # None until the first count

    async def refresh(self) -> None:
        if not self._health.ready:  # the monitor found it down: no wait on a dead pool
            return
        try:
            async with asyncio.timeout(BACKLOG_TIMEOUT), self._db.connection() as conn:
                self.backlog = await outbox.backlog(conn)
        except Exception as exc:  # the last value stays; the health monitor reports the cause
            log.debug(
                "cannot count the outbox backlog: %s", exc, extra={"action": "metrics.backlog"}
            )

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}database_up", "1 if the last database health check succeeded, else 0"
        )
        up.add_metric([], 1 if self._health.ready else 0)
        yield up
        if self.backlog is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}outbox_unpublished_events",
                "outbox events not yet published to RabbitMQ (the last count read)",
                value=self.backlog,
            )
        state = GaugeMetricFamily(
            f"{PREFIX}gateway_breaker_state",
            "gateway circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["gateway"],
        )
        opened = CounterMetricFamily(
            f"{PREFIX}gateway_breaker_opened",
            "times the gateway's circuit breaker opened since the process started",
            labels=["gateway"],
        )
        for name, snapshot in sorted(breaker_states(self._gateways).items()):
            state.add_metric([name], BREAKER_VALUES[snapshot.state])
            opened.add_metric([name], snapshot.opened)
        yield state
        yield opened

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the backlog's presence: collected at every scrape


Behaviour = Callable[[Any, Any], Any]  # a method's handler: (request, context) -> ...


def _code(context: Any, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the handler set or aborted with (None when it set none)."""
    code: grpc.StatusCode | None = context.code()
    return code or default


if TYPE_CHECKING:  # generic in the stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class GrpcMetrics(_Interceptor):
    """Counts every unary and server-streaming call when it ends, with its status code:
    the code the handler aborted with or set, OK when it returned, CANCELLED when the
    client went away, UNKNOWN for an exception that escaped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:  # the stubs miss that a handler may be None
        handler: Any = await continuation(handler_call_details)  # None: no such method
        if handler is None:  # not counted: its name is not a label value anyone chose
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client and bidirectional streams (reflection): not counted

    def _unary(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behaviour(request, context)
                code = _code(context, grpc.StatusCode.OK)
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = _code(context, grpc.StatusCode.UNKNOWN)  # set by an abort
                raise
            finally:
                self._observe(service, method, "unary", code, started)

        return call

    def _stream(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in behaviour(request, context):
                    yield response
                code = _code(context, grpc.StatusCode.OK)
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                self._observe(service, method, "server_stream", code, started)

        return call

    def _observe(
        self, service: str, method: str, kind: str, code: grpc.StatusCode, started: float
    ) -> None:
        m = self._metrics
        m.grpc_handled.labels(service, method, kind, code.name).inc()
        m.grpc_seconds.labels(service, method, kind).observe(time.perf_counter() - started)


class MeteredBillingJob(BillingJob):
    """The billing job, each run counted in ``metrics`` from the summary it returns: the
    background loop's runs, ``RunBillingJob``'s and any other caller's alike."""

    def __init__(self, metrics: Metrics, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    async def run(self, request: JobRequest) -> JobSummary:
        summary = await super().run(request)
        self.metrics.billing_run(summary)
        return summary
