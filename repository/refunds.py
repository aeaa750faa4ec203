"""RefundEvents, their details, items and approvals."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("refunds")


async def insert(
    conn: Connection,
    *,
    refund_id: uuid.UUID,
    detail_id: uuid.UUID,
    payment_id: str,
    customer_id: str,
    subscription_id: str,
    currency: str,
    amount: int,
    status: str,
    reason: str,
    requested_by: str,
    required_approvals: int,
    auto_approved: bool,
    gateway: str,
    retry_schedule_code: str,
    lines: Sequence[tuple[str, int, int]],
) -> None:
    await conn.execute(
        Q["insert_refund"],
        refund_id,
        payment_id,
        customer_id,
        subscription_id,
        currency,
        amount,
        status,
        reason,
        requested_by,
        required_approvals,
        auto_approved,
    )
    await conn.execute(
        Q["insert_refund_items"],
        refund_id,
        payment_id,
        [i for i, _, _ in lines],
        [n for _, n, _ in lines],
        [t for _, _, t in lines],
    )
    await conn.execute(
        Q["insert_detail"], detail_id, refund_id, payment_id, amount, gateway, retry_schedule_code
    )


async def lock(conn: Connection, refund_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_refund"], refund_id)


async def set_status(
    conn: Connection,
    refund_id: uuid.UUID,
    target: str,
    sources: Sequence[str],
    *,
    decision_reason: str | None = None,
    decided_by: str | None = None,
) -> bool:
    """Guarded transition; False when the refund was in none of ``sources``."""
    got = await conn.fetchval(
        Q["set_status"], refund_id, target, list(sources), decision_reason, decided_by
    )
    return got is not None


async def add_approval(conn: Connection, refund_id: uuid.UUID, approver: str, comment: str) -> bool:
    return await conn.fetchval(Q["insert_approval"], refund_id, approver, comment) is not None


async def approvers(conn: Connection, refund_id: uuid.UUID) -> list[str]:
    return [r["approver"] for r in await conn.fetch(Q["approvers"], refund_id)]


async def cancel_pending_details(conn: Connection, refund_id: uuid.UUID) -> None:
    await conn.execute(Q["cancel_details"], refund_id)


async def view(conn: Connection, refund_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["view"], refund_id)


async def list_views(
    conn: Connection,
    *,
    status: str | None,
    payment_id: str | None,
    customer_id: str | None,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        Q["list"],
        status,
        payment_id,
        customer_id,
        start,
        end,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
