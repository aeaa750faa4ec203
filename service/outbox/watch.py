"""One WatchEvents stream: validate its filters and cursor, replay the matching history from
the outbox table, then follow the feed's live events.

The cursor is an event's outbox position, as a decimal string. The feed hands out positions
only up to its horizon (every position below it is final, see ``feed``), and the history is
read up to the horizon at which the stream subscribed, so the replay and the live part meet
without a gap or an overlap, and a client that resumes after the last cursor it saw misses
nothing.

Published events are deleted after ``OUTBOX_RETENTION_DAYS`` (``service.outbox.retention``). A
cursor below the highest position deleted so far may have lost events after it: the stream is
refused with OUT_OF_RANGE (at the start, or when a deletion overtakes a replay) instead of
going on with a silent gap. A stream without a cursor replays what is kept.

A slow watcher cannot make the process grow: its live buffer is bounded, and when it
overflows the stream drops the buffer and catches up from the table (the same replay, from
its cursor to the current horizon) before it takes live events again. It never loses an event
for being slow; it only reads them from the database instead of memory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from repository import outbox
from repository.database import Database
from repository.outbox import EventFilter, StoredEvent
from service.errors import InvalidArgument, OutOfRange, Unavailable
from service.outbox.feed import EventFeed

_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.?$")
MAX_TYPES = 50
MAX_ID = 200
MAX_POSITION = 2**63 - 1
REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class WatchRequest:
    wanted: EventFilter
    after: int | None  # the cursor, None when the stream starts without one
    live_only: bool
    until_caught_up: bool


def parse_request(
    *,
    event_types: Sequence[str],
    customer_id: str,
    payment_id: str,
    subscription_id: str,
    after: str,
    live_only: bool,
    until_caught_up: bool,
) -> WatchRequest:
    """Validate a WatchEvents request; InvalidArgument names the offending field."""
    if len(event_types) > MAX_TYPES:
        raise InvalidArgument("event_types", f"at most {MAX_TYPES} types or prefixes")
    types: set[str] = set()
    prefixes: list[str] = []
    for index, text in enumerate(event_types):
        if len(text) > 100 or not _TYPE.match(text):
            raise InvalidArgument(
                f"event_types[{index}]",
                f"{text!r} is not an event type (e.g. 'refund.created') or a prefix ending in "
                "'.' (e.g. 'refund.')",
            )
        if text.endswith("."):
            prefixes.append(text)
        else:
            types.add(text)
    ids = {}
    for name, value in (
        ("customer_id", customer_id),
        ("payment_id", payment_id),
        ("subscription_id", subscription_id),
    ):
        if len(value) > MAX_ID or not value.isprintable():
            raise InvalidArgument(name, f"must be at most {MAX_ID} printable characters")
        ids[name] = value or None
    cursor: int | None = None
    if after:
        if not after.isascii() or not after.isdigit() or int(after) > MAX_POSITION:
            raise InvalidArgument("after", "must be the cursor of an event this RPC sent")
        cursor = int(after)
    if live_only and cursor is not None:
        raise InvalidArgument("live_only", "cannot be combined with after: resume with after")
    if live_only and until_caught_up:
        raise InvalidArgument("until_caught_up", "with live_only the stream would send nothing")
    return WatchRequest(
        wanted=EventFilter(
            types=frozenset(types),
            prefixes=tuple(prefixes),
            customer_id=ids["customer_id"],
            payment_id=ids["payment_id"],
            subscription_id=ids["subscription_id"],
        ),
        after=cursor,
        live_only=live_only,
        until_caught_up=until_caught_up,
    )


async def events(
    feed: EventFeed, db: Database, request: WatchRequest
) -> AsyncIterator[StoredEvent]:
    """The stream's events in position order: history after the cursor (all of it without
    one, none with ``live_only``), then live events; with ``until_caught_up`` it ends once
    every event committed before the call has been sent."""
    wanted = request.wanted
    cursor = request.after or 0
    # Only a cursor is promised "everything after it"; no cursor means what is kept.
    guarded = request.after is not None
    if request.until_caught_up:
        async for event in _replay(db, wanted, cursor, await feed.settled(), guarded):
            yield event
        return
    subscription = await feed.subscribe(wanted)
    try:
        if request.live_only:
            cursor = subscription.start
        while True:
            async for event in _replay(db, wanted, cursor, subscription.start, guarded):
                yield event
                cursor = event.position
            cursor = max(cursor, subscription.start)
            while not subscription.overflowed:
                if subscription.closed:
                    raise Unavailable("the service is stopping: resume from the last cursor")
                live = await subscription.queue.get()
                if live is not None and live.position > cursor:
                    yield live
                    cursor = live.position
            assert feed.horizon is not None
            subscription.restart(feed.horizon)
    finally:
        feed.unsubscribe(subscription)


async def _replay(
    db: Database, wanted: EventFilter, after: int, upto: int, guarded: bool
) -> AsyncIterator[StoredEvent]:
    """The matching events in (after, upto], a page at a time (a connection is held only
    while a page is read, not while the client takes it). ``guarded``: each page is checked
    against the retention's deletions, read after it, so a page that may miss a deleted
    event is never sent."""
    while after < upto:
        async with db.connection() as conn:
            page = await outbox.replay(conn, wanted, after, upto, REPLAY_PAGE)
            pruned = await outbox.pruned_through(conn) if guarded else 0
        if pruned > after:
            raise OutOfRange(
                f"events after cursor {after} up to {pruned} have been deleted (published "
                "events are kept for REFUND_RETRY_OUTBOX_RETENTION_DAYS): start again without "
                "a cursor, or with live_only",
                pruned_through=pruned,
            )
        for event in page:
            yield event
        if len(page) < REPLAY_PAGE:
            return
        after = page[-1].position
