"""Deleting published outbox events once they are older than the retention
(``OUTBOX_RETENTION_DAYS``; 0 keeps them for ever). RabbitMQ has them; only WatchEvents'
history reads them, and it refuses a cursor older than what was deleted
(``service.outbox.watch``). Unpublished events are never deleted, whatever their age: the relay
still owes them to the broker.

The deletion goes in batches (one short transaction each, the oldest positions first), so it
never holds many row locks or a long snapshot; any number of replicas may run it at once (two
deleting the same batch only make one of them find less).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from repository import outbox
from repository.database import Database

log = logging.getLogger(__name__)

BATCH = 5000
INTERVAL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Pruned:
    deleted: int
    pruned_through: int  # the highest position deleted so far
    seconds: float


async def prune(db: Database, days: int, *, now: datetime | None = None) -> Pruned:
    """Delete every event published more than ``days`` days before ``now``."""
    began = time.monotonic()
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted, through = 0, 0
    while True:
        async with db.transaction() as conn:
            count, through = await outbox.prune_published(conn, cutoff, BATCH)
        deleted += count
        if count < BATCH:
            return Pruned(deleted, through, round(time.monotonic() - began, 3))


async def prune_loop(db: Database, days: int, interval: float = INTERVAL_SECONDS) -> None:
    """Prune every ``interval`` seconds until cancelled; a failure is logged and retried at
    the next tick."""
    while True:
        try:
            done = await prune(db, days)
            if done.deleted:
                log.info(
                    "deleted %d published outbox events older than %d days (positions up to "
                    "%d) in %.1f s",
                    done.deleted,
                    days,
                    done.pruned_through,
                    done.seconds,
                    extra={
                        "action": "outbox.pruned",
                        "deleted": done.deleted,
                        "pruned_through": done.pruned_through,
                    },
                )
        except Exception:
            log.exception(
                "deleting old outbox events failed; next try in %.0f s",
                interval,
                extra={"action": "outbox.prune_failed"},
            )
        await asyncio.sleep(interval)
