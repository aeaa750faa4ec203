"""How long a dashboard query (GetRecoveryMetrics) takes with 1 and 10 million stored payment
attempts, against the same figures computed from the raw tables in the same run.

``.venv/bin/python -m bench.analytics_query [--sizes 1e6,1e7] [--repeats 30] [--raw-repeats 3]``

1. Creates ``rr_bench_analytics_<pid>`` (migrated; always dropped at the end).
2. For each size, grows the tables to that many attempts with ``INSERT ... SELECT
   generate_series`` (triggers off for the bulk load: the fold then rebuilds from the raw
   tables): retry plans spread over the last 180 days (3 gateways, 3 currencies, 3 decline
   classes; 45 % recovered after 1-4 retries, the others exhausted, canceled or open), each
   with its failure and retries, and one refund (with its payment and approvals) per 10 plans.
3. Rebuilds the roll-ups from the raw tables (the first fold's path), then measures the
   incremental fold: a day's worth of new plans, attempts and refunds written *with* the
   triggers, then ``analytics.fold``.
4. Times the dashboard query for the last 30 and 90 days, grouped by day: through the
   application function (``service.analytics.recovery_metrics``) ``--repeats`` times, through
   gRPC (a real server in this process, a grpc.aio client) as often, and the same figures
   from the raw tables (``raw=True``: the SQL a dashboard without roll-ups would run)
   ``--raw-repeats`` times; checks that both answers are equal.
5. Once, on the first size: the write path's cost of the change-log triggers, as the billing
   job's statements see it (chunks of 100: insert OPEN attempts, finish them, move the plans),
   with the analytics triggers enabled and disabled, alternating.

Runs on uvloop, like ``refund-retry serve``. Prints a table and writes every number to
``bench/results/analytics_query.json``. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc

from bench.raw_ceiling import percentile
from bench.refund_throughput import ADMIN_URL, RESULTS, admin, say
from refundretry.v1 import analytics_pb2
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from repository import analytics as analytics_repo
from repository.database import Connection, Database, migrate
from service import analytics
from service.config import Config
from service.domain.analytics import GroupBy
from service.server import start

DAYS = 180  # the stored history
ATTEMPTS_PER_PLAN = 4.35  # the mean the generator gives (1 failure + 1-4 retries)
LOAD_CHUNK = 250_000  # plans per INSERT statement
READER = {"t-bench-reader": {"principal": "bench", "roles": ["read"]}}

PLANS_SQL = """
WITH src AS (
    SELECT i, h, (h / 11) % 100 AS s, 1 + (h / 13) % 4 AS r,
           ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS plan_id,
           $3::timestamptz - make_interval(secs => h2 % ($4::int * 86400)) AS t0,
           (ARRAY['SOFT', 'SOFT', 'HARD', 'CUSTOMER_ACTION'])[1 + (h / 5) % 4] AS class
      FROM (SELECT i, hashint8(i)::bigint & 2147483647 AS h,
                   hashint8(i + 7777777)::bigint & 2147483647 AS h2
              FROM generate_series($1::bigint, $2::bigint - 1) i) x
), plans AS (
    INSERT INTO retry_plan (plan_id, payment_id, customer_id, currency, amount, gateway,
                            schedule_code, time_zone, status, first_failed_at, updated_at,
                            attempt_count)
    SELECT plan_id, 'inv_' || i, 'cus_' || (i % 100000), (ARRAY['USD', 'EUR', 'JPY'])[1 + h % 3],
           500 + h % 20000, (ARRAY['sandbox', 'stripe', 'adyen'])[1 + (h / 3) % 3],
           'payment-fixed', 'UTC',
           CASE WHEN s < 45 THEN 'RECOVERED' WHEN s < 88 THEN 'EXHAUSTED'
                WHEN s < 94 THEN 'CANCELED' ELSE 'ACTIVE' END,
           t0,
           CASE WHEN s < 45
                THEN t0 + make_interval(days => (2 * r - 1)::int, hours => ((h / 7) % 12)::int,
                                        secs => 2)
                ELSE t0 END,
           CASE WHEN s < 45 THEN 1 + r ELSE 5 END
      FROM src
), attempts AS (
    INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source, attempted_at,
                                 payment_method_id, network, outcome, decline_class,
                                 retry_of_class, idempotency_key, local_hour, day_of_month,
                                 days_since_failure)
    SELECT ('00000001-0000-4000-8000-' || lpad(to_hex(i * 8 + k), 12, '0'))::uuid, plan_id,
           k + 1, CASE WHEN k = 0 THEN 'FAILURE' ELSE 'SCHEDULED' END,
           CASE WHEN k = 0 THEN t0
                ELSE t0 + make_interval(days => (2 * k - 1)::int, hours => ((h / 7) % 12)::int) END,
           'pm_' || i, 'VISA',
           CASE WHEN k = 0 THEN 'DECLINED'
                WHEN s < 45 AND k = r THEN 'SUCCEEDED'
                WHEN (h / (k + 17)) % 10 = 0 THEN 'REQUIRES_ACTION'
                WHEN (h / (k + 23)) % 20 = 0 THEN 'NOT_ATTEMPTED'
                ELSE 'DECLINED' END,
           CASE WHEN k = 0 OR NOT (s < 45 AND k = r) THEN class ELSE '' END,
           CASE WHEN k = 0 THEN '' ELSE class END,
           'bench-' || i || '-' || k, 0, 1, 0
      FROM src CROSS JOIN LATERAL generate_series(0, CASE WHEN s < 45 THEN r ELSE 4 END) k
)
SELECT count(*) FROM src
"""

REFUNDS_SQL = """
WITH src AS (
    SELECT j, h, ('00000002-0000-4000-8000-' || lpad(to_hex(j), 12, '0'))::uuid AS refund_id,
           $3::timestamptz - make_interval(secs => h2 % ($4::int * 86400)) AS created,
           CASE WHEN h % 10 < 6 THEN 0 WHEN h % 10 < 9 THEN 1 ELSE 2 END AS required,
           (ARRAY['USD', 'EUR', 'JPY'])[1 + h % 3] AS currency,
           (ARRAY['sandbox', 'stripe', 'adyen'])[1 + (h / 3) % 3] AS gateway
      FROM (SELECT j, hashint8(-j)::bigint & 2147483647 AS h,
                   hashint8(j + 99999999)::bigint & 2147483647 AS h2
              FROM generate_series($1::bigint, $2::bigint - 1) j) x
), statused AS (
    SELECT *, CASE WHEN created > $3::timestamptz - interval '7 days' AND (h / 7) % 5 = 0
                   THEN 'PENDING_APPROVAL'
                   ELSE (ARRAY['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED',
                               'SUCCEEDED', 'FAILED', 'REJECTED', 'CANCELED', 'PROCESSING'])
                        [1 + (h / 17) % 10] END AS status
      FROM src
), payments AS (
    INSERT INTO payment (payment_id, gateway, gateway_transaction_id, customer_id, currency,
                         captured_amount, captured_at)
    SELECT 'bpay_' || j, gateway, 'bpi_' || j, 'cus_' || (j % 100000), currency, 100000,
           created - interval '1 day'
      FROM statused
), refunds AS (
    INSERT INTO refund_event (refund_id, payment_id, customer_id, currency, amount, status,
                              requested_by, required_approvals, auto_approved, created_at,
                              updated_at)
    SELECT refund_id, 'bpay_' || j, 'cus_' || (j % 100000), currency, 100 + h % 50000, status,
           'billing-service', required, required = 0, created, created
      FROM statused
), approvals AS (
    INSERT INTO refund_approval (refund_id, approver, approved_at)
    SELECT refund_id, 'approver' || n, created + make_interval(mins => ((h / (n + 3)) % 2880)::int)
      FROM statused
     CROSS JOIN LATERAL generate_series(1, CASE WHEN status IN ('PENDING_APPROVAL', 'REJECTED',
                                                                'CANCELED')
                                                THEN 0 ELSE required END) n
)
SELECT count(*) FROM statused
"""

# The billing job's statements in chunks of 100, for the trigger overhead (step 5).
WRITE_INSERT = """
INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source, attempted_at,
                             payment_method_id, network, outcome, idempotency_key,
                             retry_of_class, local_hour, day_of_month, days_since_failure)
