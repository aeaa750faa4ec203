"""Health as a load balancer and an on-call engineer see it: /healthz and /readyz on the HTTP
port, and the gRPC health service, reporting NOT_SERVING while PostgreSQL is unreachable and
SERVING again when it is back."""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.server import SERVICE_NAME, Service
from tests.conftest import database_unreachable
from tests.integration.conftest import Client

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def probe(service: Service, path: str) -> tuple[int, Any]:
    assert service.http is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.http.port}{path}") as response,
    ):
        return response.status, await response.json()


async def grpc_status(client: Client, name: str) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{client.service.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)).status


async def test_a_running_service_is_alive_and_ready(client: Client) -> None:
    assert await probe(client.service, "/healthz") == (200, {"status": "ok"})
    assert await probe(client.service, "/readyz") == (200, {"status": "ready", "database": "ok"})
    assert await grpc_status(client, "") == SERVING
    assert await grpc_status(client, SERVICE_NAME) == SERVING


async def test_not_serving_while_the_database_is_unreachable(
    client: Client, database_url: str
) -> None:
    service = client.service
    monitor = service.database_health
    assert monitor is not None
    async with database_unreachable(database_url):
        assert await monitor.check() is False
        status, body = await probe(service, "/readyz")
        assert status == 503
        assert body["status"] == "not ready"
        assert body["database"]  # the reason, for the engineer reading the probe
        assert await probe(service, "/healthz") == (200, {"status": "ok"})  # alive all along
        assert await grpc_status(client, "") == NOT_SERVING
        assert await grpc_status(client, SERVICE_NAME) == NOT_SERVING
    assert await monitor.check() is True
    assert await probe(service, "/readyz") == (200, {"status": "ready", "database": "ok"})
    assert await grpc_status(client, "") == SERVING
