"""Payment-retry throughput of the billing job against the raw claim-and-mark ceiling measured in
the same run, and the time to find due work as stored plans grow.

``.venv/bin/python -m bench.retry_throughput [--plans 100000] [--workers N] [--batch 500]
[--chunk 500] [--chunks 8] [--stored 10000,100000,1000000]``

1. Creates a database ``rr_bench_<pid>``, migrates it, and always drops it at the end.
2. Setup (not measured): one plan through the real ``record_payment_failure`` (the template),
   then each phase's due plans copied from it with ``INSERT ... SELECT generate_series``: the
   retry_plan row and the rows of every table that references it (found in the catalog:
   wallet, FAILURE attempt, decision, dunning steps...), one distinct card per plan, every
   timestamp moved back whole days so the plan is due now. The plan metadata
   ``sandbox_charge_outcome`` makes 30 % of the charges succeed and 70 % decline
   (``insufficient_funds``), interleaved.
3. Phase A, the baseline, in its own process: 8 asyncpg loops claim due plans with
   ``FOR UPDATE SKIP LOCKED`` and mark them done, one row per transaction, then 100 per
   transaction (the TOOLING.md ceiling, on the same tables).
4. Phase B, the service: the real ``RetryJob.run`` loops on the sandbox gateway (chunks of
   ``--chunk`` plans, ``--chunks`` in flight), in this process (``--workers`` loops) and in
   one and two separate processes (one loop each, like replicas), each for
   ``--job-seconds``; a serial run with every statement logged (D: statements and the wait
   for them, per chunk and per attempt); a py-spy profile of one job process (P).
5. Phase C: ``claim_due`` (the named query, in a transaction rolled back) with ``--stored``
   plans, 1 % of them due, timed many times, with ``EXPLAIN (ANALYZE, BUFFERS)``.

It prints tables and writes ``bench/results/retry_throughput.json``. Ratios against the
same-run baseline are the result; absolute rates vary with the machine. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.raw_ceiling import percentile
from bench.refund_throughput import (
    ADMIN_URL,
    CLOCK_TICKS,
    RESULTS,
    ROOT,
    _machine_busy_ticks,
    _process_ticks,
    admin,
    load_average,
    ratio,
    say,
)
from refundretry.v1 import events_pb2
from repository import retries as plans
from repository.database import Connection, Database, _init_connection, migrate
from repository.queries import Queries, load
from service import convert
from service.auth import Principal
from service.domain.decline_codes import CardNetwork, Decline
from service.domain.money import Money
from service.domain.network_rules import NetworkLimits
from service.domain.retry_plan import (
    Method,
)
from service.gateways.base import ChargingGateway
from service.gateways.sandbox import CHARGE_OUTCOME_KEY, SandboxGateway
from service.jobs.retry_job import (
    CHUNK,
    CHUNKS,
    RetryJob,
    RetrySummary,
)
from service.retries import (
    RecordFailure,
    RetryContext,
    record_payment_failure,
)
from service.server import tune_gc

Record = asyncpg.Record
RQ, JQ = Queries("retries"), Queries("journal")
# claim_due claims only the plans of the gateways a worker can call: the bench has one.
GATEWAYS = ["sandbox"]
VENV_BIN = Path(sys.executable).parent
SUCCEED = "succeed"
TEMPLATE_ZONE = "America/New_York"
# The service's defaults (REFUND_RETRY_LEASE_SECONDS, _UNKNOWN_REPLAY_SECONDS, _DB_POOL_SIZE,
# _BILLING_JOB_BATCH) and RetryJob's own concurrency, as build_billing_job leaves it.
LEASE = timedelta(seconds=60)
UNKNOWN_REPLAY = timedelta(seconds=30)
SERVICE_POOL = 16
SERVICE_CONCURRENCY = 16
DAY = timedelta(days=1)
RESULT_KEYS = ("recovered", "rescheduled", "waiting_for_customer", "exhausted", "unknown")
PHASES = ("A", "B1", "B2", "B3", "D", "P", "C")
RAW_PHASES = ("A", "A'")  # A' is A again after the B phases (asked for with A)
# The target, and the ceilings ../shared/TOOLING.md measured on a machine of this kind
# (claim due rows with FOR UPDATE SKIP LOCKED and mark them done: one row per transaction, and
# 100): phase A measures the same two in every run, so the target can be read as ratios too.
TARGET = 5_000
TOOLING_RAW_ONE_ROW = 5_300
TOOLING_RAW_BATCH_100 = 50_000


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- setup (not measured): the template plan and its copies ----------------------------------


async def make_template(db: Database) -> uuid.UUID:
    """One plan through the real use case: the rows every copy is made from."""
    row = await record_payment_failure(
        db,
        Principal("bench-billing", frozenset()),
        RecordFailure(
            request_id=f"bench-template-{uuid.uuid4()}",
            payment_id="inv_template_0",
            billing_event_id="be_template_0",
            customer_id="cus_template",
            subscription_id="sub_bench",
            amount=Money("USD", 2500),
            gateway="sandbox",
            method=Method("pm_template_0", CardNetwork.VISA),
            decline=Decline("insufficient_funds", CardNetwork.VISA),
            failed_at=now_utc() - timedelta(minutes=1),
            time_zone=TEMPLATE_ZONE,
            metadata={CHARGE_OUTCOME_KEY: SUCCEED},
        ),
        context=context_like_the_service(),
    )
    plan_id: uuid.UUID = row["plan_id"]
    return plan_id


# How a copy differs from the template ($1 template plan id, $2 set tag, $3 the shift back in
# time, $4 percent of charges that succeed). ``t`` is the template's row, ``b`` the copy's
# number and id, ``p`` (child tables) the copy's plan. Columns not named here: timestamptz
# columns move back by $3, other uuid columns get a new uuid, the rest is the template's.
PLAN_OVERRIDES = {
    "plan_id": "b.plan_id",
    "payment_id": "'inv_' || $2 || '_' || b.i",
    "billing_event_id": "'be_' || $2 || '_' || b.i",
    "customer_id": "'cus_' || $2 || '_' || (b.i % 5000)",
    # Up to 10 minutes apart, so the due plans do not all tie; by blocks of 100 copies, so the
    # oldest due (claimed first) have the same mix of outcomes as the whole set.
    "next_attempt_at": "t.next_attempt_at - $3::interval "
    "- make_interval(secs => (b.i / 100) % 600)",
    "metadata": "jsonb_set(t.metadata, '{sandbox_charge_outcome}', to_jsonb(CASE WHEN "
    "b.i % 100 < $4 THEN 'succeed' ELSE 'decline:insufficient_funds' END))",
}
CHILD_OVERRIDES = {
    "*": {"plan_id": "b.plan_id", "payment_method_id": "'pm_' || $2 || '_' || b.i"},
    "payment_attempt": {
        "idempotency_key": "'failure-' || b.plan_id || '-' || t.attempt_number",
        "local_hour": "extract(hour FROM (t.attempted_at - $3::interval) AT TIME ZONE "
        "p.time_zone)::int",
        "day_of_month": "extract(day FROM (t.attempted_at - $3::interval) AT TIME ZONE "
        "p.time_zone)::int",
    },
    "retry_decision": {
        "next_attempt_at": "p.next_attempt_at",
        "data": "CASE WHEN t.data ? 'payment_method_id' THEN jsonb_set(t.data, "
        "'{payment_method_id}', to_jsonb('pm_' || $2 || '_' || b.i)) ELSE t.data END",
    },
}
# A version-7 UUID (repository/ids.py, as the service makes plan, attempt and event ids) in
# SQL: the Unix time in milliseconds ({ms}, a bigint expression) over the first 48 bits of a
# random UUID, whose version nibble becomes 7 (gen_random_uuid() sets the variant bits).
UUID7_SQL = (
    "encode(set_byte(overlay(uuid_send(gen_random_uuid()) PLACING "
    "substring(int8send({ms}) FROM 3) FROM 1 FOR 6), 6, "
    "(get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112), 'hex')::uuid"
)
NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


def new_uuid_sql(version: int, ms: str = NOW_MS) -> str:
    """SQL for a new id of a copy: time-ordered (7, the service's) or random (4)."""
    return "gen_random_uuid()" if version == 4 else UUID7_SQL.format(ms=ms)


# Every parameter typed in every statement (PostgreSQL refuses an unused untyped one).
PARAMS_TYPED = "$1::uuid IS NOT NULL AND $2::text IS NOT NULL AND $3::interval IS NOT NULL"


async def table_columns(conn: Connection, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute
            WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
              AND attidentity = '' AND attgenerated = ''
            ORDER BY attnum""",
        table,
    )
    return [(r["attname"], r["type"]) for r in rows]


async def plan_child_tables(conn: Connection) -> list[str]:
    """Tables with a foreign key to retry_plan, parents first (a child of a child after it)."""
    rows = await conn.fetch(
        """SELECT DISTINCT conrelid::regclass::text AS name FROM pg_constraint
            WHERE contype = 'f' AND confrelid = 'retry_plan'::regclass ORDER BY 1"""
    )
    return [r["name"] for r in rows]


def copy_statement(
    table: str, columns: list[tuple[str, str]], overrides: dict[str, str], id_version: int
) -> str:
    exprs = []
    for name, type_name in columns:
        if name in overrides:
            exprs.append(overrides[name])
        elif type_name == "timestamp with time zone":
            exprs.append(f"t.{name} - $3::interval")
        elif type_name == "uuid":
            exprs.append(new_uuid_sql(id_version))
        else:
            exprs.append(f"t.{name}")
    names = ", ".join(name for name, _ in columns)
    if table == "retry_plan":
        source = "bench_ids b CROSS JOIN retry_plan t"
    else:
        source = f"bench_ids b JOIN retry_plan p ON p.plan_id = b.plan_id CROSS JOIN {table} t"
    return (
        f"INSERT INTO {table} ({names})\nSELECT {', '.join(exprs)}\n  FROM {source}\n"
        f" WHERE t.plan_id = $1 AND {PARAMS_TYPED}"
    )


@dataclass
class Loader:
    """The copy statements, built once from the catalog."""

    statements: list[tuple[str, str]]  # (table, sql); retry_plan first
    id_version: int  # of the copies' new ids: 7 (as the service makes them) or 4

    @classmethod
    async def build(cls, conn: Connection, id_version: int = 7) -> Loader:
        statements = [
            (
                "retry_plan",
                copy_statement(
                    "retry_plan",
                    await table_columns(conn, "retry_plan"),
                    PLAN_OVERRIDES,
                    id_version,
                ),
            )
        ]
        for table in await plan_child_tables(conn):
            overrides = {**CHILD_OVERRIDES["*"], **CHILD_OVERRIDES.get(table, {})}
            columns = await table_columns(conn, table)
            statements.append((table, copy_statement(table, columns, overrides, id_version)))
        return cls(statements, id_version)

    async def load(
        self, conn: Connection, template: uuid.UUID, tag: str, count: int, success_percent: int
    ) -> float:
        """``count`` due copies of the template named ``inv_<tag>_<i>``; returns seconds."""
        started = time.monotonic()
        next_at = await conn.fetchval(
            "SELECT next_attempt_at FROM retry_plan WHERE plan_id = $1", template
        )
        assert isinstance(next_at, datetime)
        shift = DAY * max(1, math.ceil((next_at - now_utc()) / DAY))
        async with conn.transaction():
            # Version 7: copy i as if created i ms after the first, so plans created together
            # are due together (by blocks of 100, see PLAN_OVERRIDES), as failures of one
            # billing run are retried together.
            plan_id = new_uuid_sql(self.id_version, f"{NOW_MS} + i")
            await conn.execute(
                f"CREATE TEMP TABLE bench_ids ON COMMIT DROP AS SELECT i, {plan_id} AS"
                f" plan_id FROM generate_series(1, {int(count)}) AS i"
            )
            for table, sql in self.statements:
                extra = (success_percent,) if table == "retry_plan" else ()
                await conn.execute(sql, template, tag, shift, *extra)
        tables = ", ".join(table for table, _ in self.statements)
        await conn.execute(f"VACUUM (ANALYZE) {tables}")
        return time.monotonic() - started

    @property
    def tables(self) -> list[str]:
        return [table for table, _ in self.statements]


async def due_count(conn: Connection) -> int:
    found = await conn.fetchval(
        "SELECT count(*) FROM retry_plan WHERE status = 'ACTIVE' AND next_attempt_at <= now()"
    )
    return int(found)


async def set_written(conn: Connection, tag: str, child_tables: list[str]) -> dict[str, Any]:
    """What processing wrote for the plans of set ``tag`` that had an attempt, per plan: the
    same in every B phase when the job does the same work, whatever the chunking."""
    done = (
        "SELECT plan_id, status FROM retry_plan p WHERE split_part(p.payment_id, '_', 2) = $1 "
        "AND EXISTS (SELECT 1 FROM payment_attempt a WHERE a.plan_id = p.plan_id "
        "AND a.source <> 'FAILURE')"
    )
    processed = int(await conn.fetchval(f"SELECT count(*) FROM ({done}) d", tag))
    n = max(processed, 1)

    def per(value: int) -> float:
        return round(value / n, 3)

    statuses = {
        r["status"]: per(int(r["n"]))
        for r in await conn.fetch(
            f"SELECT status, count(*) AS n FROM ({done}) d GROUP BY status ORDER BY status", tag
        )
    }
    rows = {}
    for table in child_tables:
        count = await conn.fetchval(
            f"SELECT count(*) FROM {table} x JOIN ({done}) d USING (plan_id)", tag
        )
        rows[table] = per(int(count))
    attempts = {
        r["outcome"]: per(int(r["n"]))
        for r in await conn.fetch(
            f"SELECT a.outcome, count(*) AS n FROM payment_attempt a JOIN ({done}) d "
            "USING (plan_id) GROUP BY a.outcome ORDER BY 1",
            tag,
        )
    }
    events = {
        r["event_type"]: per(int(r["n"]))
        for r in await conn.fetch(
            f"SELECT o.event_type, count(*) AS n FROM outbox o JOIN ({done}) d "
            "ON o.aggregate_id = d.plan_id::text GROUP BY o.event_type ORDER BY 1",
            tag,
        )
    }
    audit = await conn.fetchval(
        f"SELECT count(*) FROM audit_event e JOIN ({done}) d ON e.entity_type = 'retry_plan' "
        "AND e.entity_id = d.plan_id::text",
        tag,
    )
    # The latest decision's action, rules and reason with digits masked: the same shapes when
    # decide() saw the same history, schedule and stats.
    shapes = {
        r["shape"]: per(int(r["n"]))
        for r in await conn.fetch(
            f"""SELECT x.action || ' ' || x.rule_ids::text || ' '
                       || regexp_replace(x.reason, '[0-9]', '#', 'g') AS shape, count(*) AS n
                  FROM ({done}) d
                  JOIN LATERAL (SELECT * FROM retry_decision r WHERE r.plan_id = d.plan_id
                                 ORDER BY sequence DESC LIMIT 1) x ON true
                 GROUP BY 1 ORDER BY 2 DESC, 1""",
            tag,
        )
    }
    return {
        "plans_attempted": processed,
        "per_plan": {
            "status": statuses,
            "rows": rows,
            "attempt_outcomes": attempts,
            "events": events,
            "audit_rows": per(int(audit)),
        },
        "latest_decisions": shapes,
        "latest_decisions_digest": hashlib.sha1(
            json.dumps(sorted(shapes.items())).encode(), usedforsecurity=False
        ).hexdigest()[:10],
        "open_attempts": attempts.get("OPEN", 0.0),
    }


OTHER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


async def update_counts(conn: Connection, backends: int | None = None) -> dict[str, Any]:
    """(rows updated, of them HOT) per table so far, from pg_stat_user_tables, and the number
    of other backends. A backend reports its counts when it ends: given ``backends`` (the
    number before a phase), wait (up to 5 s) until the phase's backends have ended. This
    one's counts are flushed first."""
    for _ in range(500):
        others = int(await conn.fetchval(OTHER_BACKENDS))
        if backends is None or others <= backends:
            break
        await asyncio.sleep(0.01)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    rows = await conn.fetch("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables")
    return {
        "backends": others,
        "tables": {r["relname"]: (int(r["n_tup_upd"]), int(r["n_tup_hot_upd"])) for r in rows},
    }


def updates_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Rows updated and HOT-updated per table between two ``update_counts``, most first."""
    moved = {
        table: {
            "updates": n - before["tables"].get(table, (0, 0))[0],
            "hot": h - before["tables"].get(table, (0, 0))[1],
        }
        for table, (n, h) in after["tables"].items()
    }
    return dict(
        sorted(
            ((t, c) for t, c in moved.items() if c["updates"] > 0), key=lambda x: -x[1]["updates"]
        )
    )


async def retire_set(conn: Connection, tag: str) -> int:
    """Setup: plans of ``tag`` a phase left due (it stopped at its time bound) stop being due,
    so the next phase's job does not take them."""
    done = await conn.execute(
        "UPDATE retry_plan SET status = 'CANCELED', next_attempt_at = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL WHERE split_part(payment_id, '_', 2) = $1 AND status = 'ACTIVE'"
        " AND next_attempt_at <= now()",
        tag,
    )
    return int(done.split()[-1])


# -- phase A: the raw claim-and-mark ceiling (its own process) --------------------------------

# The same WHERE and ORDER BY as claim_due; "done" moves the plan two days on, like a decline.
RAW_CLAIM = """SELECT plan_id FROM retry_plan
 WHERE status = 'ACTIVE' AND next_attempt_at <= now()
   AND (lease_expires_at IS NULL OR lease_expires_at < now())
 ORDER BY next_attempt_at
 LIMIT $1
   FOR UPDATE SKIP LOCKED"""
RAW_MARK = """UPDATE retry_plan
   SET next_attempt_at = now() + interval '2 days', attempt_count = attempt_count + 1,
       updated_at = now()
 WHERE plan_id = ANY($1::uuid[])"""


async def raw_ceiling(dsn: str, loops: int, batch: int, seconds: float) -> dict[str, Any]:
    """``loops`` tasks on a pool of as many connections: claim ``batch`` due plans and mark
    them done, one transaction each, for ``seconds`` or until nothing is due."""
    pool = await asyncpg.create_pool(dsn, min_size=loops, max_size=loops, command_timeout=30)
    assert pool is not None
    rows = txs = 0
    ran_out = False
    latencies: list[float] = []
    try:
        started, cpu = time.monotonic(), time.process_time()
        deadline = started + seconds

        async def loop() -> None:
            nonlocal rows, txs, ran_out
            while time.monotonic() < deadline:
                t = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction():
                    ids = [r["plan_id"] for r in await conn.fetch(RAW_CLAIM, batch)]
                    if ids:
                        await conn.execute(RAW_MARK, ids)
                if not ids:
                    ran_out = True
                    return
                latencies.append(time.perf_counter() - t)
                rows += len(ids)
                txs += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
        elapsed = time.monotonic() - started
        cpu_seconds = time.process_time() - cpu
    finally:
        await pool.close()
    return {
        "loops": loops,
        "batch": batch,
        "rows": rows,
        "transactions": txs,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "ran_out_of_due_rows": ran_out,
        "process_cores": round(cpu_seconds / elapsed, 2),
    }


# -- phase B: the real RetryJob ---------------------------------------------------------------


def context_like_the_service() -> RetryContext:
    return RetryContext(limits=NetworkLimits(visa_max_reattempts=15))


# Set while a chunk's _process runs: RetryJob._process calls itself (plans the chunk put off,
# a failed chunk split plan by plan); only the outermost call is the chunk.
IN_CHUNK: contextvars.ContextVar[bool] = contextvars.ContextVar("bench_in_chunk", default=False)


class TimedRetryJob(RetryJob):
    """The service's RetryJob, timing each chunk from its open transaction (which claims the
    chunk's plans) to the end of its record transaction (plans the chunk put off and a failed
    chunk's per-plan retries included, the wait for a chunk slot not). Each attempt of a
    chunk gets the chunk's time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latencies: list[float] = []  # per attempt: its chunk's time
        self.chunk_seconds: list[float] = []  # per chunk

    async def _process(self, target: Any, source: str) -> list[str]:
        if IN_CHUNK.get():
            return await super()._process(target, source)
        token = IN_CHUNK.set(True)
        started = time.perf_counter()
        try:
            results = await super()._process(target, source)
        finally:
            IN_CHUNK.reset(token)
        elapsed = time.perf_counter() - started
        self.chunk_seconds.append(elapsed)
        self.latencies.extend([elapsed] * sum(r in RESULT_KEYS for r in results))
        return results


@dataclass
class JobRun:
    """What one or more job loops did, in one process (or merged over processes)."""

    attempts: int = 0
    claimed: int = 0
    runs: int = 0
    chunks: int = 0
    summary: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic(), comparable across processes on Linux
    ended: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, summary: RetrySummary) -> None:
        self.runs += 1
        self.claimed += summary.claimed
        for key, value in dataclasses.asdict(summary).items():
            self.summary[key] = self.summary.get(key, 0) + value
            if key in RESULT_KEYS:
                self.attempts += value

    def merge(self, other: JobRun) -> None:
        self.attempts += other.attempts
        self.claimed += other.claimed
        self.runs += other.runs
        self.chunks += other.chunks
        for key, value in other.summary.items():
            self.summary[key] = self.summary.get(key, 0) + value
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)
        self.cpu_seconds += other.cpu_seconds
        self.latencies.extend(other.latencies)

    def report(self, processes: int, loops: int) -> dict[str, Any]:
        seconds = max(self.ended - self.started, 1e-9)
        return {
            "attempts": self.attempts,
            "claimed": self.claimed,
            "job_runs": self.runs,
            "chunks": self.chunks,
            "attempts_per_chunk": round(self.attempts / max(self.chunks, 1), 1),
            "summary": {k: v for k, v in self.summary.items() if v},
            "seconds": round(seconds, 3),
            "attempts_per_second": round(self.attempts / seconds, 1),
            "p50_ms": round(percentile(self.latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 2),
            "processes": processes,
            "loops": loops,
            "job_process_cores": round(self.cpu_seconds / seconds, 2),
            "job_cpu_ms_per_attempt": round(self.cpu_seconds * 1000 / max(self.attempts, 1), 3),
        }


async def drive(
    jobs: Sequence[TimedRetryJob], *, batch: int, seconds: float, start_at: float = 0.0
) -> JobRun:
    """Each job in a loop calling ``run(limit=batch)`` until a run finds nothing due, or (with
    ``seconds`` > 0) no new run after ``seconds``; the runs in flight then finish."""
    result = JobRun()
    await asyncio.sleep(max(start_at - time.monotonic(), 0))
    cpu = time.process_time()
    result.started = time.monotonic()
    deadline = result.started + seconds if seconds > 0 else math.inf

    async def loop(job: TimedRetryJob) -> None:
        while time.monotonic() < deadline:
            summary: RetrySummary = await job.run(limit=batch)
            result.add(summary)
            if summary.claimed == 0:
                return

    await asyncio.gather(*(loop(job) for job in jobs))
    result.ended = time.monotonic()
    result.cpu_seconds = time.process_time() - cpu
    for job in jobs:
        result.latencies.extend(job.latencies)
        result.chunks += len(job.chunk_seconds)
    return result


def service_jobs(
    db: Database, loops: int, *, concurrency: int, chunk: int, chunks: int
) -> list[TimedRetryJob]:
    """``loops`` RetryJobs sharing one RetryContext and gateway (one process's)."""
    context = context_like_the_service()
    gateways: dict[str, ChargingGateway] = {"sandbox": SandboxGateway()}
    return [
        TimedRetryJob(
            db,
            gateways,
            context,
            lease=LEASE,
            unknown_replay_delay=UNKNOWN_REPLAY,
            concurrency=concurrency,
            chunk=chunk,
            chunks=chunks,
        )
        for _ in range(loops)
    ]


# -- diagnostics: every statement of a serial run, and per-call costs --------------------------


def query_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for path in sorted((ROOT / "repository" / "sql").glob("*.sql")):
        for name, text in load(path.stem).items():
            names.setdefault(text, f"{path.stem}.{name}")
    return names


@dataclass(eq=False)  # hashable: asyncpg keeps its query loggers in a set
class StatementLog:
    """Every statement's client-side time (asyncpg query logger: sent, answered and decoded),
    by scope and name. Scope ``chunk``: inside a chunk's ``_process`` (the logger runs in the
    statement's context, so ``IN_CHUNK`` tells); ``run``: the rest of ``RetryJob.run`` (claim,
    stats age, the dunning pass)."""

    names: dict[str, str] = field(default_factory=query_names)
    count: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        text = record.query.strip()
        name = self.names.get(text)
        if name is None:
            first = text.split(None, 1)[0].upper().rstrip(";") if text else ""
            if text.startswith("SELECT pg_advisory_unlock_all()"):
                name = "(asyncpg pool reset on release)"
            elif "typeinfo_tree" in text or "set_config('jit'" in text:
                # asyncpg learning a type, with JIT off around it: once per connection and type.
                name = "(asyncpg type introspection, first use on a connection)"
            elif first in ("BEGIN", "COMMIT", "ROLLBACK"):
                name = f"({first})"
            else:
                name = re.sub(r"\s+", " ", text)[:60]
        key = ("chunk" if IN_CHUNK.get() else "run", name)
        self.count[key] += 1
        self.seconds[key] += record.elapsed


async def serial_diagnosis(dsn: str, chunk: int, batch: int) -> dict[str, Any]:
    """The real job with chunks of ``chunk`` plans but nothing overlapping (one loop, one
    chunk in flight, one gateway call at a time), every statement logged: statements and the
    time waiting for them per chunk and per attempt. Serial, so the statements' times add up
    to the part of the wall time spent waiting on PostgreSQL."""
    log = StatementLog()

    async def init(conn: asyncpg.Connection[Record]) -> None:
        await _init_connection(conn)
        conn.add_query_logger(log)

    pool = await asyncpg.create_pool(
        dsn, min_size=2, max_size=SERVICE_POOL, init=init, command_timeout=30
    )
    assert pool is not None
    db = Database(pool)
    try:
        jobs = service_jobs(db, 1, concurrency=1, chunk=chunk, chunks=1)
        run = await drive(jobs, batch=batch, seconds=0)
    finally:
        await db.close()
    await asyncio.sleep(0.05)  # the last logger callbacks
    attempts, chunks, runs = max(run.attempts, 1), max(run.chunks, 1), max(run.runs, 1)
    wall = max(run.ended - run.started, 1e-9)
    waited = sum(log.seconds.values())
    in_chunks = {k: n for k, n in log.count.items() if k[0] == "chunk"}
    chunk_wait = sum(log.seconds[k] for k in in_chunks)
    statements: dict[str, dict[str, Any]] = {}
    for (scope, name), n in sorted(log.count.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0])):
        seconds = log.seconds[(scope, name)]
        per = chunks if scope == "chunk" else runs
        statements[f"{scope}: {name}"] = {
            "scope": scope,
            "name": name,
            "calls": n,
            f"calls_per_{scope}": round(n / per, 2),
            "ms_per_call": round(seconds * 1000 / n, 3),
            f"ms_per_{scope}": round(seconds * 1000 / per, 3),
            "ms_per_attempt": round(seconds * 1000 / attempts, 4),
        }
    return {
        "chunk": chunk,
        "attempts": run.attempts,
        "chunks": run.chunks,
        "job_runs": run.runs,
        "attempts_per_chunk": round(run.attempts / chunks, 1),
        "summary": {k: v for k, v in run.summary.items() if v},
        "wall_ms_per_attempt": round(wall * 1000 / attempts, 3),
        "ms_per_chunk": round(sum(jobs[0].chunk_seconds) * 1000 / chunks, 2),
        "statements_total": sum(log.count.values()),
        "statements_per_chunk": round(sum(in_chunks.values()) / chunks, 2),
        "statements_per_run": round((sum(log.count.values()) - sum(in_chunks.values())) / runs, 2),
        "statements_per_attempt": round(sum(log.count.values()) / attempts, 3),
        "statement_wait_ms_per_chunk": round(chunk_wait * 1000 / chunks, 3),
        "statement_wait_ms_per_attempt": round(waited * 1000 / attempts, 3),
        "statement_wait_share_of_wall": round(waited / wall, 3),
        "statements": statements,
    }


async def per_call_costs(db: Database, tag: str) -> dict[str, Any]:
    """CPU of what the record transaction repeats per plan (the event's plan snapshot, the
    event), on a plan after its attempt; and, apart, what GetRetryPlan costs (the view with
    the whole history as JSON, ``convert.retry_plan``), which the job no longer does."""
    async with db.connection() as conn:
        plan_id = await conn.fetchval(
            "SELECT plan_id FROM retry_plan WHERE split_part(payment_id, '_', 2) = $1 "
            "ORDER BY status = 'ACTIVE' DESC, attempt_count DESC LIMIT 1",
            tag,
        )
        plan_row = await conn.fetchrow("SELECT * FROM retry_plan WHERE plan_id = $1", plan_id)
        wallet = [
            {"payment_method_id": m["payment_method_id"], "network": m["network"]}
            for m in await plans.methods(conn, plan_id)
        ]
        attempt_row = await conn.fetchrow(
            "SELECT * FROM payment_attempt WHERE plan_id = $1 ORDER BY attempt_number DESC LIMIT 1",
            plan_id,
        )
        row = await conn.fetchrow(RQ["view"], plan_id)
        texts = await conn.fetchrow(
            "SELECT methods::text, attempts::text, decisions::text, dunning_steps::text, "
            "metadata::text FROM retry_plan_view WHERE plan_id = $1",
            plan_id,
        )
        assert plan_row is not None
        assert attempt_row is not None
        assert row is not None
        assert texts is not None
        reps = 300
        started = time.perf_counter()
        for _ in range(reps):
            await conn.fetchrow(RQ["view"], plan_id)
        view_ms = (time.perf_counter() - started) * 1000 / reps
    state = convert.retry_plan_state(plan_row, wallet)
    event = events_pb2.Event(event_id=str(uuid.uuid4()), type="retry.attempted")
    event.retry_attempted.CopyFrom(
        events_pb2.RetryAttempted(
            plan=state,
            attempt=convert.payment_attempt(attempt_row, plan_row["currency"]),
            will_retry=True,
        )
    )
    full = convert.retry_plan(row)

    def micros(fn: Callable[[], object], number: int = 2000) -> float:
        return round(timeit.timeit(fn, number=number) * 1e6 / number, 1)

    return {
        "job_event": {
            "us_convert_retry_plan_state": micros(
                lambda: convert.retry_plan_state(plan_row, wallet)
            ),
            "us_event_serialize": micros(event.SerializeToString),
            "event_bytes": len(event.SerializeToString()),
        },
        "get_retry_plan": {
            "ms_view_statement_serial": round(view_ms, 3),
            "view_json_bytes": sum(len(t) for t in texts if t),
            "us_json_loads_view_columns": micros(lambda: [json.loads(t) for t in texts if t]),
            "us_convert_retry_plan": micros(lambda: convert.retry_plan(row)),
            "plan_bytes": len(full.SerializeToString()),
        },
    }


# -- the py-spy profile ------------------------------------------------------------------------

# (label, substrings of a frame that put a sample in the bucket); shares are inclusive.
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("open transaction (RetryJob._open)", ("RetryJob._open ",)),
    ("record transaction (RetryJob._record)", ("RetryJob._record ",)),
    ("jsonb decode (json.loads)", ("JSONDecoder.decode", "loads (json/")),
    ("jsonb encode (json.dumps)", ("dumps (json/",)),
    ("protobuf: service/convert.py (plan state, attempt, decision)", ("(service/convert.py",)),
    ("events + audit queued (changes.record)", ("record (service/changes.py",)),
    ("outbox + audit rows written before COMMIT", ("flush (repository/journal.py",)),
    ("decide (domain)", ("decide (service/domain/retry_plan.py",)),
    ("network rules (check_attempt)", ("check_attempt (service/domain",)),
    ("card history (CardHistories: query + past_attempts)", ("CardHistories.",)),
    ("dunning pass per run (dunning.run_due)", ("run_due (service/dunning.py",)),
    ("pool acquire / release / reset", ("Pool.acquire", "PoolAcquireContext", "Pool.release")),
    ("BEGIN / COMMIT", ("Transaction.start", "Transaction.__aexit__", "Transaction.__commit")),
    ("asyncpg, all statements", ("asyncpg/",)),
    ("  of which Connection._do_execute self time", ("#self:Connection._do_execute",)),
    ("event loop itself (no Python frame below)", ("#self:Runner.run",)),
)


