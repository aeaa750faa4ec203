"""Is the service able to do its work? The database is the one thing every call needs: a
monitor checks it every few seconds and tells the gRPC health service (SERVING / NOT_SERVING)
and the HTTP probes (``/readyz``), so a load balancer stops sending calls to a replica that
cannot reach PostgreSQL and sends them again when it can."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from repository.database import Database

log = logging.getLogger(__name__)

Listener = Callable[[bool], Awaitable[None]]


class DatabaseHealth:
    """Checks the database with ``SELECT 1`` every ``interval`` seconds (each check bounded by
    ``timeout``); ``ready`` and ``reason`` say how the last check went. Listeners hear every
    change (and the first result)."""

    def __init__(self, db: Database, *, interval: float = 5.0, timeout: float = 3.0) -> None:
        self._db = db
        self._interval = interval
        self._timeout = timeout
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = True  # the service only starts after reaching the database
        self.reason = ""
        self.checked_at = time.time()

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="database-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> bool:
        """One check now; returns (and records) whether the database answered."""
        try:
            async with asyncio.timeout(self._timeout), self._db.connection() as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # any failure to reach it is "not ready"
            await self._set(False, f"{type(exc).__name__}: {exc}"[:300])
        else:
            await self._set(True, "")
        return self.ready

    async def _set(self, ready: bool, reason: str) -> None:
        changed = ready != self.ready
        self.ready, self.reason, self.checked_at = ready, reason, time.time()
        if not changed:
            return
        if ready:
            log.info("the database is reachable again", extra={"action": "health.ready"})
        else:
            log.error(
                "the database is unreachable: reporting NOT_SERVING (%s)",
                reason,
                extra={"action": "health.not_ready", "reason": reason},
            )
        for listener in self._listeners:
            await listener(ready)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()
