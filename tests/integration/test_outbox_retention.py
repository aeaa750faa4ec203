"""Published outbox events older than the retention are deleted; unpublished ones never are;
WatchEvents refuses a cursor that deleted events have overtaken, at the start or mid-replay,
instead of resuming with a silent gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from repository.database import Database
from service.errors import OutOfRange
from service.outbox import retention, watch
from tests.integration.conftest import Client
from tests.integration.outbox_events import outbox_rows, write_events
from tests.integration.test_watch_events import caught_up, open_stream

pytestmark = pytest.mark.integration

DAYS = 7


async def publish(db: Database, positions: list[int], days_ago: float) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE outbox SET published_at = now() - make_interval(secs => $2)"
            " WHERE position = ANY($1::bigint[])",
            positions,
            days_ago * 86400,
        )


async def positions(db: Database) -> list[int]:
    return [int(str(r["position"])) for r in await outbox_rows(db)]


async def old_and_new(db: Database) -> tuple[list[int], list[int], list[int]]:
    """20 events: 12 published 8 days ago, 4 published yesterday, 4 never published (the
    relay is down), one of those the oldest of all."""
    await write_events(db, 20, per_transaction=1)
    rows = await positions(db)
    unpublished = [rows[0], *rows[-3:]]
    old = rows[1:13]
    recent = rows[13:17]
    await publish(db, old, 8)
    await publish(db, recent, 1)
    return old, recent, unpublished


async def test_published_events_past_the_retention_are_deleted_in_batches(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 5)  # 12 old rows: batches of 5, 5, 2
    old, recent, unpublished = await old_and_new(db)
    done = await retention.prune(db, DAYS)
    assert (done.deleted, done.pruned_through) == (12, max(old))
    assert await positions(db) == sorted(unpublished + recent)
    again = await retention.prune(db, DAYS)
    assert (again.deleted, again.pruned_through) == (0, max(old))  # nothing more, kept


async def test_watch_events_refuses_a_cursor_that_deleted_events_overtook(
    client: Client, db: Database
) -> None:
    old, recent, unpublished = await old_and_new(db)
    await retention.prune(db, DAYS)
    call = open_stream(client, after=str(old[3]), until_caught_up=True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [response async for response in call]
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"events after cursor {old[3]} up to {max(old)} have been deleted" in (
        refused.value.details() or ""
    )
    # from the last deleted position on, and without a cursor, what is kept
    kept = sorted(unpublished + recent)
    after_pruned = await caught_up(client, after=str(max(old)))
    assert [int(r.cursor) for r in after_pruned] == [p for p in kept if p > max(old)]
    everything = await caught_up(client)
    assert [int(r.cursor) for r in everything] == kept


async def test_a_deletion_that_overtakes_a_replay_ends_the_stream(
    client: Client, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "REPLAY_PAGE", 2)
    await write_events(db, 10, per_transaction=1)
    rows = await positions(db)
    request = watch.parse_request(
        event_types=[],
        customer_id="",
        payment_id="",
        subscription_id="",
        after=str(rows[0]),
        live_only=False,
        until_caught_up=True,
    )
    feed = client.service.feed
    assert feed is not None
    stream = watch.events(feed, db, request)
    got: list[Any] = [await anext(stream), await anext(stream)]  # the first page
    await publish(db, rows[:6], 8)
    await retention.prune(db, DAYS, now=datetime.now(UTC) + timedelta(minutes=1))
    with pytest.raises(OutOfRange, match=f"after cursor {rows[2]} up to {rows[5]}"):
        got.append(await anext(stream))
    assert [e.position for e in got] == rows[1:3]
