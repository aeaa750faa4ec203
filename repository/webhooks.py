"""Gateway webhook events (received once, by id) and payment disputes, and the lookups a
webhook needs: the refund detail of a gateway refund id, the retry attempt of a gateway charge
id, the payment of a gateway transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("webhooks")


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One gateway event as stored: its id is unique per gateway."""

    gateway: str
    event_id: str
    event_type: str
    object_id: str
    data: dict[str, Any]
    occurred_at: datetime | None


async def claim_event(conn: Connection, event: ReceivedEvent) -> bool:
    """Insert the event's row in ``conn``'s transaction; False when it was received before."""
    got = await conn.fetchval(
        Q["claim_event"],
        event.gateway,
        event.event_id,
        event.event_type,
        event.object_id,
        event.data,
        event.occurred_at,
    )
    return got is not None


async def settle_event(
    conn: Connection, gateway: str, event_id: str, status: str, note: str
) -> None:
    """What the event came to: APPLIED, IGNORED or UNMATCHED, and why."""
    await conn.execute(Q["settle_event"], gateway, event_id, status, note[:1000])


async def refund_detail(
    conn: Connection, gateway: str, gateway_refund_id: str
) -> asyncpg.Record | None:
    """The detail id, refund id and status of the refund detail of ``gateway_refund_id``
    (None when no detail has it); not locked."""
    return await conn.fetchrow(Q["refund_detail_by_gateway_refund_id"], gateway, gateway_refund_id)


async def attempt_of_charge(
    conn: Connection, gateway: str, gateway_charge_id: str
) -> asyncpg.Record | None:
    """The latest retry attempt charged as ``gateway_charge_id`` with its plan's status, the
    plan locked (None when no attempt has it)."""
    return await conn.fetchrow(Q["attempt_by_gateway_charge_id"], gateway, gateway_charge_id)


async def make_plan_due(conn: Connection, plan_id: uuid.UUID) -> bool:
    """Due now, if the plan is ACTIVE; False otherwise."""
    return await conn.fetchval(Q["make_plan_due"], plan_id) is not None


async def payment_of_transaction(
    conn: Connection, gateway: str, transaction_ids: Sequence[str]
) -> asyncpg.Record | None:
    """The recorded payment whose gateway transaction id is one of ``transaction_ids``."""
    ids = [t for t in transaction_ids if t]
    if not ids:
        return None
    return await conn.fetchrow(Q["payment_by_gateway_transaction"], gateway, ids)


@dataclass(frozen=True, slots=True)
class DisputeRow:
    """A dispute's columns as a webhook reports them."""

    gateway: str
    dispute_id: str
    payment_id: str
    currency: str
    amount: int
    reason: str
    status: str
    gateway_status: str
    stage: int


async def lock_dispute(conn: Connection, gateway: str, dispute_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_dispute"], gateway, dispute_id)


async def insert_dispute(conn: Connection, row: DisputeRow) -> asyncpg.Record | None:
    """The new dispute's row; None when a concurrent event inserted it first."""
    return await conn.fetchrow(
        Q["insert_dispute"],
        row.gateway,
        row.dispute_id,
        row.payment_id,
        row.currency,
        row.amount,
        row.reason,
        row.status,
        row.gateway_status,
        row.stage,
    )


async def update_dispute(conn: Connection, row: DisputeRow) -> asyncpg.Record:
    updated = await conn.fetchrow(
        Q["update_dispute"],
        row.gateway,
        row.dispute_id,
        row.amount,
        row.reason,
        row.status,
        row.gateway_status,
        row.stage,
    )
    assert updated is not None
    return updated


async def reported_outcome(
    conn: Connection, gateway: str, object_id: str, event_types: Sequence[str]
) -> dict[str, Any] | None:
    """The stored facts of the latest webhook event of ``event_types`` about a refund or a
    charge (its gateway id)."""
    data = await conn.fetchval(Q["reported_outcome"], gateway, object_id, list(event_types))
    return data if isinstance(data, dict) else None
