"""``serve --roles`` (``REFUND_RETRY_ROLES``) splits the work over replicas of one database: an
API replica (grpc, http) takes requests and runs no billing job; a worker replica (scheduler)
runs the billing job with no port open; every process says what it does not do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from refundretry.v1 import refund_pb2
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from service.server import Service, start
from tests.integration import builders as b
from tests.integration import cli, conftest
from tests.integration.conftest import TOKENS, Client


@contextlib.asynccontextmanager
async def replica(database_url: str, roles: str, **settings: str) -> AsyncIterator[Service]:
    env = {f"REFUND_RETRY_{k}": v for k, v in {"ROLES": roles, **settings}.items()}
    service = await start(conftest.test_config(database_url, **env))
    try:
        yield service
    finally:
        await service.stop()


async def test_an_api_replica_and_a_worker_replica_share_the_work(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.server")
    fast = {"BILLING_JOB_INTERVAL_SECONDS": "1"}
    async with replica(database_url, "grpc,http", **fast) as api:
        assert api.server is not None
        assert api.http is not None
        assert [t.get_name() for t in api.tasks] == []  # no billing job, no roll-up
        async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
            client = Client(pb_grpc.RefundRetryServiceStub(channel), api)
            payment = await b.record_payment(client)
            refund = await b.create_refund(client, payment.payment_id, amount=2500)
            await b.approve(client, refund.refund_id)
            await asyncio.sleep(1.5)  # more than an interval: no one runs the job yet
            waiting = await b.get_refund(client, refund.refund_id)
            assert waiting.status == refund_pb2.REFUND_STATUS_APPROVED

            async with replica(database_url, "scheduler", **fast) as worker:
                assert (worker.server, worker.http, worker.port) == (None, None, 0)
                assert {t.get_name() for t in worker.tasks} == {
                    "billing-job",
                    "outbox-retention",
                    "analytics-rollup",
                }
                deadline = time.monotonic() + 20
                while (await b.get_refund(client, refund.refund_id)).status != (
                    refund_pb2.REFUND_STATUS_SUCCEEDED
                ):
                    assert time.monotonic() < deadline, "the worker never ran the refund"
                    await asyncio.sleep(0.2)
    said = [r.getMessage() for r in caplog.records if getattr(r, "action", "") == "service.roles"]
    assert said == [
        "this process's roles: grpc, http (not consumers, relay, scheduler)",
        "this process's roles: scheduler (not grpc, http, consumers, relay)",
    ]


async def test_an_http_only_replica_answers_probes_and_opens_no_grpc_port(
    database_url: str,
) -> None:
    async with (
        replica(database_url, "http") as web,
        aiohttp.ClientSession() as session,
    ):
        assert (web.server, web.port, web.tasks) == (None, 0, [])
        assert web.http is not None
        url = f"http://127.0.0.1:{web.http.port}/readyz"
        async with session.get(url) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"


async def test_an_unknown_role_is_refused_naming_the_roles() -> None:
    code, _, err = await cli.run_cli(
        cli.cli_env(
            DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", TOKENS=json.dumps(TOKENS)
        ),
        "serve",
        "--roles",
        "grpc,cron",
    )
    assert code == 2
    assert (
        "REFUND_RETRY_ROLES='grpc,cron' is malformed: unknown role cron; the roles are grpc, "
        "http, consumers, relay, scheduler"
    ) in err