def fold_profile(path: Path) -> dict[str, Any]:
    """Inclusive shares of the sampled (on-CPU) stacks, and the top functions by self time.
    With uvloop, time in C (the loop, asyncpg's protocol) shows as the innermost Python frame,
    so ``Connection._do_execute`` self time is the protocol's encoding, decoding and I/O."""
    total = 0
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        marked = f"{stack};#self:{leaf.split(' (', 1)[0]}"
        for label, needles in PROFILE_BUCKETS:
            if any(n in marked for n in needles):
                buckets[label] += count
        leaves[leaf] += count
    return {
        "samples": total,
        "inclusive_share": {
            label: round(buckets[label] / total, 3) if total else 0.0
            for label, _ in PROFILE_BUCKETS
        },
        "top_self": [
            {"frame": frame, "share": round(n / total, 3)} for frame, n in leaves.most_common(12)
        ],
    }


# -- phase C: finding due work -----------------------------------------------------------------

LOAD_STORED = """
INSERT INTO retry_plan (plan_id, payment_id, billing_event_id, customer_id, subscription_id,
                        currency, amount, gateway, schedule_code, time_zone, status,
                        attempt_count, next_attempt_at, first_failed_at, metadata, created_at)
SELECT gen_random_uuid(), 'inv_c_' || i, 'be_c_' || i, 'cus_c_' || (i % 50000), 'sub_bench',
       'USD', 2500, 'sandbox', 'payment-fixed', 'America/New_York', s.status, 1 + i % 5,
       CASE WHEN s.due THEN now() - make_interval(secs => i % 3600)
            WHEN s.status = 'ACTIVE' THEN now() + make_interval(days => 1 + i % 20)
       END,
       now() - make_interval(days => 1 + i % 30), '{"sandbox_charge_outcome": "succeed"}',
       now() - make_interval(secs => i % 2592000)
  FROM generate_series($1::int, $2::int) AS i,
       LATERAL (SELECT (i::bigint * 7919) % 10000 < $3 AS due) d,
       LATERAL (SELECT d.due,
                       CASE WHEN d.due OR (i::bigint * 7919) % 10000 < 3000 + $3 THEN 'ACTIVE'
                            WHEN i % 3 = 0 THEN 'EXHAUSTED' ELSE 'RECOVERED' END AS status) s"""
