"""Refund throughput through gRPC against the raw asyncpg ceiling measured in the same run.

``.venv/bin/python -m bench.refund_throughput [--refunds N] [--callers 64] [--seconds S]``

1. Creates a database ``rr_bench_<pid>``, migrates it, and always drops it at the end.
2. Starts the service (``refund-retry serve``, billing loop off) as a subprocess, sets an
   auto-approval policy and records ``--payments`` payments through RecordPayment (setup).
3. Phase A, the baseline: ``bench.raw_ceiling`` in its own process runs CreateRefund's SQL
   transaction, then the billing job's two execution transactions, on a pool of 16 with 64
   tasks, while the idle service waits.
4. Phase B, the service: 64 gRPC callers run CreateRefund (auto-approved) for ``--seconds``
   (create only); then concurrent RunBillingJob calls execute what was created; then creation
   and RunBillingJob callers together (end to end). Finally the service is restarted with its
   billing loop on (interval 1 s) and creation runs alone while the loop executes.
5. The raw create ceiling once more (no service running), so a change in machine load during
   the run shows as a spread between the two baselines; their mean is the ceiling.

It prints a table of rates, latencies and ratios and writes ``bench/results/
refund_throughput.json``. Ratios against the same-run baseline are the result; absolute
figures vary from machine to machine and run to run. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from bench.raw_ceiling import percentile
from refundretry.v1 import money_pb2, payment_pb2, refund_policy_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from repository.database import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "REFUND_RETRY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TOKENS = {
    "t-bench-admin": {"principal": "bench-admin", "roles": ["admin"]},
    "t-bench-billing": {
        "principal": "bench-billing",
        "roles": ["payment:record", "refund:create", "read"],
    },
    "t-bench-ops": {"principal": "bench-ops", "roles": ["retry:manage", "read"]},
}
# Every payment: one item of 9,000,000 + 1,000,000 tax (USD 100,000.00), enough for 100,000
# refunds of USD 1.00, so one hot payment also never runs out.
ITEM_NET, ITEM_TAX = 9_000_000, 1_000_000
REFUND_AMOUNT = 100
AUTO_APPROVE_UP_TO = 10_000
OPEN_STATUSES = ("APPROVED", "PROCESSING", "PENDING_APPROVAL")


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", minor_units=minor)


# -- CPU accounting from /proc (Linux) ------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


def _process_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            after = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(after[11]) + int(after[12])


async def backend_pids(conn: asyncpg.Connection[asyncpg.Record]) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend'"
    )
    return [int(r["pid"]) for r in rows]


class CpuWindow:
    """CPU used during a phase, in cores (1.0 = one core busy the whole time): the machine,
    the service process, this process (plus client children), and the PostgreSQL backends
    connected to the benchmark database; ``other`` is the rest of the machine (other work on
    a shared host shows there)."""

    def __init__(self, server_pid: int, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self.server_pid = server_pid
        self.conn = conn
        self.started = time.monotonic()
        self.machine0 = _machine_busy_ticks()
        self.server0 = _process_ticks(server_pid)
        self.client0 = time.process_time()
        self.backends0: dict[int, int] = {}

    async def start(self) -> CpuWindow:
        self.backends0 = {pid: _process_ticks(pid) for pid in await backend_pids(self.conn)}
        self.started = time.monotonic()
        self.machine0 = _machine_busy_ticks()
        self.server0 = _process_ticks(self.server_pid)
        self.client0 = time.process_time()
        return self

    async def read(self, extra_client_seconds: float = 0.0) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        machine = (_machine_busy_ticks() - self.machine0) / CLOCK_TICKS / wall
        server = (_process_ticks(self.server_pid) - self.server0) / CLOCK_TICKS / wall
        client = (time.process_time() - self.client0 + extra_client_seconds) / wall
        pids = set(self.backends0) | set(await backend_pids(self.conn))
        postgres = (
            sum(max(_process_ticks(pid) - self.backends0.get(pid, 0), 0) for pid in pids)
            / CLOCK_TICKS
            / wall
        )
        return {
            "machine_cores": round(machine, 2),
            "server_cores": round(server, 2),
            "client_cores": round(client, 2),
            "postgres_cores": round(postgres, 2),
            "other_cores": round(max(machine - server - client - postgres, 0.0), 2),
        }


# -- the service as a subprocess ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.asynccontextmanager
async def service_process(
    dsn: str, *, billing_interval: int, log_path: Path, pool_size: int
) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_RETRY_")}
    env.update(
        {
            "REFUND_RETRY_DATABASE_URL": dsn,
            "REFUND_RETRY_GRPC_HOST": "127.0.0.1",
            "REFUND_RETRY_GRPC_PORT": str(port),
            "REFUND_RETRY_HTTP_HOST": "127.0.0.1",
            "REFUND_RETRY_HTTP_PORT": "0",
            "REFUND_RETRY_TOKENS": json.dumps(TOKENS),
            "REFUND_RETRY_PLAINTEXT": "true",
            "REFUND_RETRY_BILLING_JOB_INTERVAL_SECONDS": str(billing_interval),
            "REFUND_RETRY_LOG_LEVEL": "WARNING",
            "REFUND_RETRY_SHUTDOWN_GRACE_SECONDS": "2",
            "REFUND_RETRY_DB_POOL_SIZE": str(pool_size),
        }
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "refund-retry"), "serve", env=env, stdout=log, stderr=log
        )
    service = ServiceProcess(process, port, log_path)
    try:
        await _wait_ready(service)
        yield service
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_ready(service: ServiceProcess) -> None:
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.RefundRetryServiceStub(channel)
        while True:
            if service.process.returncode is not None:
                tail = service.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the service exited ({service.process.returncode}):\n{tail}")
            try:
                await stub.GetRefundPolicy(
                    pb.GetRefundPolicyRequest(), metadata=metadata("t-bench-admin"), timeout=1
                )
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


# -- setup (not measured) -------------------------------------------------------------------


async def setup(target: str, payments: int, concurrency: int) -> list[str]:
    """The auto-approval policy and ``payments`` payments, through the RPCs."""
    window = Duration()
    window.FromTimedelta(timedelta(days=180))
    captured = Timestamp()
    captured.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    tag = uuid.uuid4().hex[:6]
    ids = [f"pay_bench_{tag}_{n:06d}" for n in range(payments)]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RefundRetryServiceStub(channel)
        await stub.UpdateRefundPolicy(
            pb.UpdateRefundPolicyRequest(
                request_id=str(uuid.uuid4()),
                policy=refund_policy_pb2.RefundPolicy(
                    auto_approval_thresholds=[
                        refund_policy_pb2.AutoApprovalThreshold(max_amount=usd(AUTO_APPROVE_UP_TO))
                    ],
                    refund_window=window,
                ),
            ),
            metadata=metadata("t-bench-admin"),
            timeout=30,
        )
        queue = iter(ids)

        async def recorder() -> None:
            for payment_id in queue:
                await stub.RecordPayment(
                    pb.RecordPaymentRequest(
                        request_id=str(uuid.uuid4()),
                        payment=payment_pb2.Payment(
                            payment_id=payment_id,
                            gateway="sandbox",
                            gateway_transaction_id=f"pi_{payment_id}",
                            customer_id=f"cus_{payment_id[-4:]}",
                            subscription_id="sub_bench",
                            billing_event_id=f"be_{payment_id}",
                            captured_amount=usd(ITEM_NET + ITEM_TAX),
                            capture_time=captured,
                            items=[
                                payment_pb2.BillingEventItem(
                                    item_id="plan",
                                    description="bench plan",
                                    amount=usd(ITEM_NET),
                                    tax=usd(ITEM_TAX),
                                )
                            ],
                        ),
                    ),
                    metadata=metadata("t-bench-billing"),
                    timeout=60,
                )

        await asyncio.gather(*(recorder() for _ in range(concurrency)))
    return ids


# -- phase A: the raw ceiling in its own process --------------------------------------------


async def raw_ceiling(
    dsn: str, args: argparse.Namespace, *, execute_seconds: float
) -> dict[str, Any]:
    machine, started = _machine_busy_ticks(), time.monotonic()
    async with WaitSampler(dsn) as waits:
        result = await _raw_subprocess(dsn, args, execute_seconds)
    wall = time.monotonic() - started
    raw_cpu = result["create"]["cpu_seconds"] + (result["execute"] or {}).get("cpu_seconds", 0)
    result["db_backends"] = waits.summary()
    for phase in (result["create"], result["execute"]):
        if phase:
            phase["cpu_ms_per_item"] = round(
                phase["cpu_seconds"] * 1000 / max(phase["completed"], 1), 3
            )
    result["cpu"] = {
        "machine_cores": round((_machine_busy_ticks() - machine) / CLOCK_TICKS / wall, 2),
        "raw_process_cores": round(raw_cpu / wall, 2),
        "postgres_cores": round(waits.backend_cpu_seconds / wall, 2),
        "note": "over the whole subprocess, start-up included",
    }
    return result


async def _raw_subprocess(
    dsn: str, args: argparse.Namespace, execute_seconds: float
) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.raw_ceiling",
        "--dsn",
        dsn,
        "--seconds",
        str(args.seconds),
        "--execute-seconds",
        str(execute_seconds),
        "--refunds",
        str(args.refunds),
        "--tasks",
        str(args.callers),
        "--pool",
        str(args.pool),
        "--amount",
        str(REFUND_AMOUNT),
        "--loop",
        args.raw_loop,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench.raw_ceiling failed ({process.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(out)
    return result


# -- phase B: load through gRPC ---------------------------------------------------------------


@dataclass
class CreateStats:
    completed: int = 0
    errors: int = 0
    first_error: str = ""
    started: float = 0.0  # time.monotonic(), comparable across processes on Linux
    ended: float = 0.0
    client_cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)

    def merge(self, other: CreateStats) -> None:
        self.completed += other.completed
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)
        self.client_cpu_seconds += other.client_cpu_seconds
        self.latencies.extend(other.latencies)

    def summary(self) -> dict[str, Any]:
        return {
            "refunds": self.completed,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": round(self.seconds, 3),
            "refunds_per_second": round(self.completed / self.seconds, 1),
            "p50_ms": round(percentile(self.latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 2),
        }


@dataclass(frozen=True)
class CreateJob:
    target: str
    payment_ids: Sequence[str]
    callers: int
    start_at: float  # time.monotonic()
    seconds: float
    quota: int
    reason: str


async def drive_creates(job: CreateJob) -> CreateStats:
    """``job.callers`` concurrent CreateRefund callers on one channel, until the quota or the
    deadline."""
    stats = CreateStats()
    counter = itertools.count()
    md = metadata("t-bench-billing")
    async with grpc.aio.insecure_channel(job.target) as channel:
        stub = pb_grpc.RefundRetryServiceStub(channel)
        await channel.channel_ready()
        await asyncio.sleep(max(job.start_at - time.monotonic(), 0))
        cpu = time.process_time()
        stats.started = time.monotonic()
        deadline = stats.started + job.seconds

        async def caller() -> None:
            while True:
                n = next(counter)
                if n >= job.quota or time.monotonic() >= deadline:
                    return
                request = pb.CreateRefundRequest(
                    request_id=str(uuid.uuid4()),
                    payment_id=job.payment_ids[n % len(job.payment_ids)],
                    amount=usd(REFUND_AMOUNT),
                    reason=job.reason,
                )
                sent = time.perf_counter()
                try:
                    await stub.CreateRefund(request, metadata=md, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{exc.code().name}: {exc.details()}"
                    continue
                stats.latencies.append(time.perf_counter() - sent)
                stats.completed += 1

        await asyncio.gather(*(caller() for _ in range(job.callers)))
        stats.ended = time.monotonic()
        stats.client_cpu_seconds = time.process_time() - cpu
    return stats


def _create_in_child(job: CreateJob) -> CreateStats:
    import uvloop

    result: CreateStats = uvloop.run(drive_creates(job))
    return result


async def create_load(
    target: str,
    payment_ids: Sequence[str],
    *,
    callers: int,
    seconds: float,
    quota: int,
    reason: str,
    procs: int,
    pool: ProcessPoolExecutor | None,
) -> CreateStats:
    """Spread callers, payments and the quota over ``procs`` client processes (1 = here)."""
    if procs <= 1 or pool is None:
        return await drive_creates(
            CreateJob(target, payment_ids, callers, time.monotonic(), seconds, quota, reason)
        )
    start_at = time.monotonic() + 1.0
    loop = asyncio.get_running_loop()
    jobs = [
        CreateJob(
            target,
            list(payment_ids[i::procs]),
            callers // procs + (1 if i < callers % procs else 0),
            start_at,
            seconds,
            quota // procs + (1 if i < quota % procs else 0),
            reason,
        )
        for i in range(procs)
    ]
    parts = await asyncio.gather(*(loop.run_in_executor(pool, _create_in_child, j) for j in jobs))
    total = CreateStats()
    for part in parts:
        total.merge(part)
    return total


@dataclass
class ExecStats:
    calls: int = 0
    claimed: int = 0
    succeeded: int = 0
    errors: int = 0
    first_error: str = ""


async def run_billing_job_callers(
    target: str, callers: int, limit: int, stop: asyncio.Event, stats: ExecStats
) -> None:
    """``callers`` loops calling RunBillingJob until ``stop`` is set."""
    md = metadata("t-bench-ops")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RefundRetryServiceStub(channel)

        async def caller() -> None:
            while not stop.is_set():
                request = pb.RunBillingJobRequest(
                    request_id=str(uuid.uuid4()),
                    process_new_refunds=True,
                    process_due_retries=True,
                    limit=limit,
                )
                try:
                    response = await stub.RunBillingJob(request, metadata=md, timeout=120)
                except grpc.aio.AioRpcError as exc:
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{exc.code().name}: {exc.details()}"
                    await asyncio.sleep(0.1)
                    continue
                stats.calls += 1
                stats.claimed += response.summary.refunds_claimed
                stats.succeeded += response.summary.refunds_succeeded
                if response.summary.refunds_claimed == 0:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(caller() for _ in range(callers)))


async def open_refunds(conn: asyncpg.Connection[asyncpg.Record]) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM refund_event WHERE status = ANY($1::text[])", list(OPEN_STATUSES)
    )
    return int(count)


@dataclass
class Drain:
    """How the wait for execution ended: ``drained`` (nothing open), or stalled (no refund
    finished for ``--stall-seconds``: e.g. a detail whose RunBillingJob call failed stays leased
    for LEASE_SECONDS), or out of time. ``last_progress`` is the monotonic time the open
    count last fell."""

    drained: bool
    last_progress: float
    still_open: int
    stalled: bool


async def wait_drained(
    conn: asyncpg.Connection[asyncpg.Record], within: float, stall: float
) -> Drain:
    now = time.monotonic()
    deadline, last_change, last_open = now + within, now, -1
    while now < deadline:
        count = await open_refunds(conn)
        now = time.monotonic()
        if count == 0:
            return Drain(True, now, 0, False)
        if count != last_open:
            last_open, last_change = count, now
        elif now - last_change >= stall:
            return Drain(False, last_change, count, True)
        await asyncio.sleep(0.05)
    return Drain(False, last_change, last_open, False)


async def deadlocks(conn: asyncpg.Connection[asyncpg.Record]) -> int:
    found = await conn.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(found or 0)


class WaitSampler:
    """What the benchmark database's backends are doing, sampled from pg_stat_activity every
    20 ms: the mean number of backends per (state, wait event). ``idle in transaction /
    ClientRead`` is a transaction waiting for its client (Python) to send the next statement;
    ``Lock/transactionid`` or ``Lock/tuple`` is waiting for another transaction's row lock."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples = 0
        self.tally: dict[str, int] = {}
        self.first_ticks: dict[int, int] = {}
        self.last_ticks: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    """SELECT pid, state, coalesce(wait_event_type, 'CPU') AS type,
                              coalesce(wait_event, '') AS event
                         FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid()
                          AND backend_type = 'client backend'"""
                )
                self.samples += 1
                for r in rows:
                    ticks = _process_ticks(r["pid"])
                    self.first_ticks.setdefault(r["pid"], ticks)
                    self.last_ticks[r["pid"]] = ticks
                    if r["state"] == "idle":
                        continue
                    key = f"{r['state']} / {r['type']}" + (f"/{r['event']}" if r["event"] else "")
                    self.tally[key] = self.tally.get(key, 0) + 1
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    async def __aenter__(self) -> WaitSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    @property
    def backend_cpu_seconds(self) -> float:
        """CPU the benchmark database's backends used while sampled (a lower bound: work
        between a backend's last sample and its exit is missed)."""
        ticks = sum(self.last_ticks[pid] - self.first_ticks[pid] for pid in self.last_ticks)
        return ticks / CLOCK_TICKS

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        ranked = sorted(self.tally.items(), key=lambda kv: -kv[1])
        return {k: round(v / self.samples, 2) for k, v in ranked[:8]}


