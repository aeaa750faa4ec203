"""The raw asyncpg ceiling: CreateRefund's transaction and the billing job's two execution
transactions, statement for statement, without gRPC, protobuf or domain logic.

Every statement is the service's own named query (``repository.queries.Queries``), run in the
same order with equivalent parameters, in one transaction per use case, on a plain pool of
``--pool`` connections shared by ``--tasks`` asyncio tasks. Run in its own process by
``bench.refund_throughput`` (``python -m bench.raw_ceiling --dsn ...`` prints one JSON object).

What is deliberately left out (it is the service overhead the ratio measures): the JSON type
codec (jsonb goes in and comes out as text), building protobuf events (the outbox payload is
a fixed blob of the real event's size), plan arithmetic, policy parsing, logging.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from repository.queries import Queries

if TYPE_CHECKING:
    Pool = asyncpg.Pool[asyncpg.Record]
else:
    Pool = asyncpg.Pool

PAYMENTS, REFUNDS, SETTINGS, JOURNAL, JOB, LEDGER = (
    Queries(name)
    for name in ("payments", "refunds", "settings", "journal", "billing_job", "ledger")
)
SCHEDULE = "refund-default"
T = TypeVar("T")
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# Serialized refundretry.v1.Event sizes seen in the outbox of a service run (refund.created,
# refund.processing, refund.succeeded): the raw path writes blobs of the same size.
CREATED_EVENT_BYTES = 429
PROCESSING_EVENT_BYTES = 438
SUCCEEDED_EVENT_BYTES = 470


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class PhaseResult:
    name: str
    completed: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)

    def finish(self, started: float, cpu_started: float) -> None:
        self.seconds = time.monotonic() - started
        self.cpu_seconds = time.process_time() - cpu_started
        self.rate = self.completed / self.seconds if self.seconds else 0.0
        self.p50_ms = percentile(self.latencies, 0.50) * 1000
        self.p99_ms = percentile(self.latencies, 0.99) * 1000

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latencies"]
        return out


async def timed(result: PhaseResult, work: Callable[[T], Awaitable[None]], arg: T) -> None:
    started = time.perf_counter()
    try:
        await work(arg)
    except (asyncpg.PostgresError, OSError, AssertionError) as exc:
        result.errors += 1
        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
        return
    result.latencies.append(time.perf_counter() - started)
    result.completed += 1


class RawCeiling:
    def __init__(
        self, pool: Pool, payment_ids: list[str], amount: int, actor: str, *, audit: bool = True
    ) -> None:
        self.pool = pool
        self.audit = audit
        self.payment_ids = payment_ids
        self.amount = amount
        self.actor = actor
        self.worker = f"bench-raw:{os.getpid()}"

    async def create_refund(self, payment_id: str) -> None:
        """CreateRefund's transaction (service/refunds.py ``create_refund``)."""
        request_id = str(uuid.uuid4())
        refund_id, detail_id, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        digest = hashlib.sha256(f"CreateRefund|{payment_id}|{self.amount}".encode()).digest()
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                JOURNAL["idempotency_claim"], "CreateRefund", request_id, digest, str(refund_id)
            )
            assert claimed is not None
            payment = await conn.fetchrow(PAYMENTS["lock_payment"], payment_id)
            assert payment is not None
            assert await conn.fetchrow(SETTINGS["get_schedule"], SCHEDULE) is not None
            items = await conn.fetch(PAYMENTS["get_items"], payment_id)
            assert await conn.fetchrow(SETTINGS["current_policy"]) is not None
            # The whole refund on the first item, split 9:1 into net and tax.
            item_id = items[0]["item_id"]
            tax = self.amount // 10
            net = self.amount - tax
            await conn.execute(
                REFUNDS["insert_refund"],
                refund_id,
                payment_id,
                payment["customer_id"],
                payment["subscription_id"],
                payment["currency"],
                self.amount,
                "APPROVED",
                "bench raw ceiling",
                self.actor,
                0,
                True,
            )
            await conn.execute(
                REFUNDS["insert_refund_items"], refund_id, payment_id, [item_id], [net], [tax]
            )
            await conn.execute(
                REFUNDS["insert_detail"],
                detail_id,
                refund_id,
                payment_id,
                self.amount,
                payment["gateway"],
                SCHEDULE,
            )
            reserved = await conn.fetchval(
                PAYMENTS["reserve"], payment_id, [item_id], [net], [tax], self.amount
            )
            assert reserved is not None
            assert await conn.fetchrow(REFUNDS["view"], refund_id) is not None
            await conn.execute(
                JOURNAL["outbox_add"],
                event_id,
                "refund.created",
                "refund",
                str(refund_id),
                os.urandom(CREATED_EVENT_BYTES),
            )
            data = {
                "payment_id": payment_id,
                "amount": self.amount,
                "currency": payment["currency"],
                "auto_approved": True,
                "policy_version": 1,
                "reason": "bench raw ceiling",
                "event_id": str(event_id),
            }
            if not self.audit:
                return
            await conn.fetchval(
                JOURNAL["audit_append"],
                self.actor,
                "refund.created",
                "refund",
                str(refund_id),
                json.dumps(data),
            )

    async def execute_detail(self, detail_id: uuid.UUID) -> None:
        """The billing job's start transaction, the (sandbox) gateway call and its record
        transaction (service/jobs/billing_job.py ``_process``), for a detail that succeeds."""
        async with self.pool.acquire() as conn, conn.transaction():
            item = await conn.fetchrow(JOB["work_item"], detail_id, self.worker)
            assert item is not None
            attempt = await conn.fetchval(JOB["start_attempt"], detail_id, self.worker)
            assert isinstance(attempt, int)
            refund_id = item["refund_id"]
            await conn.fetchval(
                REFUNDS["set_status"], refund_id, "PROCESSING", ["APPROVED"], None, None
            )
            assert await conn.fetchrow(REFUNDS["view"], refund_id) is not None
            event_id = uuid.uuid4()
            await conn.execute(
                JOURNAL["outbox_add"],
                event_id,
                "refund.processing",
                "refund",
                str(refund_id),
                os.urandom(PROCESSING_EVENT_BYTES),
            )
            data = {
                "detail_id": str(detail_id),
                "attempt": attempt,
                "worker": self.worker,
                "event_id": str(event_id),
            }
            await conn.fetchval(
                JOURNAL["audit_append"],
                "system:billing-job",
                "refund.processing",
                "refund",
                str(refund_id),
                json.dumps(data),
            )
        key = f"refund-{detail_id}-attempt-{attempt}"
        gateway_refund_id = "sbre_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        async with self.pool.acquire() as conn, conn.transaction():
            refund = await conn.fetchrow(REFUNDS["lock_refund"], refund_id)
            assert refund is not None
            detail = await conn.fetchrow(
                JOB["record_outcome"],
                detail_id,
                self.worker,
                "SUCCEEDED",
                gateway_refund_id,
                False,
                None,
                "",
                "",
                item["max_attempts"] - attempt,
            )
            assert detail is not None
            statuses = await conn.fetch(JOB["detail_statuses"], refund_id)
            assert all(s["status"] == "SUCCEEDED" for s in statuses)
            await conn.fetchval(
                REFUNDS["set_status"], refund_id, "SUCCEEDED", ["PROCESSING"], None, None
            )
            payment_id, amount = refund["payment_id"], refund["amount"]
            await conn.execute(PAYMENTS["lock_payment"], payment_id)
            await conn.execute(PAYMENTS["settle"], payment_id, refund_id, amount)
            assert await conn.fetchrow(REFUNDS["view"], refund_id) is not None
            tax = amount // 10
            journal_id = await conn.fetchval(
                LEDGER["insert_journal"],
                "refund",
                payment_id,
                refund_id,
                refund["currency"],
                f"refund {refund_id} of {payment_id}",
            )
            await conn.execute(
                LEDGER["insert_lines"],
                journal_id,
                [1, 2, 3],
                ["refunds", "tax_payable", f"gateway_clearing:{item['gateway']}"],
                [amount - tax, tax, 0],
                [0, 0, amount],
            )
            event_id = uuid.uuid4()
            await conn.execute(
                JOURNAL["outbox_add"],
                event_id,
                "refund.succeeded",
                "refund",
                str(refund_id),
                os.urandom(SUCCEEDED_EVENT_BYTES),
            )
            outcome = {
                "detail_id": str(detail_id),
                "attempt": attempt,
                "outcome": "SUCCEEDED",
                "error_code": "",
                "gateway_refund_id": gateway_refund_id,
                "event_id": str(event_id),
            }
            await conn.fetchval(
                JOURNAL["audit_append"],
                "system:billing-job",
                "refund.succeeded",
                "refund",
                str(refund_id),
                json.dumps(outcome),
            )

    async def create_phase(self, tasks: int, seconds: float, limit: int) -> PhaseResult:
        result = PhaseResult("raw_create")
        counter = itertools.count()
        deadline = time.monotonic() + seconds
        payments = self.payment_ids

        async def task() -> None:
            while True:
                n = next(counter)
                if n >= limit or time.monotonic() >= deadline:
                    return
                await timed(result, self.create_refund, payments[n % len(payments)])

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(task() for _ in range(tasks)))
        result.finish(started, cpu)
        return result

    async def execute_phase(
        self, tasks: int, seconds: float, runners: int, batch: int
    ) -> PhaseResult:
        """``runners`` loops each claim ``batch`` details (the job's claim statement) and
        execute them with at most ``tasks`` in flight in all; no new claim after ``seconds``."""
        result = PhaseResult("raw_execute")
        deadline = time.monotonic() + seconds
        in_flight = asyncio.Semaphore(tasks)

        async def guarded(detail_id: uuid.UUID) -> None:
            async with in_flight:
                await timed(result, self.execute_detail, detail_id)

        async def runner() -> None:
            while time.monotonic() < deadline:
                async with self.pool.acquire() as conn:
                    rows = await conn.fetch(
                        JOB["claim"],
                        True,
                        True,
                        NEVER,
                        datetime.now(UTC),
                        batch,
                        self.worker,
                        60.0,
                    )
                if not rows:
                    return
                await asyncio.gather(*(guarded(r["detail_id"]) for r in rows))

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(runner() for _ in range(runners)))
        result.finish(started, cpu)
        return result