KEY_LINES = re.compile(
    r"(Update on|Nested Loop|CTE Scan|Limit|LockRows|Index Scan|Index Only Scan|Bitmap|"
    r"Seq Scan|Sort|Buffers|Execution Time|Index Cond|Rows Removed)"
)


async def time_claims(conn: Connection, limit: int, reps: int) -> tuple[list[float], int]:
    """The exact claim_due, in a transaction rolled back, ``reps`` times (after 5 unmeasured,
    by which time PostgreSQL may use a generic plan for the prepared statement)."""
    times: list[float] = []
    rows = 0
    for n in range(reps + 5):
        tx = conn.transaction()
        await tx.start()
        try:
            t = time.perf_counter()
            found = await conn.fetch(RQ["claim_due"], now_utc(), limit, GATEWAYS, [])
            elapsed = time.perf_counter() - t
        finally:
            await tx.rollback()
        if n >= 5:
            times.append(elapsed)
            rows = len(found)
    return times, rows


async def explain_claim(conn: Connection, limit: int, *, generic: bool) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of claim_due, rolled back: planned for these values (what a
    new connection's first executions use), or the generic plan (``$1`` unknown) that a
    long-lived connection's prepared statement may switch to after five executions."""
    tx = conn.transaction()
    await tx.start()
    try:
        if not generic:
            rows = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS)\n" + RQ["claim_due"], now_utc(), limit, GATEWAYS, []
            )
        else:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(
                "PREPARE bench_claim (timestamptz, int, text[], uuid[]) AS\n" + RQ["claim_due"]
            )
            try:
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_claim(now(), "
                    f"{int(limit)}, ARRAY['sandbox'], '{{}}')"
                )
            finally:
                await conn.execute("DEALLOCATE bench_claim")
    finally:
        await tx.rollback()
    return [r[0] for r in rows]