async def statuses(conn: asyncpg.Connection[asyncpg.Record], reason: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM refund_event WHERE reason = $1 GROUP BY status", reason
    )
    return {r["status"]: int(r["n"]) for r in rows}


async def cancel_open(conn: asyncpg.Connection[asyncpg.Record]) -> int:
    """Cleanup after a phase that did not drain in time, so the next phase starts empty."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE refund_event_detail SET status = 'CANCELED', lease_owner = NULL,
                      lease_expires_at = NULL
                WHERE status IN ('PENDING', 'PROCESSING', 'RETRY_SCHEDULED')"""
        )
        done = await conn.execute(
            "UPDATE refund_event SET status = 'CANCELED' WHERE status = ANY($1::text[])",
            list(OPEN_STATUSES),
        )
    return int(done.split()[-1])


@dataclass
class Context:
    args: argparse.Namespace
    dsn: str
    payment_ids: list[str]
    conn: asyncpg.Connection[asyncpg.Record]
    pool: ProcessPoolExecutor | None
    profiles: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def maybe_profile(ctx: Context, service: ServiceProcess, name: str) -> AsyncIterator[None]:
    """With ``--profile``: py-spy records the service during the phase (raw folded stacks)."""
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not ctx.args.profile or py_spy is None:
        yield
        return
    out = RESULTS / f"profile-{name}.txt"
    process = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(service.pid),
        "--rate",
        "250",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
        ctx.profiles.append(str(out))


