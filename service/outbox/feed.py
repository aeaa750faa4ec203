"""The process's one tail of the outbox, fanned out to every WatchEvents stream.

A dedicated connection LISTENs on ``outbox.NOTIFY_CHANNEL`` (every writing transaction
notifies it at commit, whichever replica wrote), and on each notification, or a slow poll,
the feed reads the new rows from the table and hands each to the watchers whose filter it
matches. Watchers therefore see events from every replica, in position order.

**The commit-order gap.** Positions are drawn when rows are inserted, but transactions commit
in any order: when position 11 is visible, position 10 may still belong to a transaction in
progress. A reader that moved its cursor to 11 would skip 10 for good when it commits. So
the feed only ever hands out positions up to its *horizon* H: every position <= H is final
(visible now, or never will be). The horizon moves by *frontiers*. One statement reads, from
one snapshot S, the highest visible position ``top`` and then takes a transaction id ``bound``
of its own (``pg_current_xact_id()``, assigned after S was taken). Later, once a snapshot's
``xmin`` (the oldest transaction still in progress) is at least ``bound``, H may move to
``top``. Why that is safe:

1. A position q < top was drawn before ``top`` was (the identity sequence has CACHE 1, so
   positions follow the order of the draws), and ``top``'s transaction committed before S.
2. A writer owns its transaction id before it draws a position (``outbox_add_many`` calls
   ``pg_current_xact_id()`` first), so q's transaction had its id before S, and that id is
   smaller than ``bound`` (ids are assigned in increasing order).
3. ``xmin >= bound`` means every transaction with a smaller id has ended: q's row is
   committed and visible to every later snapshot, or rolled back and never will be.

Positions above ``top`` are left for a later frontier, so nothing is skipped and nothing is
handed out twice, and the order is the position order: for one aggregate, the commit order
(a change writes its outbox rows right before COMMIT, after taking the aggregate's lock).
The snapshot's own list of running transactions would not do as the bound: it leaves out
every id above the newest *finished* one, and such a transaction may hold a lower position
(``tests/integration/test_watch_events.py`` commits out of order with the late writer's id
older and newer than the early one's). Ordering by
(transaction id, position) instead would settle faster but could put a later change of an
aggregate before an earlier one (ids are taken at a transaction's first write, not at its
commit).

The price: a transaction left open (a session idle in transaction holding an id) holds the
horizon, and so live events, back until it ends; the feed logs a warning naming the wait.
The relay does not depend on the horizon. Each frontier statement uses up a transaction id
(one per ``settle_poll`` at most while events wait, one per ``idle_poll`` otherwise) and
commits; the feed's connection runs with ``synchronous_commit = off``, so that commit does
not wait for the disk. The feed starts with the first watcher of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from repository import outbox
from repository.database import Connection
from repository.outbox import EventFilter, StoredEvent
from service.errors import Unavailable

log = logging.getLogger(__name__)

READ_BATCH = 1000


@dataclass(frozen=True, slots=True)
class _Pending:
    """A frontier not settled yet: ``top`` becomes final once xmin reaches ``bound``."""

    top: int
    bound: int
    round: int
    since: float


@dataclass(eq=False)
class Subscription:
    """One watcher's live events past ``start`` (the horizon when it subscribed), at most
    ``capacity`` buffered. A watcher that falls further behind is not fed any more: it sees
    ``overflowed``, and catches up from the table (``Subscription.restart``)."""

    wanted: EventFilter
    capacity: int
    start: int
    queue: asyncio.Queue[StoredEvent | None] = field(init=False)  # None: look at the flags
    overflowed: bool = False
    closed: bool = False  # the feed is closing: end the stream

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.capacity)

    def offer(self, event: StoredEvent) -> None:
        if self.overflowed or not self.wanted.matches(event):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):  # a full queue wakes its reader anyway
            self.queue.put_nowait(None)

    def restart(self, horizon: int) -> None:
        """Forget what is buffered and take live events past ``horizon`` again (the caller
        reads the rest from the table). Synchronous: no event can slip in between."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False
        self.start = horizon


