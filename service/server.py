"""One lifecycle for every long-running part: pool -> gateways -> billing job -> gRPC; stopped
in reverse by one stop event, with a bounded grace period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from consumers.runner import Consumers
from refundretry.v1 import refund_retry_service_pb2, refund_retry_service_pb2_grpc
from repository.database import Database, pending_migrations
from service.config import Config
from service.domain.network_rules import NetworkLimits
from service.errors import ConfigError
from service.gateways.base import ChargingGateway
from service.gateways.sandbox import SandboxGateway
from service.grpc.servicer import RefundRetryServicer
from service.jobs.billing_job import BillingJob, JobRequest
from service.jobs.retry_job import RetryJob
from service.outbox.feed import EventFeed
from service.outbox.relay import Relay
from service.retries import RetryContext

log = logging.getLogger(__name__)
SERVICE_NAME = refund_retry_service_pb2.DESCRIPTOR.services_by_name["RefundRetryService"].full_name


def build_gateways(config: Config) -> dict[str, ChargingGateway]:
    gateways: dict[str, ChargingGateway] = {"sandbox": SandboxGateway()}
    if config.stripe_api_key:
        from service.gateways.stripe_gateway import StripeGateway

        gateways["stripe"] = StripeGateway(config.stripe_api_key, config.stripe_api_base or None)
    return gateways


def build_billing_job(
    config: Config, db: Database, gateways: dict[str, ChargingGateway]
) -> BillingJob:
    """The billing job: refunds, and payment retries through its ``retry_job``."""
    lease = timedelta(seconds=config.lease_seconds)
    unknown_replay = timedelta(seconds=config.unknown_replay_seconds)
    context = RetryContext(limits=NetworkLimits(visa_max_reattempts=config.visa_max_reattempts))
    retry_job = RetryJob(db, gateways, context, lease=lease, unknown_replay_delay=unknown_replay)
    return BillingJob(
        db,
        gateways,
        lease=lease,
        pending_sync_interval=timedelta(seconds=config.pending_sync_seconds),
        unknown_replay_delay=unknown_replay,
        retry_job=retry_job,
    )


@dataclass
class Service:
    """A running service; ``port`` is the bound gRPC port (useful when configured as 0)."""

    config: Config
    db: Database
    server: grpc.aio.Server
    health: HealthServicer
    gateways: dict[str, ChargingGateway]
    billing_job: BillingJob
    port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consumers: Consumers | None = None  # RabbitMQ consumers, when CONSUMERS is true
    feed: EventFeed | None = None  # the outbox tail behind WatchEvents
    relay: Relay | None = None  # the outbox relay to RabbitMQ, when RELAY is true
    _stopped: bool = False

    async def stop(self) -> None:
        """Idempotent: report NOT_SERVING, drain in-flight RPCs within the grace period, stop
        the billing loop, close gateways and the pool."""
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: draining in-flight calls", extra={"action": "service.stopping"})
        await self.health.enter_graceful_shutdown()
        if self.feed is not None:  # ends WatchEvents streams, which would hold up the drain
            await self.feed.close()
        await self.server.stop(self.config.shutdown_grace_seconds)
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


async def _billing_loop(job: BillingJob, interval: int, batch: int) -> None:
    """Run the billing job every ``interval`` seconds, and at once again while a run found a
    full batch of work (a backlog)."""
    while True:
        backlog = False
        try:
            summary = await job.run(JobRequest(limit=batch))
            backlog = summary.claimed >= batch
        except Exception:
            log.exception(
                "billing job run failed; next run in %d s",
                interval,
                extra={"action": "billing_job.failed"},
            )
        await asyncio.sleep(0 if backlog else interval)


async def start(config: Config, *, run_billing_loop: bool = True) -> Service:
    tokens = config.require_tokens()
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
    job = build_billing_job(config, db, gateways)
    retry_job = job.retry_job
    assert retry_job is not None
    feed = EventFeed(config.database_url, buffer=config.watch_buffer)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    refund_retry_service_pb2_grpc.add_RefundRetryServiceServicer_to_server(
        RefundRetryServicer(db, tokens, job, retry_job, feed), server
    )
    health_servicer = HealthServicer()
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
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's way of saying the port is taken or the host is wrong
        port = 0
    if port == 0:
        await db.close()
        raise OSError(f"cannot listen for gRPC on {address}: in use or not an address here")
    await server.start()
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    service = Service(config, db, server, health_servicer, gateways, job, port, feed=feed)
    if config.relay:
        service.relay = Relay(
            config.database_url,
            config.rabbitmq_url,
            config.events_exchange,
            batch=config.relay_batch,
        )
        service.tasks.append(asyncio.create_task(service.relay.run(), name="outbox-relay"))
    if config.consumers:
        service.consumers = Consumers(config, db, retry_job.context)
        service.consumers.start()
    if run_billing_loop and config.billing_job_interval:
        service.tasks.append(
            asyncio.create_task(
                _billing_loop(job, config.billing_job_interval, config.billing_job_batch),
                name="billing-job",
            )
        )
    log.info(
        "serving gRPC on %s:%d",
        config.grpc_host,
        port,
        extra={"action": "service.started", "port": port, "gateways": sorted(gateways)},
    )
    return service


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    service = await start(config)
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