async def phase_create_then_execute(ctx: Context, service: ServiceProcess) -> dict[str, Any]:
    """B1: CreateRefund alone; B2: RunBillingJob callers execute what B1 created."""
    args = ctx.args
    reason = "bench create-only"
    deadlocks_before = await deadlocks(ctx.conn)
    cpu = await CpuWindow(service.pid, ctx.conn).start()
    async with WaitSampler(ctx.dsn) as waits, maybe_profile(ctx, service, "create"):
        created = await create_load(
            service.target,
            ctx.payment_ids,
            callers=args.callers,
            seconds=args.seconds,
            quota=args.refunds,
            reason=reason,
            procs=args.client_procs,
            pool=ctx.pool,
        )
    create_cpu = await cpu.read(created.client_cpu_seconds if args.client_procs > 1 else 0.0)
    create_cpu["service_cpu_ms_per_refund"] = round(
        create_cpu["server_cores"] * created.seconds * 1000 / max(created.completed, 1), 3
    )
    stop, stats = asyncio.Event(), ExecStats()
    cpu = await CpuWindow(service.pid, ctx.conn).start()
    async with WaitSampler(ctx.dsn) as exec_waits, maybe_profile(ctx, service, "execute"):
        started = time.monotonic()
        runner = asyncio.create_task(
            run_billing_job_callers(service.target, args.exec_callers, args.exec_limit, stop, stats)
        )
        drain = await wait_drained(ctx.conn, args.drain_timeout, args.stall_seconds)
        stop.set()
        await runner
    exec_cpu = await cpu.read()
    exec_cpu["service_cpu_ms_per_refund"] = round(
        exec_cpu["server_cores"] * (time.monotonic() - started) * 1000 / max(stats.claimed, 1), 3
    )
    done = await statuses(ctx.conn, reason)
    canceled = 0 if drain.drained else await cancel_open(ctx.conn)
    executed = done.get("SUCCEEDED", 0)
    elapsed = max(drain.last_progress - started, 1e-9)
    return {
        "create": {**created.summary(), "cpu": create_cpu, "db_backends": waits.summary()},
        "execute": {
            "refunds": executed,
            "seconds": round(elapsed, 3),
            "refunds_per_second": round(executed / elapsed, 1),
            "drained": drain.drained,
            "stalled": drain.stalled,
            "left_open_then_canceled": canceled,
            "run_billing_job_calls": stats.calls,
            "rpc_errors": stats.errors,
            "first_error": stats.first_error,
            "statuses": done,
            "cpu": exec_cpu,
            "db_backends": exec_waits.summary(),
        },
        "deadlocks": await deadlocks(ctx.conn) - deadlocks_before,
    }


