"""Reading the outbox: the relay's unpublished rows, and the rows and snapshot facts the
WatchEvents feed needs; deleting published rows past their retention. Rows are written by
``journal.add_outbox``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("outbox")

# Every transaction that writes outbox rows notifies this channel once, at commit; the
# payload is the highest position it wrote.
NOTIFY_CHANNEL = "refund_retry_outbox"


@dataclass(frozen=True, slots=True)
class Frontier:
    """One frontier statement: ``top``, the highest committed position, and ``xmin``, the
    oldest transaction then in progress, both from one snapshot; ``bound``, a transaction id
    assigned after that snapshot (see service/outbox/feed.py)."""

    top: int
    xmin: int
    bound: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: int
    event_type: str
    customer_id: str | None
    payment_id: str | None
    subscription_id: str | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a watcher wants. Empty ``types`` and ``prefixes``: every type; None ids:
    any."""

    types: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    customer_id: str | None = None
    payment_id: str | None = None
    subscription_id: str | None = None

    def matches(self, event: StoredEvent) -> bool:
        if (self.types or self.prefixes) and not (
            event.event_type in self.types or event.event_type.startswith(self.prefixes)
        ):
            return False
        return (
            (self.customer_id is None or event.customer_id == self.customer_id)
            and (self.payment_id is None or event.payment_id == self.payment_id)
            and (self.subscription_id is None or event.subscription_id == self.subscription_id)
        )


async def unpublished(conn: Connection, after: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(Q["unpublished"], after, limit)


async def mark_published(conn: Connection, positions: Sequence[int]) -> None:
    await conn.execute(Q["mark_published"], list(positions))


async def backlog(conn: Connection) -> int:
    count = await conn.fetchval(Q["backlog"])
    return int(count)


async def frontier(conn: Connection) -> Frontier:
    """Run on a connection with ``synchronous_commit = off``: the statement takes a
    transaction id, so it commits, and that commit need not wait for the disk."""
    row = await conn.fetchrow(Q["frontier"])
    assert row is not None
    return Frontier(int(row["top"]), int(row["xmin"]), int(row["bound"]))


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["position"],
        event_type=row["event_type"],
        customer_id=row["customer_id"],
        payment_id=row["payment_id"],
        subscription_id=row["subscription_id"],
        payload=bytes(row["payload"]),
    )


async def read_range(conn: Connection, after: int, upto: int, limit: int) -> list[StoredEvent]:
    """Every event in (after, upto], in position order, at most ``limit``."""
    return [_stored(r) for r in await conn.fetch(Q["read_range"], after, upto, limit)]


async def replay(
    conn: Connection, wanted: EventFilter, after: int, upto: int, limit: int
) -> list[StoredEvent]:
    """The events in (after, upto] that ``wanted`` matches, in position order."""
    any_type = not wanted.types and not wanted.prefixes
    rows = await conn.fetch(
        Q["replay"],
        after,
        upto,
        None if any_type else sorted(wanted.types),
        None if any_type else list(wanted.prefixes),
        wanted.customer_id,
        wanted.payment_id,
        wanted.subscription_id,
        limit,
    )
    return [_stored(r) for r in rows]


async def prune_published(conn: Connection, older_than: datetime, limit: int) -> tuple[int, int]:
    """Delete up to ``limit`` events published before ``older_than``: (how many, and the
    highest position deleted so far)."""
    row = await conn.fetchrow(Q["prune_published"], older_than, limit)
    assert row is not None
    return int(row["deleted"]), int(row["pruned_through"])


async def pruned_through(conn: Connection) -> int:
    """The highest position deleted so far (0: none)."""
    return int(await conn.fetchval(Q["pruned_through"]))
