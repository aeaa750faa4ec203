"""Migrations on fresh databases: applied once, safe when replicas start together, and the
result is the schema every other test runs on."""

from __future__ import annotations

import asyncio

import asyncpg

from repository.database import ensure_database, migrate, migrations
from tests.conftest import ADMIN_URL, url_of
from tests.integration.cli import cli_env, run_cli

ALL = [version for version, _, _ in migrations()]


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


COLUMNS = """
SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default,
       character_maximum_length, is_identity
  FROM information_schema.columns
 WHERE table_schema = 'public'
 ORDER BY table_name, ordinal_position"""

TRIGGERS = """
SELECT event_object_table, trigger_name, event_manipulation, action_timing
  FROM information_schema.triggers
 WHERE trigger_schema = 'public'
 ORDER BY 1, 2, 3"""

CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
  FROM pg_constraint
 WHERE connamespace = 'public'::regnamespace
 ORDER BY 1, 2"""


async def test_migrate_applies_every_migration_once(empty_database: str) -> None:
    assert await migrate(empty_database) == ALL
    assert await migrate(empty_database) == []
    rows = await fetch(empty_database, "SELECT version, name FROM schema_migration ORDER BY 1")
    assert rows == [
        (1, "initial"),
        (2, "retry_plans"),
        (3, "dunning"),
        (4, "outbox_relay"),
        (5, "inbox"),
        (6, "webhooks"),
        (7, "analytics"),
        (8, "audit_batch"),
        (9, "outbox_retention"),
        (10, "plan_wallet"),
        (11, "paid_payments"),
        (12, "subscription_cancellations"),
        (13, "plan_fillfactor"),
        (14, "partial_payments"),
    ]
    assert [(v, n) for v, n, _ in migrations()] == rows


async def test_migrated_database_has_the_seed_rows(empty_database: str) -> None:
    await migrate(empty_database)
    schedules = "SELECT code, max_attempts, timing FROM retry_schedule ORDER BY code"
    assert await fetch(empty_database, schedules) == [
        ("payment-fixed", 5, "FIXED"),
        ("payment-smart", 8, "SMART"),
        ("refund-default", 5, "FIXED"),
    ]
    assert await fetch(empty_database, "SELECT version, updated_by FROM refund_policy") == [
        (0, "system:migration")
    ]
    assert await fetch(empty_database, "SELECT sequence FROM audit_chain_head") == [(0,)]


async def test_concurrent_migrations_apply_version_1_exactly_once(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(5)))
    assert sorted(results, key=len, reverse=True) == [ALL, [], [], [], []]
    assert [v for applied in results for v in applied] == ALL
    versions = await fetch(empty_database, "SELECT version FROM schema_migration ORDER BY 1")
    assert versions == [(v,) for v in ALL]


async def test_concurrent_migrations_leave_no_advisory_lock(empty_database: str) -> None:
    await asyncio.gather(*(migrate(empty_database) for _ in range(3)))
    locks = await fetch(
        empty_database,
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert locks == []


async def test_ensure_database_creates_a_missing_database(unused_name: str) -> None:
    assert not await database_exists(unused_name)
    assert await ensure_database(url_of(unused_name)) is True
    assert await database_exists(unused_name)
    assert await ensure_database(url_of(unused_name)) is False
    assert await database_exists(unused_name)


async def test_ensure_database_returns_false_for_an_existing_one(empty_database: str) -> None:
    assert await ensure_database(empty_database) is False


async def test_migrated_schema_equals_the_template(
    empty_database: str, template_database: str
) -> None:
    await migrate(empty_database)
    template = url_of(template_database)
    for query in (COLUMNS, TRIGGERS, CONSTRAINTS):
        fresh = await fetch(empty_database, query)
        assert fresh, query
        assert fresh == await fetch(template, query)
    tables = {row[0] for row in await fetch(empty_database, COLUMNS)}
    assert {"payment", "refund_event", "audit_event", "ledger_line", "schema_migration"} <= tables


async def run_migrate_cli(url: str) -> tuple[int, str, str]:
    return await run_cli(cli_env(DATABASE_URL=url), "migrate")


async def test_cli_migrate_creates_the_database_then_reports_up_to_date(
    unused_name: str,
) -> None:
    url = url_of(unused_name)
    code, out, err = await run_migrate_cli(url)
    assert code == 0, err
    assert out.strip() == f"created the database; applied migrations {ALL}"
    assert await database_exists(unused_name)
    code, out, err = await run_migrate_cli(url)
    assert code == 0, err
    assert out.strip() == "schema is up to date"


async def test_cli_migrate_with_a_malformed_url_exits_2() -> None:
    code, out, err = await run_migrate_cli("postgresql://127.0.0.1:5432")
    assert code == 2, (out, err)
    assert "REFUND_RETRY_DATABASE_URL" in err
    assert len(err.strip().splitlines()) == 1