async def phase_end_to_end(
    ctx: Context, service: ServiceProcess, *, exec_callers: int, name: str
) -> dict[str, Any]:
    """Creation with ``--callers`` while refunds are executed (by the service's billing loop,
    and by ``exec_callers`` RunBillingJob callers); ends when every refund is final (or no
    refund finished for ``--stall-seconds``)."""
    args = ctx.args
    reason = f"bench {name}"
    deadlocks_before = await deadlocks(ctx.conn)
    stop, stats = asyncio.Event(), ExecStats()
    cpu = await CpuWindow(service.pid, ctx.conn).start()
    async with WaitSampler(ctx.dsn) as waits, maybe_profile(ctx, service, name):
        runner = asyncio.create_task(
            run_billing_job_callers(service.target, exec_callers, args.exec_limit, stop, stats)
        )
        created = await create_load(
            service.target,
            ctx.payment_ids,
            callers=args.callers,
            seconds=args.seconds,
            quota=args.refunds,
            reason=reason,
            procs=args.client_procs,
            pool=ctx.pool,
        )
        created_cpu = await cpu.read(created.client_cpu_seconds if args.client_procs > 1 else 0.0)
        drain = await wait_drained(ctx.conn, args.drain_timeout, args.stall_seconds)
        stop.set()
        await runner
    total_cpu = await cpu.read(created.client_cpu_seconds if args.client_procs > 1 else 0.0)
    done = await statuses(ctx.conn, reason)
    canceled = 0 if drain.drained else await cancel_open(ctx.conn)
    succeeded = done.get("SUCCEEDED", 0)
    seconds = max(drain.last_progress - created.started, 1e-9)
    return {
        "create": {**created.summary(), "cpu": created_cpu},
        "end_to_end": {
            "refunds_succeeded": succeeded,
            "seconds": round(seconds, 3),
            "refunds_per_second": round(succeeded / seconds, 1),
            "drained": drain.drained,
            "stalled": drain.stalled,
            "left_open_then_canceled": canceled,
            "run_billing_job_callers": exec_callers,
            "run_billing_job_calls": stats.calls,
            "rpc_errors": stats.errors,
            "first_error": stats.first_error,
            "statuses": done,
            "cpu": total_cpu,
            "db_backends": waits.summary(),
        },
        "deadlocks": await deadlocks(ctx.conn) - deadlocks_before,
    }