def plan_facts(lines: list[str]) -> dict[str, Any]:
    text = "\n".join(lines)
    scan = re.search(
        r"(Bitmap Index Scan on|Index Scan using|Index Scan Backward using|Index Only Scan "
        r"using) (retry_plan_\w+)(?! on retry_plan p\b)",
        text,
    )
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", text)
    exec_ms = re.search(r"Execution Time: ([\d.]+) ms", text)
    due = re.search(
        r"Scan on retry_plan_due_idx[^\n]*actual time=[\d.]+\.\.[\d.]+ rows=(\d+)", text
    )
    due = due or re.search(r"Index Scan using retry_plan_due_idx[^\n]*rows=(\d+) loops", text)
    if "Seq Scan on retry_plan p" in text:
        join = "hash join over a SEQ SCAN of retry_plan"
    elif "Index Scan using retry_plan_pkey on retry_plan p" in text:
        join = "nested loop on retry_plan_pkey"
    elif "Bitmap Heap Scan on retry_plan p" in text and "Scan on retry_plan_pkey" in text:
        join = "bitmap scan of retry_plan_pkey"
    else:
        join = "?"
    return {
        "scan": ("bitmap + sort" if scan and scan.group(1).startswith("Bitmap") else "index")
        if scan
        else ("seq scan" if "Seq Scan on retry_plan" in text else "?"),
        "join": join,
        "index": scan.group(2) if scan else None,
        "due_index_rows": int(due.group(1)) if due else None,
        "seq_scan": "Seq Scan on retry_plan" in text,
        "buffers_hit": int(buffers.group(1)) if buffers else None,
        "buffers_read": int(buffers.group(2) or 0) if buffers else None,
        "execution_ms": float(exec_ms.group(1)) if exec_ms else None,
    }


