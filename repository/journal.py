"""Idempotency keys, the outbox and the audit trail: written inside the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from repository.database import Connection, json_text, unit_of_work
from repository.outbox import NOTIFY_CHANNEL
from repository.queries import Queries

Q = Queries("journal")


async def claim_request_id(
    conn: Connection, scope: str, request_id: str, fingerprint: bytes, resource_id: str
) -> tuple[bool, bytes, str]:
    """(claimed, fingerprint, resource_id): claimed is False when the id was used before, and
    then the first request's fingerprint and resource are returned."""
    got = await conn.fetchval(Q["idempotency_claim"], scope, request_id, fingerprint, resource_id)
    if got is not None:
        return True, fingerprint, resource_id
    row = await conn.fetchrow(Q["idempotency_get"], scope, request_id)
    assert row is not None
    return False, bytes(row["fingerprint"]), row["resource_id"]


async def find_request_id(
    conn: Connection, scope: str, request_id: str
) -> tuple[bytes, str] | None:
    row = await conn.fetchrow(Q["idempotency_get"], scope, request_id)
    return (bytes(row["fingerprint"]), row["resource_id"]) if row else None


@dataclass(slots=True)
class OutboxRow:
    """One outbox event as written; the ids say whom it concerns (WatchEvents filters). Not
    frozen: the billing job writes thousands a second, and a frozen dataclass's ``__init__``
    costs four times as much."""

    event_id: uuid.UUID
    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: bytes
    customer_id: str | None = None
    payment_id: str | None = None
    subscription_id: str | None = None


async def add_outbox(conn: Connection, row: OutboxRow) -> None:
    """Add an outbox event to ``conn``'s transaction. Inside ``Database.transaction()`` the
    events are written together right before COMMIT, in the order added, by one statement
    that also notifies the ``outbox.NOTIFY_CHANNEL`` listeners once: writing late keeps a
    transaction that emits many events at one statement, and it makes positions follow the
    order in which the locks on an aggregate were released (the later change of an aggregate
    gets its positions only after the earlier one committed). Outside a unit of work the
    event is written at once by the same statement."""
    unit = unit_of_work(conn)
    if unit is None:
        await _write_outbox(conn, [row])
        return
    pending: list[OutboxRow] | None = unit.state.get("outbox")
    if pending is None:
        pending = unit.state["outbox"] = []
        rows = pending

        async def flush(conn: Connection) -> None:
            await _write_outbox(conn, rows)

        unit.before_commit.append(flush)
    pending.append(row)


async def _write_outbox(conn: Connection, rows: list[OutboxRow]) -> None:
    await conn.execute(
        Q["outbox_add_many"],
        [r.event_id for r in rows],
        [r.event_type for r in rows],
        [r.aggregate_type for r in rows],
        [r.aggregate_id for r in rows],
        [r.payload for r in rows],
        [r.customer_id for r in rows],
        [r.payment_id for r in rows],
        [r.subscription_id for r in rows],
        NOTIFY_CHANNEL,
    )


async def append_audit(
    conn: Connection,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    data: dict[str, Any],
) -> None:
    """Append an audit row in ``conn``'s transaction. Inside ``Database.transaction()`` the
    transaction's rows are written together, in the order appended, by one call of
    ``audit_append_many`` (migration 0008) after every other write: the chain head is locked
    and updated once, and held only from that statement to the COMMIT."""
    row = (actor, action, entity_type, entity_id, data)
    unit = unit_of_work(conn)
    if unit is None:
        await _write_audit(conn, [row])
        return
    pending: list[AuditRow] | None = unit.state.get("audit")
    if pending is None:
        pending = unit.state["audit"] = []
        rows = pending

        async def flush(conn: Connection) -> None:
            await _write_audit(conn, rows)

        unit.last_before_commit.append(flush)
    pending.append(row)


AuditRow = tuple[str, str, str, str, dict[str, Any]]


async def _write_audit(conn: Connection, rows: list[AuditRow]) -> None:
    actors, actions, entity_types, entity_ids, datas = zip(*rows, strict=True)
    await conn.execute(
        Q["audit_append_many"],
        list(actors),
        list(actions),
        list(entity_types),
        list(entity_ids),
        [json_text(d) for d in datas],  # JSON texts: see the query
    )


async def list_audit(
    conn: Connection,
    *,
    entity_type: str | None,
    entity_id: str | None,
    start: datetime | None,
    end: datetime | None,
    after_sequence: int,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        Q["audit_list"], entity_type, entity_id, start, end, after_sequence, limit
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    rows_checked: int
    first_broken_sequence: int
    problem: str


async def verify_audit_chain(conn: Connection) -> ChainReport:
    row = await conn.fetchrow(Q["audit_verify"])
    assert row is not None
    rows = int(row["rows_checked"])
    if row["broken_sequence"] is not None:
        return ChainReport(False, rows, int(row["broken_sequence"]), row["problem"])
    max_sequence = row["max_sequence"] or 0
    if row["head_sequence"] != max_sequence or (
        max_sequence and bytes(row["head_hash"]) != bytes(row["last_hash"])
    ):
        return ChainReport(
            False,
            rows,
            max_sequence + 1 if max_sequence < row["head_sequence"] else max_sequence,
            "rows at the end of the chain are missing",
        )
    return ChainReport(True, rows, 0, "")