# -- the run ----------------------------------------------------------------------------------


async def admin(sql: str, url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else 0.0


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"rr_bench_{os.getpid()}"
    dsn = args.admin_url.rsplit("/", 1)[0] + "/" + name
    log_path = RESULTS / "service.log"
    log_path.unlink(missing_ok=True)
    began = time.monotonic()
    load_before = load_average()
    await admin(f'CREATE DATABASE "{name}"', args.admin_url)
    pool = (
        ProcessPoolExecutor(args.client_procs, mp_context=get_context("spawn"))
        if args.client_procs > 1
        else None
    )
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{Path(sys.executable).name} -m bench.refund_throughput "
        + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "admin_url"},
    }
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            result["machine"] = {
                "cpus": os.cpu_count(),
                "load_average_before": load_before,
                "python": platform.python_version(),
                "postgres": await conn.fetchval("SHOW server_version"),
                "grpcio": grpc.__version__,
                "asyncpg": asyncpg.__version__,
            }
            async with service_process(
                dsn, billing_interval=0, log_path=log_path, pool_size=args.pool
            ) as service:
                t = time.monotonic()
                payment_ids = await setup(service.target, args.payments, args.callers)
                result["setup_seconds"] = round(time.monotonic() - t, 2)
                say(f"setup: {len(payment_ids)} payments in {result['setup_seconds']} s")
                # Phase A: the raw ceiling, in its own process, the service idle.
                raw = result["raw"] = await raw_ceiling(dsn, args, execute_seconds=args.seconds)
                say(
                    f"A  raw ceiling: create {raw['create']['rate']:.0f} tx/s, execute "
                    f"{raw['execute']['rate']:.0f} refunds/s"
                )
                ctx = Context(args, dsn, payment_ids, conn, pool)
                svc = result["service"] = await phase_create_then_execute(ctx, service)
                say(
                    f"B1 service: create {svc['create']['refunds_per_second']:.0f}/s; "
                    f"B2 execute via RunBillingJob {svc['execute']['refunds_per_second']:.0f}/s"
                )
                e2e = result["end_to_end_rpc"] = await phase_end_to_end(
                    ctx, service, exec_callers=args.exec_callers, name="e2e-rpc"
                )
                say(
                    "B3 end to end, RunBillingJob callers: "
                    f"{e2e['end_to_end']['refunds_per_second']:.0f}/s"
                )
            result["end_to_end_loop"] = None
            if not args.skip_loop:
                async with service_process(
                    dsn, billing_interval=1, log_path=log_path, pool_size=args.pool
                ) as service:
                    e2e = result["end_to_end_loop"] = await phase_end_to_end(
                        ctx, service, exec_callers=0, name="e2e-loop"
                    )
                say(f"B4 end to end, billing loop: {e2e['end_to_end']['refunds_per_second']:.0f}/s")
            # The baseline again, so a machine whose load changed during the run shows.
            again = result["raw_again"] = await raw_ceiling(dsn, args, execute_seconds=0)
            say(f"A' raw ceiling again: create {again['create']['rate']:.0f} tx/s")
        finally:
            await conn.close()
    finally:
        if pool is not None:
            pool.shutdown()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', args.admin_url)
    result["machine"]["load_average_after"] = load_average()
    result["profiles"] = ctx.profiles
    result["baseline"] = baseline = baselines(result)
    result["ratios"] = ratios(result, baseline)
    result["total_seconds"] = round(time.monotonic() - began, 1)
    return result