async def cancel_leftovers(pool: Pool, actor: str) -> int:
    """Setup, not measured: raw refunds the execute phase did not reach are canceled so the
    service's billing job never sees them."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE refund_event_detail d SET status = 'CANCELED', lease_owner = NULL,
                      lease_expires_at = NULL
                 FROM refund_event r
                WHERE r.refund_id = d.refund_id AND r.requested_by = $1
                  AND d.status IN ('PENDING', 'PROCESSING', 'RETRY_SCHEDULED')""",
            actor,
        )
        done = await conn.execute(
            """UPDATE refund_event SET status = 'CANCELED'
                WHERE requested_by = $1 AND status IN ('APPROVED', 'PROCESSING')""",
            actor,
        )
    return int(done.split()[-1])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    pool = await asyncpg.create_pool(
        args.dsn, min_size=args.pool, max_size=args.pool, command_timeout=30
    )
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT payment_id FROM payment ORDER BY payment_id")
        payment_ids = [r["payment_id"] for r in rows]
        if not payment_ids:
            raise SystemExit("no payments in the database: record some first")
        raw = RawCeiling(pool, payment_ids, args.amount, args.actor, audit=not args.skip_audit)
        create = await raw.create_phase(args.tasks, args.seconds, args.refunds)
        execute = None
        if args.execute_seconds > 0:
            execute = await raw.execute_phase(
                args.tasks, args.execute_seconds, args.runners, args.batch
            )
        canceled = await cancel_leftovers(pool, args.actor)
    finally:
        await pool.close()
    return {
        "loop": args.loop,
        "audit": not args.skip_audit,
        "pool": args.pool,
        "tasks": args.tasks,
        "payments": len(payment_ids),
        "create": create.summary(),
        "execute": execute.summary() if execute else None,
        "leftovers_canceled": canceled,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_ceiling", description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--seconds", type=float, default=6.0, help="create phase length")
    parser.add_argument("--execute-seconds", type=float, default=6.0, help="0 = skip")
    parser.add_argument("--refunds", type=int, default=1_000_000, help="most refunds created")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--runners", type=int, default=4, help="claim loops when executing")
    parser.add_argument("--batch", type=int, default=200, help="details per claim")
    parser.add_argument("--amount", type=int, default=100, help="refund amount, minor units")
    parser.add_argument("--actor", default="bench-raw")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--skip-audit",
        action="store_true",
        help="diagnosis only: leave out CreateRefund's audit insert (the chain-head lock)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        result: dict[str, Any] = uvloop.run(main_async(args))
    else:
        result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
