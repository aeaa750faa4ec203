"""The refund policy (versioned rows) and retry schedules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from repository.database import Connection
from repository.queries import Queries
from service.domain.approval_policy import ApprovalTier, RefundPolicy
from service.domain.money import Money
from service.domain.retry_schedule import RetrySchedule, Timing, WalletPolicy
from service.domain.retry_timing import AllowedHours

Q = Queries("settings")


def _policy(row: asyncpg.Record) -> RefundPolicy:
    data = row["policy"]
    return RefundPolicy(
        auto_approve={c: int(v) for c, v in data["auto_approve"].items()},
        tiers=tuple(
            ApprovalTier(Money(t["currency"], int(t["min_amount"])), int(t["required_approvals"]))
            for t in data["tiers"]
        ),
        refund_window=timedelta(seconds=int(data["refund_window_seconds"])),
        version=row["version"],
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
    )


async def lock_policy(conn: Connection) -> None:
    await conn.execute(Q["lock_policy"])


async def current_policy(conn: Connection) -> RefundPolicy:
    row = await conn.fetchrow(Q["current_policy"])
    assert row is not None, "the initial migration inserts policy version 0"
    return _policy(row)


async def policy_version(conn: Connection, version: int) -> RefundPolicy | None:
    row = await conn.fetchrow(Q["policy_version"], version)
    return _policy(row) if row else None


async def save_policy(conn: Connection, policy: RefundPolicy, updated_by: str) -> RefundPolicy:
    data: dict[str, Any] = {
        "auto_approve": dict(sorted(policy.auto_approve.items())),
        "tiers": [
            {
                "currency": t.min_amount.currency,
                "min_amount": t.min_amount.minor_units,
                "required_approvals": t.required_approvals,
            }
            for t in policy.tiers
        ],
        "refund_window_seconds": int(policy.refund_window.total_seconds()),
    }
    row = await conn.fetchrow(Q["insert_policy"], data, updated_by)
    assert row is not None
    return _policy(row)


async def get_schedule(conn: Connection, code: str, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_schedule" if lock else "get_schedule"], code)


def _schedule_columns(schedule: RetrySchedule) -> tuple[object, ...]:
    hours = schedule.allowed_hours
    return (
        schedule.code,
        schedule.description,
        [int(i.total_seconds()) for i in schedule.intervals],
        schedule.max_attempts,
        schedule.timing.value,
        hours.start_hour if hours else None,
        hours.end_hour if hours else None,
        schedule.max_span_days,
        schedule.wallet.value,
    )


async def insert_schedule(conn: Connection, schedule: RetrySchedule) -> asyncpg.Record:
    row = await conn.fetchrow(Q["insert_schedule"], *_schedule_columns(schedule))
    assert row is not None
    return row


async def update_schedule(conn: Connection, schedule: RetrySchedule) -> asyncpg.Record:
    row = await conn.fetchrow(Q["update_schedule"], *_schedule_columns(schedule))
    assert row is not None
    return row


def schedule_from_row(row: asyncpg.Record) -> RetrySchedule:
    start, end = row["allowed_start_hour"], row["allowed_end_hour"]
    return RetrySchedule(
        code=row["code"],
        intervals=tuple(timedelta(seconds=s) for s in row["intervals"]),
        max_attempts=row["max_attempts"],
        description=row["description"],
        timing=Timing(row["timing"]),
        allowed_hours=AllowedHours(start, end) if start is not None else None,
        max_span_days=row["max_span_days"],
        wallet=WalletPolicy(row["wallet"]),
    )


async def list_schedules(conn: Connection, after_code: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(Q["list_schedules"], after_code, limit)
