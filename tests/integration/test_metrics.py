"""``GET /metrics`` as a Prometheus server (and the engineer reading its graphs) sees it:
gRPC calls by method and status code, billing job outcomes, the outbox backlog (still
reported while the database is down), and the gateways' circuit breakers."""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service.gateways.breaker import BreakerGateway
from service.jobs.billing_job import JobSummary
from service.jobs.retry_job import RetrySummary
from service.metrics import Metrics
from service.server import Service
from tests.conftest import database_unreachable
from tests.integration import builders as b
from tests.integration.conftest import Client

SERVICE = "refundretry.v1.RefundRetryService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: Service) -> Samples:
    """Every sample of a scrape, by name and labels."""
    assert service.http is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.http.port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return parse(text)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def calls(samples: Samples, method: str, code: str, kind: str = "unary") -> float | None:
    return value(
        samples,
        "refund_retry_grpc_server_handled_total",
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_type=kind,
        grpc_code=code,
    )


async def test_grpc_calls_are_counted_by_method_and_status_code(client: Client) -> None:
    payment = await b.record_payment(client)
    await b.get_payment(client, payment.payment_id)
    await b.get_payment(client, payment.payment_id)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await b.get_payment(client, "inv_does_not_exist")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError):
        await client.call(None, "GetPayment", pb.GetPaymentRequest(payment_id="inv_1"))
    stream: Any = client.stub.WatchEvents(
        pb.WatchEventsRequest(until_caught_up=True),
        metadata=(("authorization", "Bearer t-reader"),),
        timeout=30,
    )
    events = [response async for response in stream]
    assert events  # the payment's event: the stream ended once caught up

    samples = await scrape(client.service)

    assert calls(samples, "RecordPayment", "OK") == 1
    assert calls(samples, "GetPayment", "OK") == 2
    assert calls(samples, "GetPayment", "NOT_FOUND") == 1
    assert calls(samples, "GetPayment", "UNAUTHENTICATED") == 1
    assert calls(samples, "WatchEvents", "OK", "server_stream") == 1
    latency = {"grpc_service": SERVICE, "grpc_method": "GetPayment", "grpc_type": "unary"}
    assert value(samples, "refund_retry_grpc_server_handling_seconds_count", **latency) == 4
    assert value(samples, "refund_retry_grpc_server_handling_seconds_bucket", le="+Inf", **latency)


async def test_billing_job_outcomes_are_counted_per_run(client: Client) -> None:
    samples = await scrape(client.service)
    assert value(samples, "refund_retry_billing_job_runs_total") == 0
    assert value(samples, "refund_retry_billing_job_refunds_total", outcome="succeeded") == 0
    payment = await b.record_payment(client)
    refund = await b.create_refund(client, payment.payment_id)
    await b.approve(client, refund.refund_id)

    request = pb.RunBillingJobRequest(
        request_id=b.request_id(), process_new_refunds=True, process_due_retries=True
    )
    summary = (await client.call("t-ops", "RunBillingJob", request)).summary
    assert summary.refunds_succeeded == 1
    await client.call("t-ops", "RunBillingJob", request)  # replayed: no second run

    samples = await scrape(client.service)
    assert value(samples, "refund_retry_billing_job_runs_total") == 1
    assert value(samples, "refund_retry_billing_job_refunds_total", outcome="succeeded") == 1
    assert value(samples, "refund_retry_billing_job_refunds_total", outcome="failed") == 0
    assert value(samples, "refund_retry_billing_job_retry_attempts_total", outcome="recovered") == 0
    assert value(samples, "refund_retry_billing_job_run_seconds_count") == 1


def test_lease_renewals_are_counted_apart_from_outcomes() -> None:
    """A run whose chunks outlived a third of the lease: its renewals are their own counter
    (they are not outcomes of attempts), starting at 0."""
    metrics = Metrics()
    samples = parse(generate_latest(metrics.registry).decode())
    assert samples[("refund_retry_billing_job_lease_renewals_total", frozenset())] == 0
    metrics.billing_run(JobSummary(payment_retries=RetrySummary(recovered=2, leases_renewed=3)))
    samples = parse(generate_latest(metrics.registry).decode())
    assert samples[("refund_retry_billing_job_lease_renewals_total", frozenset())] == 3
    assert value(samples, "refund_retry_billing_job_retry_attempts_total", outcome="recovered") == 2


async def test_breaker_state_and_openings_per_gateway(client: Client) -> None:
    samples = await scrape(client.service)
    assert value(samples, "refund_retry_gateway_breaker_state", gateway="sandbox") == 0
    assert value(samples, "refund_retry_gateway_breaker_opened_total", gateway="sandbox") == 0
    sandbox = client.service.gateways["sandbox"]
    assert isinstance(sandbox, BreakerGateway)
    breaker = sandbox.breaker
    for _ in range(breaker.failure_threshold):  # the sandbox fails that often in a row
        admitted = breaker.admit()
        assert admitted is not None
        breaker.record(admitted, failed=True)

    samples = await scrape(client.service)
    assert value(samples, "refund_retry_gateway_breaker_state", gateway="sandbox") == 2
    assert value(samples, "refund_retry_gateway_breaker_opened_total", gateway="sandbox") == 1


async def unpublished(db: Database) -> int:
    async with db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def test_outbox_backlog_is_reported_and_kept_while_the_database_is_down(
    client: Client, database_url: str
) -> None:
    service = client.service
    payment = await b.record_payment(client)
    await b.create_refund(client, payment.payment_id)  # the relay is off: events wait
    backlog = await unpublished(service.db)
    assert backlog >= 2

    samples = await scrape(service)
    assert value(samples, "refund_retry_outbox_unpublished_events") == backlog
    assert value(samples, "refund_retry_database_up") == 1

    monitor = service.database_health
    assert monitor is not None
    async with database_unreachable(database_url):
        assert await monitor.check() is False
        samples = await scrape(service)  # still answers
        assert value(samples, "refund_retry_database_up") == 0
        assert value(samples, "refund_retry_outbox_unpublished_events") == backlog
    assert await monitor.check() is True
    assert value(await scrape(service), "refund_retry_database_up") == 1