SELECT gen_random_uuid(), plan_id, 100 + $2::int, 'SCHEDULED', now(), 'pm_w', 'VISA', 'OPEN',
       gen_random_uuid()::text, 'SOFT', 0, 1, 0
  FROM unnest($1::uuid[]) AS plan_id
"""
WRITE_FINISH = """
UPDATE payment_attempt SET outcome = 'DECLINED', decline_class = 'SOFT'
 WHERE plan_id = ANY($1::uuid[]) AND attempt_number = 100 + $2::int AND outcome = 'OPEN'
"""
WRITE_MOVE = """
UPDATE retry_plan SET next_attempt_at = now() + interval '1 day', lease_owner = NULL,
       attempt_count = attempt_count + 1, updated_at = now()
 WHERE plan_id = ANY($1::uuid[])
"""
ANALYTICS_TRIGGERS = (
    ("payment_attempt", "analytics_attempts_inserted"),
    ("payment_attempt", "analytics_attempts_updated"),
    ("retry_plan", "analytics_plans_updated"),
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1e6,1e7",
        type=lambda text: [int(float(s)) for s in text.split(",")],
        help="stored attempts to measure at, increasing (default 1e6,1e7)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="roll-up and gRPC queries each")
    parser.add_argument("--raw-repeats", type=int, default=3, help="raw-table queries each")
    parser.add_argument("--write-chunks", type=int, default=60, help="chunks of 100, step 5")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--output", type=Path, default=RESULTS / "analytics_query.json")
    return parser.parse_args()


def ms(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(seconds, 0.5) * 1000, 2),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 2),
        "n": len(seconds),
    }


async def timed(call: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        await call()
        out.append(time.perf_counter() - began)
    return out


async def grow(
    conn: Connection, plans: tuple[int, int], refunds: tuple[int, int], end: datetime
) -> None:
    """Plans [from, to) with their attempts, refunds [from, to), over the DAYS before end."""
    for low in range(plans[0], plans[1], LOAD_CHUNK):
        await conn.execute(PLANS_SQL, low, min(low + LOAD_CHUNK, plans[1]), end, DAYS)
    for low in range(refunds[0], refunds[1], LOAD_CHUNK):
        await conn.execute(REFUNDS_SQL, low, min(low + LOAD_CHUNK, refunds[1]), end, DAYS)


async def incremental_fold(
    db: Database, conn: Connection, plans: int, end: datetime
) -> dict[str, Any]:
    """A day of new rows written with the triggers on (the plans' and refunds' ids continue
    where the bulk load stopped), then one fold."""
    first_plan = await conn.fetchval("SELECT count(*) FROM retry_plan") + 10**9
    first_refund = await conn.fetchval("SELECT count(*) FROM refund_event") + 10**9
    day = max(plans // DAYS, 1000)
    await conn.execute(PLANS_SQL, first_plan, first_plan + day, end, 1)
    await conn.execute(REFUNDS_SQL, first_refund, first_refund + day // 10, end, 1)
    logged = await conn.fetchval("SELECT count(*) FROM analytics_attempt_change")
    summary = await analytics.fold(db, ("UTC",))
    return {
        "new_plans": day,
        "attempt_log_rows": logged,
        "fold_seconds": round(summary.seconds, 3),
        "plans_recomputed": summary.plans,
        "refunds_recomputed": summary.refunds,
    }


async def write_overhead(conn: Connection, chunks: int) -> dict[str, Any]:
    """Seconds per chunk of the billing job's three set-based statements, with and without
    the analytics triggers, in alternating rounds."""
    plan_ids = [
        r[0] for r in await conn.fetch("SELECT plan_id FROM retry_plan LIMIT $1", chunks * 100)
    ]
    rounds: dict[str, list[float]] = {"with": [], "without": []}
    for number in range(4):
        mode = "with" if number % 2 == 0 else "without"
        verb = "ENABLE" if mode == "with" else "DISABLE"
        for table, trigger in ANALYTICS_TRIGGERS:
            await conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")
        began = time.perf_counter()
        for chunk in range(chunks):
            ids = plan_ids[chunk * 100 : (chunk + 1) * 100]
            async with conn.transaction():
                await conn.execute(WRITE_INSERT, ids, number)
                await conn.execute(WRITE_FINISH, ids, number)
                await conn.execute(WRITE_MOVE, ids)
        rounds[mode].append((time.perf_counter() - began) / chunks)
    for table, trigger in ANALYTICS_TRIGGERS:
        await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    with_, without = statistics.median(rounds["with"]), statistics.median(rounds["without"])
    return {
        "ms_per_chunk_with_triggers": round(with_ * 1000, 3),
        "ms_per_chunk_without": round(without * 1000, 3),
        "overhead": round(with_ / without - 1, 3),
        "chunks_per_round": chunks,
    }


def service_config(dsn: str) -> Config:
    return Config.from_env(
        {
            "REFUND_RETRY_DATABASE_URL": dsn,
            "REFUND_RETRY_GRPC_HOST": "127.0.0.1",
            "REFUND_RETRY_GRPC_PORT": "0",
            "REFUND_RETRY_HTTP_HOST": "127.0.0.1",
            "REFUND_RETRY_HTTP_PORT": "0",
            "REFUND_RETRY_PLAINTEXT": "true",
            "REFUND_RETRY_TOKENS": json.dumps(READER),
            "REFUND_RETRY_CONSUMERS": "false",
            "REFUND_RETRY_RELAY": "false",
            "REFUND_RETRY_ANALYTICS_ROLLUP_SECONDS": "0",
            "REFUND_RETRY_LOG_LEVEL": "WARNING",
        }
    )


async def measure_queries(
    db: Database, stub: pb_grpc.RefundRetryServiceStub, end: datetime, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    call = cast(Callable[..., Awaitable[Any]], stub.GetRecoveryMetrics)  # grpc.aio: awaitable
    for days in (30, 90):
        start = end - timedelta(days=days)
        query = analytics.MetricsQuery(start, end, "UTC", GroupBy.DAY)
        request = analytics_pb2.GetRecoveryMetricsRequest(
            time_zone="UTC", group_by=analytics_pb2.METRICS_GROUP_BY_DAY
        )
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        metadata = tuple(("authorization", f"Bearer {token}") for token in READER)

        async def rollup(query: analytics.MetricsQuery = query) -> object:
            return await analytics.recovery_metrics(db, query, zones=("UTC",))

        async def over_grpc(request: Any = request, metadata: Any = metadata) -> object:
            return await call(request, metadata=metadata, timeout=60)

        async def raw(query: analytics.MetricsQuery = query) -> object:
            return await analytics.recovery_metrics(db, query, zones=("UTC",), raw=True)

        await rollup()  # warm the pool and the plans
        app = await timed(rollup, args.repeats)
        wire = await timed(over_grpc, args.repeats)
        baseline = await timed(raw, args.raw_repeats)
        from_rollup = await analytics.recovery_metrics(db, query, zones=("UTC",))
        from_raw = await analytics.recovery_metrics(db, query, zones=("UTC",), raw=True)
        agree = (from_rollup.groups, from_rollup.total) == (from_raw.groups, from_raw.total)
        row: dict[str, Any] = {
            "days": days,
            "application": ms(app),
            "grpc": ms(wire),
            "raw_tables": ms(baseline),
            "raw_over_rollup_p50": round(percentile(baseline, 0.5) / percentile(app, 0.5), 1),
            "agree": agree,
            "retry_attempts_in_range": from_rollup.total.retry_attempts,
        }
        say(
            f"   {days:>2} days: application p50 {row['application']['p50_ms']} ms, "
            f"p99 {row['application']['p99_ms']} ms; gRPC p50 {row['grpc']['p50_ms']} ms, "
            f"p99 {row['grpc']['p99_ms']} ms; raw tables p50 {row['raw_tables']['p50_ms']} ms "
            f"({row['raw_over_rollup_p50']}x); figures agree: {agree}"
        )
        rows.append(row)
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"rr_bench_analytics_{os.getpid()}"
    dsn = args.admin_url.rsplit("/", 1)[0] + "/" + name
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{Path(sys.executable).name} -m bench.analytics_query "
        + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("admin_url", "output")},
        "cpus": os.cpu_count(),
        "sizes": [],
    }
    await admin(f'CREATE DATABASE "{name}"', args.admin_url)
    try:
        await migrate(dsn)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        db = await Database.connect(dsn, max_size=4)
        conn: Connection = await asyncpg.connect(dsn)
        service = await start(service_config(dsn), run_billing_loop=False)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        try:
            stub = pb_grpc.RefundRetryServiceStub(channel)
            result["postgres"] = await conn.fetchval("SHOW server_version")
            plans_done = refunds_done = 0
            for size in args.sizes:
                plans = int(size / ATTEMPTS_PER_PLAN)
                began = time.monotonic()
                await conn.execute("SET session_replication_role = replica")  # no triggers
                await grow(conn, (plans_done, plans), (refunds_done, plans // 10), end)
                await conn.execute("SET session_replication_role = origin")
                await conn.execute("ANALYZE")
                load = time.monotonic() - began
                plans_done, refunds_done = plans, plans // 10
                stored = await conn.fetchval("SELECT count(*) FROM payment_attempt")
                say(
                    f"{stored:,} attempts, {plans:,} plans, {plans // 10:,} refunds "
                    f"({load:.0f} s to load)"
                )
                async with db.connection() as c:
                    await analytics_repo.reset(c)
                rebuild = await analytics.fold(db, ("UTC",))
                say(f"   roll-ups rebuilt from the raw tables in {rebuild.seconds:.1f} s")
                incremental = await incremental_fold(db, conn, plans, end)
                say(
                    f"   a day of new rows ({incremental['new_plans']:,} plans, "
                    f"{incremental['attempt_log_rows']:,} attempt changes) folded in "
                    f"{incremental['fold_seconds']} s"
                )
                entry: dict[str, Any] = {
                    "attempts": stored,
                    "plans": plans,
                    "refunds": plans // 10,
                    "load_seconds": round(load, 1),
                    "rebuild_seconds": round(rebuild.seconds, 2),
                    "incremental_fold": incremental,
                    "rollup_rows": await conn.fetchval(
                        "SELECT (SELECT count(*) FROM analytics_payment_day) + "
                        "(SELECT count(*) FROM analytics_refund_day) + "
                        "(SELECT count(*) FROM analytics_duration_day)"
                    ),
                    "queries": await measure_queries(db, stub, end, args),
                }
                if size == args.sizes[0]:
                    entry["write_overhead"] = overhead = await write_overhead(
                        conn, args.write_chunks
                    )
                    say(
                        f"   billing-job statements per chunk of 100: "
                        f"{overhead['ms_per_chunk_with_triggers']} ms with the triggers, "
                        f"{overhead['ms_per_chunk_without']} ms without "
                        f"({overhead['overhead']:+.0%})"
                    )
                result["sizes"].append(entry)
        finally:
            await channel.close(None)
            await service.stop()
            await conn.close()
            await db.close()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', args.admin_url)
    return result


def main() -> None:
    import uvloop

    args = parse()
    result = uvloop.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    say(f"written to {args.output}")


if __name__ == "__main__":
    main()
