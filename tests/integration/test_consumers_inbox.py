"""The inbox on the real database: a message's row commits with its effect or not at all, and a
second delivery of the message, concurrent or later, has no effect."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from repository import inbox
from repository.database import Database

ENTRY = inbox.Entry("payment.failed", "evt_1", "payment.failed", datetime.now(UTC))


async def effects(db: Database) -> int:
    async with db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM idempotency_key"))


async def effect(db: Database, name: str) -> None:
    """An application function's transaction: one row of its own."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO idempotency_key (scope, request_id, fingerprint, resource_id) "
            "VALUES ('test', $1, '\\x00', '')",
            name,
        )


async def test_the_row_commits_with_the_effect_and_a_second_delivery_has_none(
    db: Database,
) -> None:
    first = inbox.InboxDatabase(db, ENTRY)
    await effect(first, "first")
    assert first.claimed
    await effect(first, "later")  # a second transaction of the same handling: a plain one
    second = inbox.InboxDatabase(db, ENTRY)
    with pytest.raises(inbox.AlreadyProcessed):
        await effect(second, "second")
    assert not second.claimed
    assert await effects(db) == 2
    async with db.connection() as conn:
        row = await inbox.get(conn, "payment.failed", "evt_1")
    assert row is not None
    assert (row["outcome"], row["event_type"]) == ("APPLIED", "payment.failed")


async def test_an_effect_rolled_back_leaves_no_row(db: Database) -> None:
    failing = inbox.InboxDatabase(db, ENTRY)

    async def failing_effect() -> None:
        async with failing.transaction() as conn:
            await conn.execute("SELECT 1")
            raise RuntimeError("the effect failed")

    with pytest.raises(RuntimeError):
        await failing_effect()
    assert not failing.claimed
    retried = inbox.InboxDatabase(db, ENTRY)
    await effect(retried, "retried")
    assert retried.claimed
    assert await effects(db) == 1


async def test_a_concurrent_duplicate_waits_for_the_first_and_then_does_nothing(
    db: Database,
) -> None:
    first = inbox.InboxDatabase(db, ENTRY)
    release = asyncio.Event()
    inside = asyncio.Event()

    async def slow_effect() -> None:
        async with first.transaction() as conn:
            await conn.execute(
                "INSERT INTO idempotency_key (scope, request_id, fingerprint, resource_id) "
                "VALUES ('test', 'first', '\\x00', '')"
            )
            inside.set()
            await release.wait()

    running = asyncio.create_task(slow_effect())
    await inside.wait()
    duplicate = asyncio.create_task(effect(inbox.InboxDatabase(db, ENTRY), "duplicate"))
    await asyncio.sleep(0.2)
    assert not duplicate.done()  # waiting on the first delivery's row
    release.set()
    await running
    with pytest.raises(inbox.AlreadyProcessed):
        await duplicate
    assert await effects(db) == 1


async def test_an_ignored_message_gets_its_row_with_the_reason(db: Database) -> None:
    async with db.transaction() as conn:
        assert await inbox.claim(conn, ENTRY, inbox.Outcome.IGNORED, "nothing left to refund")
        assert not await inbox.claim(conn, ENTRY)
    async with db.connection() as conn:
        row = await inbox.get(conn, ENTRY.consumer, ENTRY.event_id)
    assert row is not None
    assert (row["outcome"], row["note"]) == ("IGNORED", "nothing left to refund")
