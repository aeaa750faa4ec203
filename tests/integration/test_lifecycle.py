"""The service's lifecycle as an operator sees it: health and reflection on the gRPC port, the
real ``refund-retry serve`` process refusing bad settings, serving, draining on SIGTERM and
running the billing job by itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from refundretry.v1 import refund_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from repository.database import Database
from service.server import Service, start
from tests.integration import builders as b
from tests.integration.cli import CLI, cli_env, run_cli
from tests.integration.conftest import TOKENS, Client
from tests.integration.conftest import test_config as make_config

SERVICE = "refundretry.v1.RefundRetryService"
SERVING = health_pb2.HealthCheckResponse.SERVING
START_TIMEOUT = 15.0
LOCK_WAIT_TIMEOUT = 10.0


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_env(database_url: str, port: int, **settings: str) -> dict[str, str]:
    defaults = {
        "DATABASE_URL": database_url,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "TOKENS": json.dumps(TOKENS),
        "PLAINTEXT": "true",
        "BILLING_JOB_INTERVAL_SECONDS": "0",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "DB_POOL_SIZE": "4",
        "LOG_FORMAT": "json",
    }
    return cli_env(**{**defaults, **settings})


@dataclass
class Server:
    """A ``refund-retry serve`` subprocess; its stderr goes to a file."""

    proc: asyncio.subprocess.Process
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", errors="replace")

    def log_actions(self) -> list[str]:
        actions = []
        for line in self.stderr().splitlines():
            entry = json.loads(line)  # every line is one JSON object
            actions.append(str(entry.get("action", "")))
        return actions


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        status: int = response.status
        return status


async def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.returncode is not None:
            pytest.fail(f"serve exited with {server.proc.returncode}: {server.stderr()}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            if await health_status(server.port, SERVICE) == SERVING:
                return
        await asyncio.sleep(0.1)
    pytest.fail(f"serve did not become SERVING within {START_TIMEOUT} s: {server.stderr()}")


@contextlib.asynccontextmanager
async def serving(database_url: str, tmp_path: Path, **settings: str) -> AsyncIterator[Server]:
    """``refund-retry serve`` on a free loopback port, SERVING; always killed afterwards."""
    port = free_port()
    stderr_path = tmp_path / f"serve-{port}.log"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "serve",
            env=serve_env(database_url, port, **settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Server(proc, port, stderr_path)
    try:
        await wait_until_serving(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@contextlib.asynccontextmanager
async def client_of(port: int) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # builders only use the stub; there is no in-process Service for a subprocess
        yield Client(pb_grpc.RefundRetryServiceStub(channel), cast(Service, None))


async def wait_for_lock_waiter(db: Database, table: str) -> None:
    """Until some session of this database waits for a lock on ``table``."""
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT
    async with db.connection() as conn:
        while time.monotonic() < deadline:
            waiting = await conn.fetchval(
                """SELECT count(*) FROM pg_locks l
                    WHERE NOT l.granted AND l.relation = $1::regclass""",
                table,
            )
            if waiting:
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"no call ever waited for the lock on {table}")


# -- health and reflection (in-process server) ------------------------------------------------


@pytest.mark.parametrize("name", ["", SERVICE])
async def test_health_is_serving(service: Service, name: str) -> None:
    assert await health_status(service.port, name) == SERVING


async def test_health_of_an_unknown_service_is_not_found(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_status(service.port, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def reflect(port: int, request: reflection_pb2.ServerReflectionRequest) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([request]), timeout=10)
        responses = [response async for response in call]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_the_services(service: Service) -> None:
    response = await reflect(service.port, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


async def test_reflection_describes_the_service(service: Service) -> None:
    response = await reflect(
        service.port, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    (service_file,) = [f for f in files if f.name.endswith("refund_retry_service.proto")]
    (described,) = service_file.service
    methods = {m.name for m in described.method}
    assert {"CreateRefund", "UpdateRefundPolicy", "VerifyAuditChain", "Reconcile"} <= methods


async def test_stopped_service_refuses_new_calls(database_url: str) -> None:
    svc = await start(make_config(database_url), run_billing_loop=False)
    port = svc.port
    try:
        assert await health_status(port, SERVICE) == SERVING
    finally:
        await svc.stop()
    await svc.stop()  # idempotent
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_status(port, SERVICE)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the real CLI: refused settings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("GRPC_PORT", "abc"),
        ("GRPC_PORT", "70000"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("LOG_LEVEL", "LOUD"),
        ("DB_POOL_SIZE", "0"),
        ("BILLING_JOB_INTERVAL_SECONDS", "-1"),
        ("TOKENS", "{not json"),
    ],
)
async def test_serve_with_a_malformed_setting_exits_2_with_one_line(
    database_url: str, setting: str, value: str
) -> None:
    env = serve_env(database_url, free_port(), **{setting: value})
    code, out, err = await run_cli(env, "serve")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"REFUND_RETRY_{setting}" in lines[0]
    assert "Traceback" not in err


async def test_serve_without_tokens_exits_2_naming_the_tokens_file(database_url: str) -> None:
    env = serve_env(database_url, free_port())
    del env["REFUND_RETRY_TOKENS"]
    code, out, err = await run_cli(env, "serve")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "REFUND_RETRY_TOKENS_FILE" in lines[0]


async def test_serve_with_an_unreadable_tokens_file_exits_2(
    database_url: str, tmp_path: Path
) -> None:
    env = serve_env(database_url, free_port(), TOKENS_FILE=str(tmp_path / "missing.json"))
    del env["REFUND_RETRY_TOKENS"]
    code, _, err = await run_cli(env, "serve")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "missing.json" in lines[0]


async def test_serve_on_a_port_in_use_exits_1_with_one_line_not_a_traceback(
    database_url: str,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_cli(serve_env(database_url, port), "serve")
    assert code == 1, (out, err)
    assert "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("refund-retry:")]
    assert len(ours) == 1, err
    assert f"127.0.0.1:{port}" in ours[0]


async def test_serve_on_an_unmigrated_database_says_to_migrate(empty_database: str) -> None:
    code, _, err = await run_cli(serve_env(empty_database, free_port()), "serve")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "refund-retry migrate" in line


async def test_serve_with_an_unreachable_database_exits_1_with_one_line() -> None:
    port = free_port()  # nothing listens there
    code, _, err = await run_cli(
        serve_env(f"postgresql://postgres@127.0.0.1:{port}/nothing", free_port()), "serve"
    )
    assert code == 1, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("refund-retry: cannot use the database")


# -- the real CLI: serving and stopping -------------------------------------------------------


async def test_serve_answers_calls_with_the_configured_tokens(
    database_url: str, tmp_path: Path
) -> None:
    async with serving(database_url, tmp_path) as server, client_of(server.port) as client:
        policy = await client.call("t-reader", "GetRefundPolicy", pb.GetRefundPolicyRequest())
        assert policy.policy.version == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.call("t-unknown", "GetRefundPolicy", pb.GetRefundPolicyRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "service.started" in server.log_actions()


async def test_sigterm_drains_the_in_flight_call_then_exits_0(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    async with serving(database_url, tmp_path, SHUTDOWN_GRACE_SECONDS="5") as server:
        async with client_of(server.port) as client:
            # hold a lock so that the call is in flight, inside the server, when SIGTERM comes
            async with db.connection() as blocker:
                transaction = blocker.transaction()
                await transaction.start()
                try:
                    await blocker.execute("LOCK TABLE refund_policy IN ACCESS EXCLUSIVE MODE")
                    in_flight = asyncio.create_task(
                        client.call("t-reader", "GetRefundPolicy", pb.GetRefundPolicyRequest())
                    )
                    await wait_for_lock_waiter(db, "refund_policy")
                    server.proc.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    await asyncio.sleep(0.5)
                    assert server.proc.returncode is None, "exited without draining"
                    assert not in_flight.done()
                finally:
                    await transaction.rollback()
            response = await asyncio.wait_for(in_flight, 10)
            assert response.policy.version == 0

        code = await asyncio.wait_for(server.proc.wait(), 10)
        assert code == 0, server.stderr()
        assert time.monotonic() - signalled < 5 + 2
        actions = server.log_actions()
        assert actions[-1] == "service.stopped", actions
        assert actions.index("service.stopping") < actions.index("service.stopped")

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_status(server.port, SERVICE)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sigterm_refuses_new_calls_while_draining(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    async with serving(database_url, tmp_path, SHUTDOWN_GRACE_SECONDS="5") as server:
        async with client_of(server.port) as client, db.connection() as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            try:
                await blocker.execute("LOCK TABLE refund_policy IN ACCESS EXCLUSIVE MODE")
                in_flight = asyncio.create_task(
                    client.call("t-reader", "GetRefundPolicy", pb.GetRefundPolicyRequest())
                )
                await wait_for_lock_waiter(db, "refund_policy")
                server.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert server.proc.returncode is None
                async with client_of(server.port) as late:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await late.call(
                            "t-reader", "ListRetrySchedules", pb.ListRetrySchedulesRequest()
                        )
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await transaction.rollback()
            await asyncio.wait_for(in_flight, 10)
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0


async def test_sigterm_with_a_call_longer_than_the_grace_period_still_exits(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    async with serving(database_url, tmp_path, SHUTDOWN_GRACE_SECONDS="1") as server:
        async with client_of(server.port) as client, db.connection() as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            try:
                await blocker.execute("LOCK TABLE refund_policy IN ACCESS EXCLUSIVE MODE")
                in_flight = asyncio.create_task(
                    client.call("t-reader", "GetRefundPolicy", pb.GetRefundPolicyRequest())
                )
                await wait_for_lock_waiter(db, "refund_policy")
                server.proc.send_signal(signal.SIGTERM)
                # the lock is held past the grace period: the call is cancelled, the process
                # must still stop on its own
                code = await asyncio.wait_for(server.proc.wait(), 10)
            finally:
                await transaction.rollback()
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(in_flight, 10)
        assert code == 0, server.stderr()
        assert server.log_actions()[-1] == "service.stopped"


async def test_serve_runs_the_billing_job_by_itself(database_url: str, tmp_path: Path) -> None:
    async with (
        serving(database_url, tmp_path, BILLING_JOB_INTERVAL_SECONDS="1") as server,
        client_of(server.port) as client,
    ):
        payment = await b.record_payment(client)
        refund = await b.create_refund(client, payment.payment_id, amount=2500)
        await b.approve(client, refund.refund_id)
        deadline = time.monotonic() + 10
        status = refund_pb2.RefundStatus.REFUND_STATUS_APPROVED
        while time.monotonic() < deadline:
            status = (await b.get_refund(client, refund.refund_id)).status
            if status == refund_pb2.RefundStatus.REFUND_STATUS_SUCCEEDED:
                break
            await asyncio.sleep(0.2)
        assert status == refund_pb2.RefundStatus.REFUND_STATUS_SUCCEEDED
        after = await b.get_payment(client, payment.payment_id)
        assert after.refunded_amount.minor_units == 2500
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0


async def test_serve_with_interval_0_never_runs_the_job(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path) as server, client_of(server.port) as client:
        payment = await b.record_payment(client)
        refund = await b.create_refund(client, payment.payment_id)
        await b.approve(client, refund.refund_id)
        await asyncio.sleep(2)
        status = (await b.get_refund(client, refund.refund_id)).status
        assert status == refund_pb2.RefundStatus.REFUND_STATUS_APPROVED
