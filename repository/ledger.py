"""The double-entry ledger and the reconciliation queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("ledger")


async def post(
    conn: Connection,
    *,
    kind: str,
    payment_id: str,
    refund_id: uuid.UUID | None,
    currency: str,
    description: str,
    lines: Sequence[tuple[str, int, int]],
) -> int:
    """Post a journal of (account, debit, credit) lines; zero lines are left out. The database
    refuses, at commit, a journal whose debits and credits differ."""
    kept = [line for line in lines if line[1] or line[2]]
    journal_id = await conn.fetchval(
        Q["insert_journal"], kind, payment_id, refund_id, currency, description
    )
    await conn.execute(
        Q["insert_lines"],
        journal_id,
        list(range(1, len(kept) + 1)),
        [a for a, _, _ in kept],
        [d for _, d, _ in kept],
        [c for _, _, c in kept],
    )
    assert isinstance(journal_id, int)
    return journal_id


async def totals(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(Q["totals"])


async def unbalanced_journals(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(Q["unbalanced_journals"])


async def payment_mismatches(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(Q["payment_mismatches"])
