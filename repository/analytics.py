"""The analytics roll-ups: the fold's steps, the backfill of a zone, and the dashboard's reads
(from the roll-ups, or the same figures from the raw tables)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("analytics")
FOLD_LOCK = 0x52524146  # "RRAF": held by the one fold running across replicas


async def try_lock(conn: Connection) -> bool:
    return bool(await conn.fetchval(Q["try_lock"], FOLD_LOCK))


async def unlock(conn: Connection) -> None:
    await conn.execute(Q["unlock"], FOLD_LOCK)


async def initialized(conn: Connection) -> bool:
    return await conn.fetchval(Q["initialized_at"]) is not None


async def initialize(conn: Connection) -> None:
    """Facts from the raw tables, logs emptied, no zone rolled up (the caller backfills)."""
    await conn.execute(Q["initialize"])


async def reset(conn: Connection) -> None:
    """Make the next fold rebuild everything from the raw tables."""
    await conn.execute(Q["reset"])


async def zones(conn: Connection) -> list[str]:
    return [r["zone"] for r in await conn.fetch(Q["zones"])]


async def fold_attempts(conn: Connection) -> int:
    """Fold the logged attempt changes; how many log rows were folded."""
    return int(await conn.fetchval(Q["fold_attempts"]))


async def take_plan_changes(conn: Connection) -> list[uuid.UUID]:
    return [r["plan_id"] for r in await conn.fetch(Q["take_plan_changes"])]


async def take_refund_changes(conn: Connection) -> list[uuid.UUID]:
    return [r["refund_id"] for r in await conn.fetch(Q["take_refund_changes"])]


async def fold_plans(conn: Connection, plan_ids: Sequence[uuid.UUID]) -> int:
    """Refresh these plans' facts and roll-ups; how many fact rows changed (old and new)."""
    return int(await conn.fetchval(Q["fold_plans"], list(plan_ids)))


async def fold_refunds(conn: Connection, refund_ids: Sequence[uuid.UUID]) -> int:
    return int(await conn.fetchval(Q["fold_refunds"], list(refund_ids)))


async def backfill(conn: Connection, zones: Sequence[str]) -> None:
    """Roll up new zones from the raw attempts and the facts, and list them as rolled up."""
    names = list(zones)
    for query in ("backfill_payments", "backfill_refunds", "backfill_durations", "add_zones"):
        await conn.execute(Q[query], names)


async def drop(conn: Connection, zones: Sequence[str]) -> None:
    await conn.execute(Q["drop_zones"], list(zones))


async def known_zones(conn: Connection, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that PostgreSQL's time zone database has."""
    return [r["name"] for r in await conn.fetch(Q["known_zones"], list(names))]


async def mark_folded(conn: Connection) -> None:
    await conn.execute(Q["mark_folded"])


async def folded_at(conn: Connection, zone: str) -> datetime | None:
    value = await conn.fetchval(Q["folded_at"], zone)
    return value if isinstance(value, datetime) else None


@dataclass(frozen=True, slots=True)
class Where:
    """What the dashboard's reads select: local days first_day..last_day of ``zone``, rows
    keyed by ``group_by`` (DAY, GATEWAY, DECLINE_CLASS, CURRENCY), ``currency`` ('' = all)."""

    zone: str
    first_day: date
    last_day: date
    group_by: str
    currency: str

    def args(self) -> tuple[str, date, date, str, str]:
        return (self.zone, self.first_day, self.last_day, self.group_by, self.currency)

    def duration_projections(self) -> list[tuple[str, str]]:
        """(metric, dimension) of the histogram rows this grouping reads (migration 0007):
        refunds have no decline class, so grouped by it their durations are read whole."""
        dimension = self.group_by if self.group_by in ("GATEWAY", "DECLINE_CLASS") else ""
        refunds = dimension if dimension == "GATEWAY" else ""
        return [("TIME_TO_RECOVER", dimension), ("APPROVAL_LEAD_TIME", refunds)]

    def key_of(self, row: asyncpg.Record) -> str:
        """The group of a duration row (as analytics_group_key has it for the other rows)."""
        if self.group_by == "DAY":
            day: date = row["day"]
            return day.isoformat()
        key: str = row["currency"] if self.group_by == "CURRENCY" else row["value"]
        return key

    def currencies(self) -> tuple[str, str]:
        """The currency column range to read: one currency, each (grouped by currency), or
        the rows of every currency together ('')."""
        if self.currency:
            return (self.currency, self.currency)
        if self.group_by == "CURRENCY":
            return ("AAA", "ZZZ")
        return ("", "")


DurationRow = tuple[str, str, int, int]  # key, metric, bucket, count


async def read(
    conn: Connection, where: Where, *, raw: bool
) -> tuple[list[asyncpg.Record], list[DurationRow], list[asyncpg.Record]]:
    """(payment, duration, refund) group rows: from the roll-ups, or with ``raw`` the same
    figures from the raw tables."""
    if raw:
        return (
            await conn.fetch(Q["raw_payment_groups"], *where.args()),
            [
                (r["key"], r["metric"], r["bucket"], r["count"])
                for r in await conn.fetch(Q["raw_duration_groups"], *where.args())
            ],
            await conn.fetch(Q["raw_refund_groups"], *where.args()),
        )
    durations: list[DurationRow] = []
    for metric, dimension in where.duration_projections():
        rows = await conn.fetch(
            Q["duration_rows"],
            *where.args()[:3],
            metric,
            dimension,
            *where.currencies(),
        )
        durations += [(where.key_of(r), metric, r["bucket"], r["count"]) for r in rows]
    return (
        await conn.fetch(Q["payment_groups"], *where.args()),
        durations,
        await conn.fetch(Q["refund_groups"], *where.args()),
    )


async def pending_approvals(conn: Connection, where: Where) -> list[asyncpg.Record]:
    """Refunds waiting for approval now (live), by group and currency."""
    return await conn.fetch(Q["pending_approvals"], *where.args())
