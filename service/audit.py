"""Reading and verifying the audit trail."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from repository import journal
from repository.database import Database
from service import validation
from service.errors import InvalidArgument


async def list_events(
    db: Database,
    *,
    entity_type: str,
    entity_id: str,
    start: datetime | None,
    end: datetime | None,
    page_size: int,
    page_token: str,
) -> tuple[list[asyncpg.Record], str]:
    size = validation.page_size(page_size, default=100)
    validation.identifier(entity_type, "entity_type", required=False)
    validation.identifier(entity_id, "entity_id", required=False)
    filters = (entity_type, entity_id, start, end)
    # A bare sequence number is the first format of these tokens (no filters bound).
    position = page_token if page_token.isdigit() else validation.page_position(page_token, filters)
    after = 0
    if position:
        if not position.isdigit():
            raise InvalidArgument("page_token", "is not a token this service returned")
        after = int(position)
    async with db.connection() as conn:
        rows = await journal.list_audit(
            conn,
            entity_type=entity_type or None,
            entity_id=entity_id or None,
            start=start,
            end=end,
            after_sequence=after,
            limit=size + 1,
        )
    if len(rows) > size:
        return rows[:size], validation.page_token(str(rows[size - 1]["sequence"]), filters)
    return rows, ""


async def verify_chain(db: Database) -> journal.ChainReport:
    async with (
        db.connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        return await journal.verify_audit_chain(conn)