def say(text: str) -> None:
    print(text, flush=True)


def baselines(result: dict[str, Any]) -> dict[str, float]:
    """The create ceiling is the mean of the two raw runs (before and after phase B)."""
    before = float(result["raw"]["create"]["rate"])
    after = float(result["raw_again"]["create"]["rate"])
    create = (before + after) / 2
    execute = float(result["raw"]["execute"]["rate"])
    return {
        "raw_create_per_second": round(create, 1),
        "raw_create_before": round(before, 1),
        "raw_create_after": round(after, 1),
        "raw_create_spread": round(abs(before - after) / create, 3) if create else 0.0,
        "raw_execute_per_second": round(execute, 1),
        # One refund = one create transaction + one execution, on the same machine and
        # database: the two rates combine like resistors in series.
        "raw_end_to_end_per_second": round(1 / (1 / create + 1 / execute), 1)
        if create and execute
        else 0.0,
    }


def ratios(result: dict[str, Any], base: dict[str, float]) -> dict[str, float]:
    svc = result["service"]
    out = {
        "service_create_vs_raw_create": ratio(
            svc["create"]["refunds_per_second"], base["raw_create_per_second"]
        ),
        "service_execute_vs_raw_execute": ratio(
            svc["execute"]["refunds_per_second"], base["raw_execute_per_second"]
        ),
    }
    for key, prefix in (("end_to_end_rpc", "e2e_rpc"), ("end_to_end_loop", "e2e_loop")):
        phase = result.get(key)
        if phase:
            rate = phase["end_to_end"]["refunds_per_second"]
            out[f"{prefix}_vs_raw_create"] = ratio(rate, base["raw_create_per_second"])
            out[f"{prefix}_vs_raw_end_to_end"] = ratio(rate, base["raw_end_to_end_per_second"])
    return out


