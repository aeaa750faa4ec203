"""One lifecycle for every long-running part: pool -> gateways -> billing job -> HTTP, gRPC; stopped
in reverse by one stop event, with a bounded grace period."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from consumers.runner import Consumers
from refundretry.v1 import refund_retry_service_pb2, refund_retry_service_pb2_grpc
from repository.database import Database, pending_migrations
from service import analytics, correlation
from service.config import PREFIX, ROLES, Config
from service.domain.network_rules import NetworkLimits
from service.errors import ConfigError
from service.gateways.adyen_notifications import parse_hmac_keys
from service.gateways.base import ChargingGateway
from service.gateways.breaker import with_breakers
from service.gateways.sandbox import SandboxGateway
from service.grpc.servicer import RefundRetryServicer
from service.health import DatabaseHealth
from service.http.analytics import AnalyticsRoutes
from service.http.dashboard import DashboardRoutes
from service.http.health import HealthRoutes
from service.http.metrics import MetricsRoutes
from service.http.server import HttpServer, Routes
from service.http.webhooks import WebhookRoutes, WebhookSecrets
from service.jobs.billing_job import BillingJob, JobRequest
from service.jobs.retry_job import RetryJob
from service.metrics import MeteredBillingJob, Metrics
from service.outbox import retention
from service.outbox.feed import EventFeed
from service.outbox.relay import Relay
from service.retries import RetryContext
from service.tls import Security
from service.tls import load as load_transport
from service.webhooks import WebhookEvents, with_reported_outcomes

log = logging.getLogger(__name__)
SERVICE_NAME = refund_retry_service_pb2.DESCRIPTOR.services_by_name["RefundRetryService"].full_name


def build_gateways(config: Config) -> dict[str, ChargingGateway]:
    gateways: dict[str, ChargingGateway] = {"sandbox": SandboxGateway()}
    if config.stripe_api_key:
        from service.gateways.stripe_gateway import StripeGateway

        gateways["stripe"] = StripeGateway(config.stripe_api_key, config.stripe_api_base or None)
    if config.adyen_api_key:
        gateways["adyen"] = _adyen_gateway(config)
    # Each behind its circuit breaker, so the refund and the retry jobs both use it.
    return with_breakers(
        gateways,
        failure_threshold=config.breaker_failures,
        cooldown_seconds=config.breaker_cooldown_seconds,
    )


def _adyen_gateway(config: Config) -> ChargingGateway:
    """The Adyen gateway of ``config``; its settings are checked together here."""
    from service.gateways.adyen_gateway import AdyenGateway

    if not config.adyen_merchant_account:
        raise ConfigError(f"{PREFIX}ADYEN_API_KEY is set: set {PREFIX}ADYEN_MERCHANT_ACCOUNT too")
    live = config.adyen_environment == "live"
    if live and not config.adyen_live_url_prefix and not config.adyen_api_base:
        raise ConfigError(
            f"{PREFIX}ADYEN_ENVIRONMENT=live needs {PREFIX}ADYEN_LIVE_URL_PREFIX "
            "(Customer Area > Developers > API URLs)"
        )
    if "-live" in config.adyen_api_base:
        raise ConfigError(
            f"{PREFIX}ADYEN_API_BASE must not name a live endpoint: set "
            f"{PREFIX}ADYEN_ENVIRONMENT=live and {PREFIX}ADYEN_LIVE_URL_PREFIX instead"
        )
    return AdyenGateway(
        config.adyen_api_key,
        config.adyen_merchant_account,
        environment=config.adyen_environment,
        live_url_prefix=config.adyen_live_url_prefix,
        api_base=config.adyen_api_base,
        recurring_processing_model=config.adyen_recurring_processing_model,
    )


def build_billing_job(
    config: Config,
    db: Database,
    gateways: dict[str, ChargingGateway],
    metrics: Metrics | None = None,
) -> BillingJob:
    """The billing job: refunds, and payment retries through its ``retry_job``; with
    ``metrics``, every run is counted there."""
    lease = timedelta(seconds=config.lease_seconds)
    unknown_replay = timedelta(seconds=config.unknown_replay_seconds)
    context = RetryContext(limits=NetworkLimits(visa_max_reattempts=config.visa_max_reattempts))
    # Both jobs read a pending refund or charge from its webhook where the gateway cannot be
    # asked about it (Adyen).
    reading = with_reported_outcomes(gateways, db)
    retry_job = RetryJob(
        db,
        reading,
        context,
        lease=lease,
        unknown_replay_delay=unknown_replay,
        chunk=config.retry_chunk,
    )
    make: Callable[..., BillingJob] = (
        BillingJob if metrics is None else functools.partial(MeteredBillingJob, metrics)
    )
    return make(
        db,
        reading,
        lease=lease,
        pending_sync_interval=timedelta(seconds=config.pending_sync_seconds),
        unknown_replay_delay=unknown_replay,
        refund_notification_timeout=timedelta(seconds=config.refund_notification_timeout_seconds),
        retry_job=retry_job,
    )


@dataclass
class Service:
    """A running service; ``port`` is the bound gRPC port (useful when configured as 0)."""

    config: Config
    db: Database
    server: grpc.aio.Server | None  # None when this process has no grpc role
    health: HealthServicer
    gateways: dict[str, ChargingGateway]
    billing_job: BillingJob
    port: int  # the gRPC port (0 without the grpc role)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consumers: Consumers | None = None  # RabbitMQ consumers, when CONSUMERS is true
    feed: EventFeed | None = None  # the outbox tail behind WatchEvents
    relay: Relay | None = None  # the outbox relay to RabbitMQ, when RELAY is true
    http: HttpServer | None = None  # the HTTP port (webhooks); ``http.port`` is the bound port
    database_health: DatabaseHealth | None = None  # behind gRPC health and /readyz
    metrics: Metrics | None = None  # served at /metrics
    _stopped: bool = False

    async def stop(self) -> None:
        """Idempotent: report NOT_SERVING, drain in-flight RPCs within the grace period, stop
        the billing loop, close gateways and the pool."""
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: draining in-flight calls", extra={"action": "service.stopping"})
        if self.database_health is not None:  # it must not report SERVING again
            await self.database_health.stop()
        await self.health.enter_graceful_shutdown()
        if self.feed is not None:  # ends WatchEvents streams, which would hold up the drain
            await self.feed.close()
        # Both ports stop accepting and drain their calls in flight within the grace period.
        await asyncio.gather(
            self.server.stop(self.config.shutdown_grace_seconds)
            if self.server is not None
            else asyncio.sleep(0),
            self.http.stop() if self.http is not None else asyncio.sleep(0),
        )
        if self.consumers is not None:
            await self.consumers.stop(self.config.shutdown_grace_seconds)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for gateway in self.gateways.values():
            await gateway.close()
        await self.db.close()
        log.info("stopped", extra={"action": "service.stopped"})


def build_http_server(
    config: Config,
    db: Database,
    job: BillingJob,
    health: DatabaseHealth,
    metrics: Metrics | None = None,
) -> tuple[HttpServer, WebhookRoutes]:
    """The HTTP port and its routes: gateway webhooks, the health probes, the analytics JSON,
    the dashboard and, given ``metrics``, ``/metrics``."""
    webhooks = WebhookRoutes(
        WebhookEvents(db, job),
        WebhookSecrets(
            stripe_secret=config.stripe_webhook_secret,
            adyen_hmac_keys=parse_hmac_keys(config.adyen_webhook_hmac_keys),
            adyen_username=config.adyen_webhook_username,
            adyen_password=config.adyen_webhook_password,
        ),
    )
    routes: list[Routes] = [
        webhooks,
        HealthRoutes(health),
        AnalyticsRoutes(db, config.require_tokens(), config.analytics_time_zones),
        DashboardRoutes(db, config.require_tokens()),
    ]
    if metrics is not None:
        routes.append(MetricsRoutes(metrics))
    server = HttpServer(
        config.http_host,
        config.http_port,
        routes,
        shutdown_grace=config.shutdown_grace_seconds,
    )
    return server, webhooks


async def _billing_loop(job: BillingJob, interval: int, batch: int) -> None:
    """Run the billing job every ``interval`` seconds, and at once again while a run found a
    full batch of work (a backlog of refund details or of due payment retries)."""
    while True:
        backlog = False
        correlation.begin(None)  # one id per run: its log lines and events share it
        try:
            summary = await job.run(JobRequest(limit=batch))
            # A full batch of refund details or of payment retries: more is waiting.
            backlog = summary.claimed >= batch or summary.payment_retries.claimed >= batch
        except Exception:
            log.exception(
                "billing job run failed; next run in %d s",
                interval,
                extra={"action": "billing_job.failed"},
            )
        await asyncio.sleep(0 if backlog else interval)


async def start(config: Config, *, run_billing_loop: bool = True) -> Service:
    tokens = config.require_tokens()
    transport = load_transport(config, tokens)  # before anything else: bad files fail fast
    db = await Database.connect(config.database_url, max_size=config.db_pool_size)
    async with db.connection() as conn:
        missing = await pending_migrations(conn)
    if missing:
        await db.close()
        raise ConfigError(
            f"the database is not migrated (missing versions {missing}): "
            "run `refund-retry migrate` first"
        )
    gateways = build_gateways(config)
    metrics = Metrics()
    job = build_billing_job(config, db, gateways, metrics)
    retry_job = job.retry_job
    assert retry_job is not None
    database_health = DatabaseHealth(db)
    metrics.watch(db, database_health, gateways)
    roles = config.roles
    http: HttpServer | None = None
    if "http" in roles:
        http, webhooks = build_http_server(config, db, job, database_health, metrics)
        try:
            await http.start()
        except OSError:
            await db.close()
            raise
    feed: EventFeed | None = None
    server: grpc.aio.Server | None = None
    health_servicer = HealthServicer()
    port = 0
    if "grpc" in roles:
        feed = EventFeed(config.database_url, buffer=config.watch_buffer)
        server = grpc.aio.server(
            interceptors=[metrics.grpc_interceptor], options=[("grpc.so_reuseport", 0)]
        )
        refund_retry_service_pb2_grpc.add_RefundRetryServiceServicer_to_server(
            RefundRetryServicer(
                db, tokens, job, retry_job, feed, analytics_zones=config.analytics_time_zones
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{config.grpc_host}:{config.grpc_port}"
        port = transport.add_port(server, address)
        if port == 0:
            if http is not None:
                await http.stop()
            await db.close()
            raise OSError(f"cannot listen for gRPC on {address}: in use or not an address here")
        await server.start()

    async def report(ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        for name in (SERVICE_NAME, ""):
            await health_servicer.set(name, status)

    await report(True)
    database_health.listen(report)
    database_health.start()
    service = Service(
        config,
        db,
        server,
        health_servicer,
        gateways,
        job,
        port,
        feed=feed,
        http=http,
        database_health=database_health,
        metrics=metrics,
    )
    if http is not None:
        log.info(
            "serving HTTP on %s:%d (webhooks: %s)",
            config.http_host,
            http.port,
            ", ".join(f"{gateway} {state}" for gateway, state in webhooks.describe().items()),
            extra={"action": "http.started", "port": http.port, "webhooks": webhooks.describe()},
        )
    if config.relay and "relay" in roles:
        service.relay = Relay(
            config.database_url,
            config.rabbitmq_url,
            config.events_exchange,
            batch=config.relay_batch,
        )
        service.tasks.append(asyncio.create_task(service.relay.run(), name="outbox-relay"))
    if config.consumers and "consumers" in roles:
        service.consumers = Consumers(config, db, retry_job.context, metrics=metrics)
        service.consumers.start()
    run_billing_loop = run_billing_loop and "scheduler" in roles
    if run_billing_loop and config.billing_job_interval:
        service.tasks.append(
            asyncio.create_task(
                _billing_loop(job, config.billing_job_interval, config.billing_job_batch),
                name="billing-job",
            )
        )
    if run_billing_loop and config.outbox_retention_days:
        service.tasks.append(
            asyncio.create_task(
                retention.prune_loop(db, config.outbox_retention_days), name="outbox-retention"
            )
        )
    if run_billing_loop and config.analytics_rollup_seconds:
        # The analytics fold: its own task, so a slow fold never delays the billing job.
        service.tasks.append(
            asyncio.create_task(
                analytics.rollup_loop(
                    db, config.analytics_time_zones, config.analytics_rollup_seconds
                ),
                name="analytics-rollup",
            )
        )
    if set(ROLES) - roles:
        log.info(
            "this process's roles: %s (not %s)",
            ", ".join(r for r in ROLES if r in roles),
            ", ".join(r for r in ROLES if r not in roles),
            extra={"action": "service.roles", "roles": [r for r in ROLES if r in roles]},
        )
    if server is not None:
        log.log(
            logging.WARNING if transport.security is Security.PLAINTEXT else logging.INFO,
            "serving gRPC on %s:%d over %s",
            config.grpc_host,
            port,
            transport.describe(),
            extra={
                "action": "service.started",
                "port": port,
                "transport": transport.security.value,
                "gateways": sorted(gateways),
            },
        )
    else:
        log.info(
            "started without gRPC",
            extra={"action": "service.started", "port": 0, "gateways": sorted(gateways)},
        )
    return service


# The youngest generation's threshold in a long-running service (CPython's default: 700).
GC_YOUNGEST = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage less often in a long-running process: what is alive once it has
    started (modules, protobuf descriptors, the configuration, the pools) moves to a
    generation the collector never walks again (``gc.freeze``), and the youngest generation
    is collected after GC_YOUNGEST net allocations of containers instead of 700. The billing
    job allocates messages, records and dicts for every payment retry, and reference counting
    frees nearly all of them: with CPython's defaults the collector took about 5 % of the
    job's CPU (bench/retry_throughput.py B3, with it off: 0.199 against 0.210 ms per
    attempt)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNGEST, *gc.get_threshold()[1:])


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    service = await start(config)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_signal = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        # Stop on a signal, or when a background part (the billing loop) dies.
        await asyncio.wait([stop_signal, *service.tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_signal.cancel()
        await service.stop()