async def find_due_phase(
    conn: Connection,
    stored: list[int],
    due_fraction: float,
    reps: int,
    batch: int,
    fillfactor: int,
) -> list[dict[str, Any]]:
    """claim_due with growing numbers of stored plans, ``due_fraction`` of them due; then,
    with ``fillfactor``, the largest size again after ``ALTER TABLE retry_plan SET
    (fillfactor = ...)`` and a rewrite (a what-if, not the service's schema)."""
    await conn.execute("TRUNCATE retry_plan CASCADE")
    loaded = 0
    out = []
    steps: list[tuple[int, str]] = [(size, "") for size in sorted(set(stored))]
    if fillfactor and steps:
        steps.append((steps[-1][0], f"fillfactor {fillfactor}"))
    for size, what_if in steps:
        started = time.monotonic()
        if what_if:
            await conn.execute(f"ALTER TABLE retry_plan SET (fillfactor = {int(fillfactor)})")
            await conn.execute("VACUUM (FULL, ANALYZE) retry_plan")
        else:
            await conn.execute(LOAD_STORED, loaded + 1, size, round(due_fraction * 10000))
            await conn.execute("VACUUM (ANALYZE) retry_plan")
        load_seconds = time.monotonic() - started
        loaded = size
        due = await due_count(conn)
        entry: dict[str, Any] = {
            "stored": size,
            "what_if": what_if,
            "due": due,
            "load_seconds": round(load_seconds, 2),
            "table_mb": round(
                int(await conn.fetchval("SELECT pg_table_size('retry_plan')")) / 2**20, 1
            ),
            "due_index_mb": round(
                int(await conn.fetchval("SELECT pg_relation_size('retry_plan_due_idx')")) / 2**20,
                2,
            ),
            "claims": {},
        }
        for limit in sorted({100, batch}):
            times, rows = await time_claims(conn, limit, reps)
            # Each rolled-back claim leaves dead row versions (and index entries) behind.
            await conn.execute("VACUUM retry_plan")
            entry["claims"][str(limit)] = {
                "rows": rows,
                "reps": len(times),
                "p50_ms": round(percentile(times, 0.5) * 1000, 3),
                "p99_ms": round(percentile(times, 0.99) * 1000, 3),
            }
        entry["explain"] = await explain_claim(conn, batch, generic=False)
        entry["explain_generic"] = await explain_claim(conn, batch, generic=True)
        entry["plan"] = plan_facts(entry["explain"])
        entry["plan_generic"] = plan_facts(entry["explain_generic"])
        out.append(entry)
        claims = ", ".join(f"limit {k} {v['p50_ms']:.2f} ms" for k, v in entry["claims"].items())
        say(
            f"C  {size:>9,} stored{' (' + what_if + ')' if what_if else ''}, {due:,} due: "
            f"claim_due p50 {claims}; {entry['plan']['scan']} on {entry['plan']['index']} "
            f"(setup {load_seconds:.1f} s)"
        )
    return out


# -- children (own processes) ------------------------------------------------------------------


async def child_main(args: argparse.Namespace) -> dict[str, Any]:
    if args.child == "raw":
        await asyncio.sleep(max(args.start_at - time.monotonic(), 0))
        return {
            "one_row": await raw_ceiling(args.dsn, args.raw_loops, 1, args.raw_seconds),
            "batch_100": await raw_ceiling(args.dsn, args.raw_loops, 100, args.raw_seconds),
        }
    db = await Database.connect(args.dsn, max_size=args.pool)
    try:
        jobs = service_jobs(
            db, args.loops, concurrency=args.concurrency, chunk=args.chunk, chunks=args.chunks
        )
        tune_gc()  # as `serve` does once started
        run = await drive(jobs, batch=args.batch, seconds=args.job_seconds, start_at=args.start_at)
    finally:
        await db.close()
    return dataclasses.asdict(run)


def find_py_spy() -> str | None:
    """py-spy, in the venv or on PATH; not a project dependency (``.venv/bin/pip install
    py-spy``)."""
    return shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")


async def run_children(
    mode: str,
    dsn: str,
    count: int,
    extra: list[str],
    *,
    profile: Path | None = None,
    start_wall: float | None = None,
) -> list[dict[str, Any]]:
    """``count`` processes of this module in child ``mode``, started together (2 s from now,
    or at the wall-clock time ``start_wall``); with ``profile``, each under ``py-spy record``
    (which must be installed)."""
    start_at = time.monotonic() + 2.0
    if start_wall is not None:
        ahead = start_wall - time.time()
        if ahead < 1.0:
            raise RuntimeError(
                f"--start-at-wall is {-ahead:.0f} s past (or less than 1 s ahead) when the phase "
                "is ready: give a later time"
            )
        start_at = time.monotonic() + ahead
    py_spy = find_py_spy()
    if profile is not None and py_spy is None:
        raise RuntimeError("py-spy is not installed")
    with tempfile.TemporaryDirectory(prefix="rr-bench-") as tmp:
        outs = [Path(tmp) / f"{mode}-{n}.json" for n in range(count)]
        processes = []
        for out in outs:
            command = [sys.executable, "-m", "bench.retry_throughput", "--child", mode]
            command += ["--dsn", dsn, "--out", str(out), "--start-at", str(start_at), *extra]
            if profile is not None and py_spy is not None:
                command = [py_spy, "record", "--rate", "200", "--format", "raw", "--nonblocking"]
                command += ["--output", str(profile), "--", sys.executable]
                command += ["-m", "bench.retry_throughput", "--child", mode, "--dsn", dsn]
                command += ["--out", str(out), "--start-at", str(start_at), *extra]
            processes.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        done = await asyncio.gather(*(p.communicate() for p in processes))
        for process, (_, err) in zip(processes, done, strict=True):
            if process.returncode != 0:
                raise RuntimeError(f"child {mode} failed ({process.returncode}):\n{err.decode()}")
        return [json.loads(out.read_text()) for out in outs]