class EventFeed:
    """Started by the first watcher, stopped by ``close``. ``horizon`` is None until the first
    frontier is settled."""

    def __init__(
        self,
        dsn: str,
        *,
        buffer: int = 1000,
        idle_poll: float = 1.0,
        settle_poll: float = 0.005,
        stall_warning: float = 10.0,
        ready_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._buffer = buffer
        self._idle_poll = idle_poll
        self._settle_poll = settle_poll
        self._stall_warning = stall_warning
        self._ready_timeout = ready_timeout
        self.horizon: int | None = None
        self.seen_top = 0  # the highest position a frontier saw (tests wait on it)
        self._subscriptions: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._round = 0  # frontier statements started
        self._settled_round = 0  # every frontier up to this round is settled
        self._warned_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- for watchers ---------------------------------------------------------------------

    async def subscribe(self, wanted: EventFilter) -> Subscription:
        """A subscription to the live events past the current horizon."""
        await self._until(lambda: self.horizon is not None)
        assert self.horizon is not None
        subscription = Subscription(wanted, self._buffer, self.horizon)
        self._subscriptions.add(subscription)
        return subscription

    @property
    def subscriptions(self) -> frozenset[Subscription]:
        return frozenset(self._subscriptions)

    @property
    def rounds(self) -> int:
        """Frontier statements started so far."""
        return self._round

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def settled(self) -> int:
        """The horizon once a frontier taken after this call is settled: every event
        committed before the call is then at or below it."""
        wanted = self._round + 1
        self._wake.set()
        await self._until(lambda: self._settled_round >= wanted)
        assert self.horizon is not None
        return self.horizon

    async def _until(self, condition: Callable[[], bool]) -> None:
        self._start()
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(condition), self._ready_timeout)
        except TimeoutError:
            raise Unavailable("the event feed cannot reach the database; retry") from None

    async def close(self) -> None:
        """Stop tailing and end every live stream (they fail with UNAVAILABLE, and their
        clients resume from their last cursor on another replica or after the restart)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the tail -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._closed:
            raise Unavailable("the service is stopping")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-feed")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: reconnect; state stays valid
                log.warning(
                    "event feed lost its connection (%s); reconnecting in %.1f s",
                    exc,
                    backoff,
                    extra={"action": "feed.reconnect"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _tail(self) -> None:
        conn: Connection = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(
                "SET synchronous_commit = off; SET application_name = 'refund-retry feed'"
            )
            await conn.add_listener(outbox.NOTIFY_CHANNEL, self._notified)
            log.info("event feed listening", extra={"action": "feed.listening"})
            pending: list[_Pending] = []
            while True:
                self._wake.clear()
                pending = await self._advance(conn, pending)
                await self._sleep(self._settle_poll if pending else self._idle_poll)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _advance(self, conn: Connection, pending: list[_Pending]) -> list[_Pending]:
        """One frontier statement: settle the frontiers it allows, hand out the rows up to the
        new horizon, and return the frontiers still waiting (oldest first)."""
        self._round += 1
        now = await outbox.frontier(conn)
        self.seen_top = max(self.seen_top, now.top)
        # Bounds grow with rounds, so the settled frontiers are the oldest ones.
        settled = [p for p in pending if now.xmin >= p.bound]
        if settled:
            await self._move_horizon(conn, max(p.top for p in settled))
        waiting = [p for p in pending if now.xmin < p.bound]
        waiting.append(_Pending(now.top, now.bound, self._round, time.monotonic()))
        # A frontier at or below the horizon has nothing left to wait for.
        done = [p for p in waiting if self.horizon is not None and p.top <= self.horizon]
        waiting = [p for p in waiting if p not in done]
        settled_round = max((p.round for p in settled + done), default=0)
        if settled_round > self._settled_round:
            async with self._changed:
                self._settled_round = settled_round
                self._changed.notify_all()
        self._watch_stall(waiting, now.xmin)
        return waiting

    async def _move_horizon(self, conn: Connection, target: int) -> None:
        if self.horizon is None:  # the first frontier: watchers read history from the table
            async with self._changed:
                self.horizon = target
                self._changed.notify_all()
            return
        while self.horizon < target:
            events = await outbox.read_range(conn, self.horizon, target, READ_BATCH)
            for event in events:
                for subscription in list(self._subscriptions):
                    subscription.offer(event)
            # Moved only after the events were offered: a watcher subscribing in between
            # replays up to here from the table and takes the rest live.
            self.horizon = events[-1].position if len(events) == READ_BATCH else target

    def _watch_stall(self, waiting: list[_Pending], xmin: int) -> None:
        """Warn, at most every ``stall_warning`` seconds, while the oldest waiting frontier
        has been waiting longer than that."""
        now = time.monotonic()
        if not waiting or now - waiting[0].since < self._stall_warning:
            return
        if self._warned_at is not None and now - self._warned_at < self._stall_warning:
            return
        self._warned_at = now
        log.warning(
            "live events wait for transaction %d to end (a session idle in transaction?); "
            "held back %.0f s",
            xmin,
            now - waiting[0].since,
            extra={"action": "feed.stalled", "xmin": xmin},
        )