def table(result: dict[str, Any]) -> str:
    raw, svc, base, rat = result["raw"], result["service"], result["baseline"], result["ratios"]
    callers, exec_callers = result["settings"]["callers"], result["settings"]["exec_callers"]
    raw_create = base["raw_create_per_second"]

    def row(label: str, rate: float, phase: dict[str, Any] | None, errors: Any, note: str) -> None:
        p50 = f"{phase['p50_ms']:.1f}" if phase else ""
        p99 = f"{phase['p99_ms']:.1f}" if phase else ""
        rows.append((label, f"{rate:.0f}", p50, p99, str(errors), note))

    rows: list[tuple[str, ...]] = [
        ("measurement", "rate /s", "p50 ms", "p99 ms", "errors", "ratio")
    ]
    row(
        "A  raw ceiling: create tx (asyncpg, pool 16, 64 tasks), mean",
        raw_create,
        raw["create"],
        raw["create"]["errors"],
        f"1 (before {base['raw_create_before']:.0f}, after {base['raw_create_after']:.0f})",
    )
    row(
        "A  raw ceiling: execute (start tx + record tx)",
        base["raw_execute_per_second"],
        raw["execute"],
        raw["execute"]["errors"],
        "1",
    )
    row(
        "A  raw ceiling: create + execute (derived)",
        base["raw_end_to_end_per_second"],
        None,
        "",
        "1",
    )
    row(
        f"B1 service: CreateRefund via gRPC, {callers} callers",
        svc["create"]["refunds_per_second"],
        svc["create"],
        svc["create"]["errors"],
        f"{rat['service_create_vs_raw_create']:.3f} of raw create",
    )
    row(
        f"B2 service: execute via RunBillingJob, {exec_callers} callers",
        svc["execute"]["refunds_per_second"],
        None,
        svc["execute"]["rpc_errors"],
        f"{rat['service_execute_vs_raw_execute']:.3f} of raw execute",
    )
    for key, label, prefix in (
        ("end_to_end_rpc", f"B3 create + {exec_callers} RunBillingJob callers", "e2e_rpc"),
        ("end_to_end_loop", "B4 create + billing loop (1 s)", "e2e_loop"),
    ):
        phase = result.get(key)
        if not phase:
            continue
        e2e = phase["end_to_end"]
        flag = "" if e2e["drained"] else f" ({e2e['left_open_then_canceled']} left open)"
        row(
            f"{label}: CreateRefund",
            phase["create"]["refunds_per_second"],
            phase["create"],
            phase["create"]["errors"],
            f"{phase['create']['refunds_per_second'] / raw_create:.3f} of raw create",
        )
        row(
            f"{label}: end to end{flag}",
            e2e["refunds_per_second"],
            None,
            e2e["rpc_errors"],
            f"{rat[prefix + '_vs_raw_create']:.3f} of raw create, "
            f"{rat[prefix + '_vs_raw_end_to_end']:.3f} of raw e2e",
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for index, cols in enumerate(rows):
        cells = [
            c.ljust(widths[i]) if i in (0, 5) else c.rjust(widths[i]) for i, c in enumerate(cols)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    verdict = rat["service_create_vs_raw_create"]
    cpu = svc["create"]["cpu"]
    lines += [
        "",
        f"target: service CreateRefund >= 0.5 of the raw ceiling: {verdict:.3f} "
        f"({'met' if verdict >= 0.5 else 'NOT met'})",
        f"CPU in B1 (cores, of {result['machine']['cpus']}): service {cpu['server_cores']}, "
        f"bench client {cpu['client_cores']}, postgres backends {cpu['postgres_cores']}, "
        f"other {cpu['other_cores']}, machine {cpu['machine_cores']}; load average "
        f"before {result['machine']['load_average_before']}",
        "DB backends in B1 (mean count): "
        + ", ".join(f"{k} {v}" for k, v in svc["create"]["db_backends"].items()),
        f"CPU per refund (ms): raw create tx {raw['create']['cpu_ms_per_item']}, service "
        f"CreateRefund {cpu['service_cpu_ms_per_refund']}; raw execute "
        f"{raw['execute']['cpu_ms_per_item']}, service execute "
        f"{svc['execute']['cpu']['service_cpu_ms_per_refund']}",
        f"CPU in A (cores): raw process {raw['cpu']['raw_process_cores']}, postgres backends "
        f"{raw['cpu']['postgres_cores']}, machine {raw['cpu']['machine_cores']}",
        "DB backends in A (mean count):  "
        + ", ".join(f"{k} {v}" for k, v in raw["db_backends"].items()),
    ]
    deadlocks = {
        k: result[k]["deadlocks"]
        for k in ("service", "end_to_end_rpc", "end_to_end_loop")
        if result.get(k)
    }
    if any(deadlocks.values()):
        lines.append(f"deadlocks detected by PostgreSQL: {deadlocks}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.refund_throughput",
        description="CreateRefund and its execution through gRPC against the raw asyncpg "
        "ceiling of the same SQL, measured in the same run.",
    )
    parser.add_argument("--refunds", type=int, default=20_000, help="most refunds per create phase")
    parser.add_argument("--callers", type=int, default=64, help="concurrent CreateRefund callers")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each create phase")
    parser.add_argument("--payments", type=int, default=2000, help="payments refunds spread over")
    parser.add_argument("--hot", action="store_true", help="one hot payment (= --payments 1)")
    parser.add_argument("--pool", type=int, default=16, help="DB pool size, service and raw")
    parser.add_argument("--exec-callers", type=int, default=4, help="RunBillingJob callers")
    parser.add_argument("--exec-limit", type=int, default=200, help="limit per RunBillingJob")
    parser.add_argument(
        "--drain-timeout", type=float, default=40.0, help="most seconds to wait for execution"
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=4.0,
        help="stop waiting for execution when no refund finished for this long",
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="processes the CreateRefund callers use"
    )
    parser.add_argument("--raw-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--skip-loop", action="store_true", help="skip the billing-loop phase")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the service (slower; for diagnosis)"
    )
    parser.add_argument("--admin-url", default=ADMIN_URL, help="PostgreSQL URL to create DBs")
    parser.add_argument("--output", type=Path, default=RESULTS / "refund_throughput.json")
    args = parser.parse_args(argv)
    if args.hot:
        args.payments = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    result: dict[str, Any] = uvloop.run(run(args))
    print()
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresults: {args.output} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