@dataclass
class Phase:
    label: str
    title: str
    report: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] | None = None
    db_backends: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    left_due_then_retired: int = 0
    updates: dict[str, dict[str, int]] = field(default_factory=dict)


class BackendSampler:
    """The benchmark database's backends every ``interval`` seconds (pg_stat_activity; 0.1 by
    default: at 0.02 the sampling itself, a query and a /proc read per backend 50 times a
    second, took 0.07 cores in this process alone, beside 32 connections, on the 2-core
    machine it measures; 0.017 at 0.1): the mean number per
    (state, wait event, statement), e.g. ``active Lock/transactionid journal.audit_append`` =
    waiting for another transaction's row lock (the audit chain head) inside audit_append;
    ``idle in transaction ClientRead`` = a transaction waiting for its client. Also the CPU
    of those backends (/proc)."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        self.dsn = dsn
        self.interval = interval
        self.samples = 0
        self.tally: Counter[str] = Counter()
        self.first_ticks: dict[int, int] = {}
        self.last_ticks: dict[int, int] = {}
        self._names = {_squeeze(text)[:120]: name for text, name in query_names().items()}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _name(self, query: str) -> str:
        text = _squeeze(query)
        return self._names.get(text[:120]) or text[:40]

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    """SELECT pid, state, coalesce(wait_event_type || '/' || wait_event, 'CPU')
                              AS wait, query
                         FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid()
                          AND backend_type = 'client backend'"""
                )
                self.samples += 1
                for r in rows:
                    ticks = _process_ticks(r["pid"])
                    self.first_ticks.setdefault(r["pid"], ticks)
                    self.last_ticks[r["pid"]] = ticks
                    if r["state"] != "idle":
                        self.tally[f"{r['state']} {r['wait']} {self._name(r['query'])}"] += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    async def __aenter__(self) -> BackendSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    @property
    def cpu_seconds(self) -> float:
        ticks = sum(self.last_ticks[pid] - self.first_ticks[pid] for pid in self.last_ticks)
        return ticks / CLOCK_TICKS

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {k: round(v / self.samples, 2) for k, v in self.tally.most_common(8)}


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@contextlib.asynccontextmanager
async def observed(dsn: str, phase: Phase, sample_ms: int) -> AsyncIterator[None]:
    """Backend states and CPU (machine, PostgreSQL backends) during a phase."""
    machine, started = _machine_busy_ticks(), time.monotonic()
    async with BackendSampler(dsn, sample_ms / 1000) as backends:
        yield
    wall = max(time.monotonic() - started, 1e-9)
    phase.db_backends = backends.summary()
    phase.cpu = {
        "machine_cores": round((_machine_busy_ticks() - machine) / CLOCK_TICKS / wall, 2),
        "postgres_cores": round(backends.cpu_seconds / wall, 2),
        "postgres_cpu_seconds": round(backends.cpu_seconds, 2),
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    dsn: str
    conn: Connection
    template: uuid.UUID
    loader: Loader
    loads: dict[str, float] = field(default_factory=dict)

    async def load(self, tag: str, count: int) -> None:
        seconds = await self.loader.load(
            self.conn, self.template, tag, count, self.args.success_percent
        )
        self.loads[tag] = round(seconds, 2)
        say(f"   setup: {count:,} due plans '{tag}' in {seconds:.1f} s")

    def child_args(self, loops: int) -> list[str]:
        a = self.args
        return [
            *("--loops", str(loops), "--batch", str(a.batch), "--pool", str(a.pool)),
            *("--concurrency", str(a.concurrency), "--chunk", str(a.chunk)),
            *("--chunks", str(a.chunks), "--job-seconds", str(a.job_seconds)),
        ]

    def job_settings(self) -> dict[str, int]:
        a = self.args
        return {
            "batch": a.batch,
            "chunk": a.chunk,
            "chunks": a.chunks,
            "concurrency": a.concurrency,
            "pool": a.pool,
        }


async def phase_raw(ctx: Context, label: str = "A") -> Phase:
    """The raw ceilings; run before the B phases (A) and again after them (A'), so that a
    host whose speed drifts during the run shows, and the ratios use the higher of both."""
    args = ctx.args
    tag = "raw" if label == "A" else "raw2"  # payment ids must differ from A's
    await ctx.load(tag, args.raw_plans)
    phase = Phase(label, f"raw claim + mark done, {args.raw_loops} loops")
    async with observed(ctx.dsn, phase, ctx.args.sample_ms):
        (phase.report,) = await run_children(
            "raw",
            ctx.dsn,
            1,
            ["--raw-loops", str(args.raw_loops), "--raw-seconds", str(args.raw_seconds)],
        )
    phase.left_due_then_retired = await retire_set(ctx.conn, tag)
    one, hundred = phase.report["one_row"], phase.report["batch_100"]
    say(
        f"{label:<3}raw claim-and-mark ceiling: {one['rows_per_second']:,.0f} rows/s one row "
        f"per tx, "
        f"{hundred['rows_per_second']:,.0f} rows/s 100 per tx"
    )
    return phase


async def phase_jobs(ctx: Context, label: str, title: str, count: int, *, procs: int) -> Phase:
    """The service's RetryJob on ``count`` due plans: ``procs`` = 0 in this process
    (``--workers`` loops), else that many processes with one loop each."""
    args = ctx.args
    tag = label.lower()
    await ctx.load(tag, count)
    phase = Phase(label, title)
    counted = await update_counts(ctx.conn)
    async with observed(ctx.dsn, phase, ctx.args.sample_ms):
        if procs == 0:
            db = await Database.connect(ctx.dsn, max_size=args.pool)
            try:
                jobs = service_jobs(
                    db,
                    args.workers,
                    concurrency=args.concurrency,
                    chunk=args.chunk,
                    chunks=args.chunks,
                )
                run = await drive(jobs, batch=args.batch, seconds=args.job_seconds)
            finally:
                await db.close()
        else:
            run = JobRun()
            children = await run_children(
                "job", ctx.dsn, procs, ctx.child_args(1), start_wall=args.start_at_wall
            )
            for part in children:
                run.merge(JobRun(**part))
    phase.report = run.report(max(procs, 1), args.workers if procs == 0 else procs)
    phase.report["job"] = ctx.job_settings()
    phase.report["postgres_cpu_ms_per_attempt"] = round(
        phase.cpu["postgres_cpu_seconds"] * 1000 / max(run.attempts, 1), 3
    )
    phase.updates = updates_since(counted, await update_counts(ctx.conn, counted["backends"]))
    phase.left_due_then_retired = await retire_set(ctx.conn, tag)
    phase.written = await set_written(ctx.conn, tag, ctx.loader.tables[1:])
    r = phase.report
    say(
        f"{label:<3}{title}: {r['attempts']:,} attempts in {r['seconds']:.1f} s = "
        f"{r['attempts_per_second']:,.0f}/s in {r['chunks']:,} chunks (p50 {r['p50_ms']:.1f} ms)"
    )
    return phase


async def phase_profile(ctx: Context) -> dict[str, Any]:
    if find_py_spy() is None:
        skipped = "py-spy is not installed (not a project dependency): .venv/bin/pip install py-spy"
        say(f"P  skipped: {skipped}")
        return {"skipped": skipped}
    await ctx.load("prof", ctx.args.profile_plans)
    out = RESULTS / "profile-retry-job.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    (part,) = await run_children("job", ctx.dsn, 1, ctx.child_args(1), profile=out)
    report = JobRun(**part).report(1, 1)
    report["job"] = ctx.job_settings()
    await retire_set(ctx.conn, "prof")
    folded: dict[str, Any] = fold_profile(out) if out.exists() else {"samples": 0}
    if not folded["samples"]:
        folded["skipped"] = f"py-spy recorded no samples (no {out.name}, or empty)"
    say(
        f"P  one job process under py-spy: {report['attempts_per_second']:,.0f}/s, "
        f"{folded['samples']} samples"
    )
    return {"file": str(out), "run": report, **folded}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"rr_bench_{os.getpid()}"
    dsn = args.admin_url.rsplit("/", 1)[0] + "/" + name
    began = time.monotonic()
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{Path(sys.executable).name} -m bench.retry_throughput "
        + " ".join(sys.argv[1:]),
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k != "admin_url" and v is not None
        },
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_average()},
        "code": code_state(),
    }
    wanted = set(args.phases)
    await admin(f'CREATE DATABASE "{name}"', args.admin_url)
    try:
        await migrate(dsn)
        if args.extra_sql:
            await admin(args.extra_sql, dsn)
        db = await Database.connect(dsn, max_size=4)
        conn: Connection = await asyncpg.connect(dsn)
        try:
            result["machine"].update(
                python=platform.python_version(),
                postgres=await conn.fetchval("SHOW server_version"),
                asyncpg=asyncpg.__version__,
                synchronous_commit=await conn.fetchval("SHOW synchronous_commit"),
                shared_buffers=await conn.fetchval("SHOW shared_buffers"),
            )
            ctx = Context(
                args, dsn, conn, await make_template(db), await Loader.build(conn, args.id_version)
            )
            result["copied_tables"] = ctx.loader.tables
            phases: list[Phase] = []
            if "A" in wanted:
                phases.append(await phase_raw(ctx))
            plan: list[tuple[str, str, int, int]] = [
                ("B1", f"RetryJob in-process, {args.workers} loops", args.plans, 0),
                ("B2", "RetryJob, 1 process, 1 loop", args.variant_plans, 1),
                (
                    "B3",
                    f"RetryJob, {args.b3_processes} processes, 1 loop each",
                    args.variant_plans,
                    args.b3_processes,
                ),
            ]
            for label, title, count, procs in plan:
                if label in wanted and count > 0:
                    phases.append(await phase_jobs(ctx, label, title, count, procs=procs))
            if "A" in wanted and len(phases) > 1:
                # Setup: what the B phases wrote is vacuumed first, so that autovacuum does
                # not take its share of the cores from A' (it did: A' 10-20 % below A).
                await conn.execute("VACUUM (ANALYZE)")
                phases.append(await phase_raw(ctx, "A'"))
            result["phases"] = [dataclasses.asdict(p) for p in phases]
            if "D" in wanted and args.diag_plans:
                await ctx.load("diag", args.diag_plans)
                diag = await serial_diagnosis(dsn, args.chunk, args.batch)
                result["serial_diagnosis"] = diag
                result["per_call"] = await per_call_costs(db, "diag")
                say(
                    f"D  serial job, every statement logged: {diag['chunks']} chunks of "
                    f"{diag['attempts_per_chunk']} attempts, {diag['statements_per_chunk']} "
                    f"statements per chunk, {diag['wall_ms_per_attempt']} ms per attempt, "
                    f"{diag['statement_wait_share_of_wall']:.0%} of it waiting on statements"
                )
            if "P" in wanted and args.profile_plans:
                result["profile"] = await phase_profile(ctx)
            result["loads_seconds"] = ctx.loads
            result["audit_chain_intact"] = bool(
                await conn.fetchval(
                    "SELECT count(*) = 0 FROM (SELECT previous_hash, lag(hash) OVER (ORDER BY "
                    "sequence) AS prev FROM audit_event) c WHERE prev <> previous_hash"
                )
            )
            if "C" in wanted and args.stored:
                result["find_due"] = await find_due_phase(
                    conn,
                    args.stored,
                    args.due_fraction,
                    args.find_reps,
                    args.batch,
                    args.fillfactor_what_if,
                )
        finally:
            await conn.close()
            await db.close()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', args.admin_url)
    result["machine"]["load_average_after"] = load_average()
    result["ratios"] = ratios(result)
    result["total_seconds"] = round(time.monotonic() - began, 1)
    return result


def code_state() -> dict[str, str]:
    """The commit measured, and whether the job's code had uncommitted changes: those of the
    checkout the ``service`` package was imported from (``bench/duel`` runs this benchmark
    against another checkout's code)."""
    checkout = Path(convert.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=checkout,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except OSError:
            return ""
        return done.stdout.strip()

    paths = ["service", "repository"]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_in_service_or_repository": git("status", "--short", "--", *paths),
    }


def is_raw(phase: dict[str, Any]) -> bool:
    return phase["label"] in RAW_PHASES


def ceilings(result: dict[str, Any]) -> dict[str, float]:
    """The raw ceilings the ratios divide by: the higher of A and A' (or A alone). Not their
    mean: A' ran 10-20 % below A after a long B3 even with the database vacuumed in between,
    and whether the host slowed or the larger tables did it, the higher ceiling cannot
    flatter the job."""
    raws = [p["report"] for p in result.get("phases", []) if is_raw(p)]
    if not raws:
        return {}
    return {key: max(r[key]["rows_per_second"] for r in raws) for key in ("one_row", "batch_100")}


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    phases = result.get("phases", [])
    ceiling = ceilings(result)
    if not ceiling:
        return {}
    one, hundred = ceiling["one_row"], ceiling["batch_100"]
    return {
        p["label"]: {
            "vs_raw_one_row": ratio(p["report"]["attempts_per_second"], one),
            "vs_raw_batch_100": ratio(p["report"]["attempts_per_second"], hundred),
        }
        for p in phases
        if not is_raw(p)
    }


def aligned(rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for index, cols in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(cols)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [
        ("measurement", "done", "s", "rate /s", "p50 ms", "p99 ms", "vs raw 1/tx", "vs raw 100/tx")
    ]
    rat = result.get("ratios", {})
    ceiling = ceilings(result)
    phases = result.get("phases", [])
    for p in phases:
        r = p["report"]
        if is_raw(p):
            for key, label in (("one_row", "1 row/tx"), ("batch_100", "100 rows/tx")):
                x = r[key]
                # Against the ceiling used: 1 for the higher of A and A'.
                share = f"{ratio(x['rows_per_second'], ceiling[key]):.3f}"
                rows.append(
                    (
                        f"{p['label']:<3}{p['title']}, {label}",
                        f"{x['rows']:,}",
                        f"{x['seconds']:.1f}",
                    )
                    + (f"{x['rows_per_second']:,.0f}", f"{x['p50_ms']:.2f}", f"{x['p99_ms']:.2f}")
                    + ((share, "") if key == "one_row" else ("", share))
                )
            continue
        q = rat.get(p["label"], {})
        rows.append(
            (f"{p['label']:<3}{p['title']}", f"{r['attempts']:,}", f"{r['seconds']:.1f}")
            + (f"{r['attempts_per_second']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
            + ((f"{q['vs_raw_one_row']:.3f}", f"{q['vs_raw_batch_100']:.3f}") if q else ("", ""))
        )
    lines = aligned(rows)
    if ceiling:
        lines.append(
            f"ceilings (the ratios' divisors, the higher of "
            f"{' and '.join(p['label'] for p in phases if is_raw(p))}): "
            f"{ceiling['one_row']:,.0f} rows/s one row per tx, {ceiling['batch_100']:,.0f} in 100s"
        )
    job = next((p["report"]["job"] for p in phases if "job" in p["report"]), None)
    if job:
        lines.append(
            f"B: RetryJob(chunk={job['chunk']}, chunks={job['chunks']}, "
            f"concurrency={job['concurrency']}), run(limit={job['batch']}), pool {job['pool']} "
            "per process; p50/p99 = the attempt's chunk, open to record"
        )
    lines.append("")
    for p in phases:
        if is_raw(p):
            continue
        r = p["report"]
        lines.append(
            f"{p['label']}: {r['chunks']:,} chunks, {r['attempts_per_chunk']} attempts each; "
            f"CPU per attempt: job {r['job_cpu_ms_per_attempt']} ms, postgres "
            f"{r['postgres_cpu_ms_per_attempt']} ms; cores: job {r['job_process_cores']}, "
            f"postgres {p['cpu'].get('postgres_cores')}, machine {p['cpu'].get('machine_cores')}"
        )
        for state, mean in list(p["db_backends"].items())[:3]:
            lines.append(f"      {mean:>5.2f} backends  {state}")
        hot = [
            f"{t} {c['hot'] / c['updates']:.0%} of {c['updates']:,}"
            for t, c in list(p.get("updates", {}).items())[:4]
        ]
        if hot:
            lines.append(f"      HOT share of rows updated: {'; '.join(hot)}")
    service = [p for p in phases if p["label"] in ("B1", "B2", "B3")]
    if service:
        top = max(p["report"]["attempts_per_second"] for p in service)
        lines.append(
            f"\ntarget >= {TARGET:,} attempts/s: the service's RetryJob, best {top:,.0f}/s "
            f"({'met' if top >= TARGET else 'NOT met'})"
        )
        best = max(
            (p for p in service if p["label"] in rat),
            key=lambda p: p["report"]["attempts_per_second"],
            default=None,
        )
        if best is not None:
            q = rat[best["label"]]
            one, batch = TARGET / TOOLING_RAW_ONE_ROW, TARGET / TOOLING_RAW_BATCH_100
            lines.append(
                f"  the same in ratios to this run's ceilings (TOOLING.md measured them on this "
                f"machine at {TOOLING_RAW_ONE_ROW:,} and {TOOLING_RAW_BATCH_100:,} rows/s, so the "
                f"target is {one:.2f} and {batch:.2f} of them): {best['label']} "
                f"{q['vs_raw_one_row']:.3f} of raw 1/tx "
                f"({'met' if q['vs_raw_one_row'] >= one else 'NOT met'}), "
                f"{q['vs_raw_batch_100']:.3f} of raw 100/tx "
                f"({'met' if q['vs_raw_batch_100'] >= batch else 'NOT met'})"
            )
    written = [p for p in phases if p.get("written")]
    if written:
        lines.append(
            "\nrows written per attempted plan (every B phase should write the same; a "
            "different line or digest = different work):"
        )
        for p in written:
            w = p["written"]
            per = w["per_plan"]
            lines.append(
                f"  {p['label']:<3}{w['plans_attempted']:>7,} plans: status {per['status']}; "
                f"rows {per['rows']}; events {per['events']}; audit {per['audit_rows']}; "
                f"decisions digest {w['latest_decisions_digest']}"
            )
    diag = result.get("serial_diagnosis")
    if diag:
        lines.append(
            f"\nserial RetryJob (1 loop, chunk={diag['chunk']}, chunks=1, concurrency=1): "
            f"{diag['attempts']:,} attempts in {diag['chunks']} chunks "
            f"({diag['attempts_per_chunk']} per chunk) and {diag['job_runs']} runs; "
            f"{diag['wall_ms_per_attempt']} ms wall per attempt, a chunk "
            f"{diag['ms_per_chunk']} ms open to record"
        )
        lines.append(
            f"  in a chunk: {diag['statements_per_chunk']} statements, waiting on them "
            f"{diag['statement_wait_ms_per_chunk']} ms; outside chunks: "
            f"{diag['statements_per_run']} statements per run"
        )
        lines.append(
            f"  per attempt, all statements: {diag['statements_per_attempt']}, waiting on them "
            f"{diag['statement_wait_ms_per_attempt']} ms = "
            f"{diag['statement_wait_share_of_wall']:.0%} of the wall time"
        )
        stmts: list[tuple[str, ...]] = [
            ("where", "statement", "calls", "per chunk/run", "ms per call", "ms per chunk/run")
        ]
        for s in diag["statements"].values():
            scope = s["scope"]
            stmts.append(
                (
                    scope,
                    s["name"],
                    f"{s['calls']:,}",
                    f"{s[f'calls_per_{scope}']:.2f}",
                    f"{s['ms_per_call']:.3f}",
                    f"{s[f'ms_per_{scope}']:.3f}",
                )
            )
        lines.extend("  " + line for line in aligned(stmts, left=2))
    per_call = result.get("per_call")
    if per_call:
        ev, get = per_call["job_event"], per_call["get_retry_plan"]
        lines.append(
            f"per plan in the record transaction: convert.retry_plan_state "
            f"{ev['us_convert_retry_plan_state']} us, RetryAttempted event serialized "
            f"{ev['us_event_serialize']} us ({ev['event_bytes']} bytes)"
        )
        lines.append(
            f"GetRetryPlan (not the job): view read {get['ms_view_statement_serial']} ms, "
            f"{get['view_json_bytes']} bytes of JSON, json.loads "
            f"{get['us_json_loads_view_columns']} us, convert.retry_plan "
            f"{get['us_convert_retry_plan']} us ({get['plan_bytes']} bytes)"
        )
    prof = result.get("profile")
    if prof and prof.get("skipped"):
        lines.append(f"\nprofile (P): skipped, {prof['skipped']}")
    elif prof:
        lines.append(
            f"\none RetryJob process under py-spy ({prof['samples']} on-CPU samples, "
            f"{prof['run']['attempts_per_second']:,.0f} attempts/s while sampled), inclusive:"
        )
        for label, share in prof["inclusive_share"].items():
            lines.append(f"  {share:>6.1%}  {label}")
        top = "; ".join(f"{t['frame']} {t['share']:.1%}" for t in prof["top_self"][:5])
        lines.append(f"  top self time: {top}")
    find = result.get("find_due")
    if find:
        limits = list(find[0]["claims"])
        body: list[tuple[str, ...]] = [
            (
                *("stored", "due"),
                *(f"limit {k} p50/p99 ms" for k in limits),
                *("due idx rows read", "buffers hit", "exec ms", "generic plan exec ms"),
            )
        ]
        notes = []
        for e in find:
            plan, generic = e["plan"], e["plan_generic"]
            label = f"{e['stored']:,}" + (f" {e['what_if']}" if e["what_if"] else "")
            body.append(
                (
                    *(label, f"{e['due']:,}"),
                    *(
                        f"{e['claims'][k]['p50_ms']:.2f} / {e['claims'][k]['p99_ms']:.2f}"
                        for k in limits
                    ),
                    *(str(plan["due_index_rows"]), str(plan["buffers_hit"])),
                    *(str(plan["execution_ms"]), str(generic["execution_ms"])),
                )
            )
            notes.append(
                f"  {label}: custom plan {plan['scan']} on {plan['index']}, {plan['join']}; "
                f"generic plan {generic['scan']} on {generic['index']}, {generic['join']}"
            )
        lines.append(
            f"\nfinding due work: claim_due (limit {result['settings']['batch']} for the plans), "
            "in a transaction rolled back"
        )
        lines.extend("  " + line for line in aligned(body, left=0))
        lines.extend(notes)
        for e in find:
            lines.append(
                f"\nEXPLAIN (ANALYZE, BUFFERS) claim_due limit {result['settings']['batch']}, "
                f"{e['stored']:,} stored{', ' + e['what_if'] if e['what_if'] else ''} (abridged):"
            )
            lines.extend("  " + line for line in e["explain"] if KEY_LINES.search(line))
    return "\n".join(lines)


def sizes(text: str) -> list[int]:
    try:
        found = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(n < 1000 for n in found):
        raise argparse.ArgumentTypeError("every size must be at least 1000")
    return found


def phase_list(text: str) -> list[str]:
    found = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = sorted(set(found) - set(PHASES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phases {unknown}; known: {','.join(PHASES)}")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retry_throughput",
        description="Payment-retry attempts/s of the billing job against the raw claim-and-mark "
        "ceiling, and the time to find due work as stored plans grow.",
    )
    add = parser.add_argument
    add("--plans", type=int, default=100_000, help="due plans loaded for B1")
    add("--workers", type=int, default=2, help="RetryJob loops in this process (B1)")
    add("--batch", type=int, default=500, help="limit of each RetryJob.run (BILLING_JOB_BATCH)")
    add("--stored", type=sizes, default=[10_000, 100_000, 1_000_000], help="phase C sizes")
    add("--job-seconds", type=float, default=20.0, help="no new job run after this (0: drain)")
    add("--variant-plans", type=int, default=15_000, help="due plans loaded for B2 and B3")
    add(
        "--b3-processes",
        type=int,
        default=2,
        help="job processes of phase B3 (one loop each, like replicas of the service)",
    )
    add("--raw-plans", type=int, default=100_000, help="due plans loaded for phase A")
    add("--raw-loops", type=int, default=8)
    add("--raw-seconds", type=float, default=3.0, help="length of each raw measurement")
    add("--pool", type=int, default=SERVICE_POOL, help="database pool of each job process")
    add("--concurrency", type=int, default=SERVICE_CONCURRENCY, help="RetryJob(concurrency=)")
    add("--chunk", type=int, default=CHUNK, help="RetryJob(chunk=): plans per transaction")
    add("--chunks", type=int, default=CHUNKS, help="RetryJob(chunks=): chunks in flight")
    add("--success-percent", type=int, default=30, help="charges the sandbox approves")
    add(
        "--sample-ms",
        type=int,
        default=100,
        help="B phases: pg_stat_activity sampled every this many ms (the sampling costs CPU "
        "on the machine it measures: 20 took 0.07 cores, 100 0.017)",
    )
    add(
        "--id-version",
        type=int,
        choices=(7, 4),
        default=7,
        help="new ids of the copied plans and their rows: time-ordered as the service makes "
        "them (7), or random (4, as before the service made version-7 ids)",
    )
    add("--diag-plans", type=int, default=500, help="plans for the serial diagnosis (D)")
    add("--profile-plans", type=int, default=3000, help="plans for the py-spy profile (P)")
    add("--due-fraction", type=float, default=0.01, help="phase C: share of stored plans due")
    add("--find-reps", type=int, default=100, help="phase C: timed claims per size and limit")
    add(
        "--fillfactor-what-if",
        type=int,
        default=85,
        help="phase C: the largest size again with this retry_plan fillfactor (0: skip)",
    )
    add(
        "--extra-sql",
        help="SQL run once the database is migrated: a what-if on the schema (say, an index "
        "dropped), recorded with the results",
    )
    add(
        "--start-at-wall",
        type=float,
        help="B2/B3: the job processes start at this time (seconds since the epoch), not 2 s "
        "after they are spawned, so that two runs started together (two versions of the code, "
        "say) measure at the same moment on the same host; for one B phase",
    )
    add("--phases", type=phase_list, default=list(PHASES), help=f"subset of {','.join(PHASES)}")
    add("--admin-url", default=ADMIN_URL, help="PostgreSQL URL allowed to create databases")
    add("--output", type=Path, default=RESULTS / "retry_throughput.json")
    # The child processes this module starts.
    hidden = argparse.SUPPRESS
    add("--child", choices=("raw", "job"), help=hidden)
    add("--dsn", help=hidden)
    add("--out", type=Path, help=hidden)
    add("--start-at", type=float, default=0.0, help=hidden)
    add("--loops", type=int, default=1, help=hidden)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    if args.child:
        child: dict[str, Any] = uvloop.run(child_main(args))
        args.out.write_text(json.dumps(child))
        return 0
    result: dict[str, Any] = uvloop.run(run(args))
    print()
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresults: {args.output} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
