"""A real gRPC server on a free port against a per-test database, and clients with tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest

from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from service.config import Config
from service.gateways.base import Gateway
from service.jobs.billing_job import BillingJob
from service.server import Service, start
from tests.integration.conftest_stripe import stripe_server  # noqa: F401  (fixture)

TOKENS = {
    "t-admin": {"principal": "admin@example.com", "roles": ["admin"]},
    "t-billing": {
        "principal": "billing-service",
        "roles": ["payment:record", "refund:create", "read"],
    },
    "t-alice": {
        "principal": "alice@example.com",
        "roles": ["refund:create", "refund:approve", "read"],
    },
    "t-bob": {"principal": "bob@example.com", "roles": ["refund:approve", "read"]},
    "t-carol": {"principal": "carol@example.com", "roles": ["refund:approve", "read"]},
    "t-ops": {"principal": "ops@example.com", "roles": ["retry:manage", "read"]},
    "t-reader": {"principal": "reader@example.com", "roles": ["read"]},
}


def test_config(database_url: str, **overrides: str) -> Config:
    env = {
        "REFUND_RETRY_DATABASE_URL": database_url,
        "REFUND_RETRY_GRPC_HOST": "127.0.0.1",
        "REFUND_RETRY_GRPC_PORT": "0",
        "REFUND_RETRY_HTTP_HOST": "127.0.0.1",
        "REFUND_RETRY_HTTP_PORT": "0",
        "REFUND_RETRY_TOKENS": json.dumps(TOKENS),
        "REFUND_RETRY_PLAINTEXT": "true",  # test_tls.py serves TLS
        "REFUND_RETRY_SHUTDOWN_GRACE_SECONDS": "2",
        "REFUND_RETRY_DB_POOL_SIZE": "20",
        # Off unless a test turns them on with its own vhost (conftest_rabbitmq.py):
        # the default vhost is shared with every other test run on this broker.
        "REFUND_RETRY_CONSUMERS": "false",
        "REFUND_RETRY_RELAY": "false",
        **overrides,
    }
    return Config.from_env(env)


@dataclass
class Client:
    """The service's stub with a bearer token chosen per call: ``await client.call("t-admin",
    "GetRefund", request)``."""

    stub: pb_grpc.RefundRetryServiceStub
    service: Service

    async def call(self, token: str | None, method: str, request: Any) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        rpc: Callable[..., Awaitable[Any]] = getattr(self.stub, method)
        return await rpc(request, metadata=metadata, timeout=30)

    @property
    def job(self) -> BillingJob:
        return self.service.billing_job


@pytest.fixture
def config_overrides() -> dict[str, str]:
    """Override in a test module to change settings of the service under test."""
    return {}


@pytest.fixture
async def service(database_url: str, config_overrides: dict[str, str]) -> AsyncIterator[Service]:
    svc = await start(test_config(database_url, **config_overrides), run_billing_loop=False)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield Client(pb_grpc.RefundRetryServiceStub(channel), service)


def job_with(service: Service, gateways: dict[str, Gateway], **kwargs: Any) -> BillingJob:
    """A billing job on the service's database with other gateways or hooks."""
    kwargs.setdefault("lease", timedelta(seconds=60))
    return BillingJob(service.db, gateways, **kwargs)
