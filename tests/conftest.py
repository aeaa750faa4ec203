"""Test infrastructure on the real PostgreSQL: one template database per run, migrated once,
cloned per test (``CREATE DATABASE ... TEMPLATE``), so tests never see each other's data and
runs never see each other's databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from repository.database import Database, migrate

ADMIN_URL = os.environ.get(
    "REFUND_RETRY_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"


def url_of(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def admin(sql: str) -> None:
    """Run ``sql`` on the server's maintenance database (CREATE / DROP DATABASE)."""
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database_unreachable(database_url: str) -> AsyncIterator[None]:
    """The test's database refuses connections, and its open ones are ended, inside the
    block: PostgreSQL is "down" for the service, not for the other tests."""
    name = database_url.rsplit("/", 1)[1]
    await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    try:
        await admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        yield
    finally:
        await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    name = f"rr_test_tpl_{RUN_ID}"

    async def create() -> None:
        await admin(f'CREATE DATABASE "{name}"')
        await migrate(url_of(name))

    asyncio.run(create())
    yield name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_counter = 0


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    global _counter
    _counter += 1
    name = f"rr_test_{RUN_ID}_{_counter}"
    await admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield url_of(name)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def unused_name() -> AsyncIterator[str]:
    """A database name nobody uses; the database is dropped afterwards if a test made it."""
    name = f"rr_test_new_{RUN_ID}_{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database(unused_name: str) -> str:
    """The URL of a new, empty database (no tables)."""
    await admin(f'CREATE DATABASE "{unused_name}"')
    return url_of(unused_name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, max_size=20)
    try:
        yield database
    finally:
        await database.close()
