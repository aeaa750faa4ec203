"""The consumers' inbox: which consumed messages have been handled.

A message's row is written in the transaction of its effect, so the effect and the record that
it happened commit together or not at all: a redelivered message (the broker lost our ack, or
the process died between commit and ack) finds the row and has no second effect, whatever the
state its first effect has moved to since.

The application functions the consumers call open their own transactions
(``db.transaction()``), the same ones the gRPC servicer calls. ``InboxDatabase`` is how the
inbox row gets into that transaction without changing them: it is the service's ``Database``
(same pool) whose ``transaction()`` inserts the row first thing, before the function's body
runs. The first statement rather than a before-commit hook, so that a duplicate is found before
any work is done, and a duplicate delivered concurrently waits on the row's primary key until
the first delivery's transaction has committed (then it is a duplicate) or rolled back (then it
does the work).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from repository.database import Connection, Database
from repository.queries import Queries

Q = Queries("inbox")


class Outcome(StrEnum):
    APPLIED = "APPLIED"  # the message's effect committed with the row
    IGNORED = "IGNORED"  # handled, deliberately without an effect (the reason is in note)


@dataclass(frozen=True, slots=True)
class Entry:
    """One consumed message: who consumed it (the event type it was consumed as), its event id,
    and when it arrived."""

    consumer: str
    event_id: str
    event_type: str
    received_at: datetime


class AlreadyProcessed(Exception):
    """The message's row exists: it was handled before, so it must have no effect now."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        super().__init__(f"{entry.consumer} handled event {entry.event_id} before")


async def claim(
    conn: Connection, entry: Entry, outcome: Outcome = Outcome.APPLIED, note: str = ""
) -> bool:
    """Insert the message's row in ``conn``'s transaction; False when it exists already."""
    got = await conn.fetchval(
        Q["claim"],
        entry.consumer,
        entry.event_id,
        entry.event_type,
        outcome.value,
        note,
        entry.received_at,
    )
    return got is not None


async def get(conn: Connection, consumer: str, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["get"], consumer, event_id)


class InboxDatabase(Database):
    """``db`` for the handling of one message: the first transaction opened through it that
    commits carries the message's inbox row (raising ``AlreadyProcessed`` from ``async with
    db.transaction()`` when the row exists). Later transactions are plain ones; a transaction
    that rolls back leaves the row to the next one. ``connection()`` is unchanged."""

    def __init__(self, db: Database, entry: Entry) -> None:
        super().__init__(db.pool)
        self.entry = entry
        self.claimed = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with super().transaction() as conn:
            claiming = not self.claimed
            if claiming and not await claim(conn, self.entry):
                raise AlreadyProcessed(self.entry)
            yield conn
        if claiming:
            self.claimed = True
