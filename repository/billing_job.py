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


async def record_not_attempted(
    conn: Connection,
    detail_id: uuid.UUID,
    worker: str,
    *,
    next_retry: datetime,
    error_code: str,
    error_message: str,
    remaining_retries: int,
) -> asyncpg.Record | None:
    """Give back a new attempt that never reached the gateway, under ``worker``'s lease."""
    return await conn.fetchrow(
        Q["record_not_attempted"],
        detail_id,
        worker,
        next_retry,
        error_code,
        error_message[:1000],
        remaining_retries,
    )


async def postpone(
    conn: Connection,
    detail_id: uuid.UUID,
    worker: str,
    *,
    next_retry: datetime | None,
    error_code: str,
    error_message: str,
) -> asyncpg.Record | None:
    """Look at the detail again at ``next_retry`` (None: not at all), changing nothing else but
    its last error; releases the lease. None when the lease was lost."""
    return await conn.fetchrow(
        Q["postpone"], detail_id, worker, next_retry, error_code, error_message[:1000]
    )


async def lock_detail(conn: Connection, detail_id: uuid.UUID) -> asyncpg.Record | None:
    """The detail with its refund's, payment's and schedule's columns, locked, leased or not."""
    return await conn.fetchrow(Q["lock_detail"], detail_id)


async def apply_outcome(
    conn: Connection,
    detail_id: uuid.UUID,
    *,
    status: str,
    gateway_refund_id: str,
    attempt_open: bool,
    next_retry: datetime | None,
    error_code: str,
    error_message: str,
    remaining_retries: int,
) -> asyncpg.Record:
    """Record an outcome without a lease (ending any): the caller holds the row lock."""
    row = await conn.fetchrow(
        Q["apply_outcome"],
        detail_id,
        status,
        gateway_refund_id,
        attempt_open,
        next_retry,
        error_code,
        error_message[:1000],
        remaining_retries,
    )
    assert row is not None
    return row


async def detail_statuses_by_id(conn: Connection, refund_id: uuid.UUID) -> dict[uuid.UUID, str]:
    return {
        r["detail_id"]: r["status"] for r in await conn.fetch(Q["detail_statuses_by_id"], refund_id)
    }
