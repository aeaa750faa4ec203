"""The billing job's queue: leased refund details."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("billing_job")


async def claim(
    conn: Connection,
    *,
    process_new: bool,
    process_due: bool,
    start: datetime,
    end: datetime,
    limit: int,
    worker: str,
    lease_seconds: float,
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        Q["claim"], process_new, process_due, start, end, limit, worker, lease_seconds
    )
    return [r["detail_id"] for r in rows]


async def work_item(conn: Connection, detail_id: uuid.UUID, worker: str) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["work_item"], detail_id, worker)


async def start_attempt(
    conn: Connection, detail_id: uuid.UUID, worker: str
) -> tuple[int, datetime] | None:
    """(attempt number, start time) of the new attempt; None when the detail was canceled."""
    row = await conn.fetchrow(Q["start_attempt"], detail_id, worker)
    return (row["attempt_count"], row["attempt_started_at"]) if row else None


async def record_outcome(
    conn: Connection,
    detail_id: uuid.UUID,
    worker: str,
    *,
    status: str,
    gateway_refund_id: str,
    attempt_open: bool,
    next_retry: datetime | None,
    error_code: str,
    error_message: str,
    remaining_retries: int,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        Q["record_outcome"],
        detail_id,
        worker,
        status,
        gateway_refund_id,
        attempt_open,
        next_retry,
        error_code,
        error_message[:1000],
        remaining_retries,
    )


async def release_lease(conn: Connection, detail_id: uuid.UUID, worker: str) -> None:
    await conn.execute(Q["release_lease"], detail_id, worker)


async def detail_statuses(conn: Connection, refund_id: uuid.UUID) -> list[str]:
    return [r["status"] for r in await conn.fetch(Q["detail_statuses"], refund_id)]
