"""The connection pool and the migrations runner."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool

MIGRATION_LOCK = 0x52524D49  # "RRMI": the advisory lock key held while migrating
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def json_text(value: Any) -> str:
    """The JSON text of ``value`` for a json or jsonb parameter. orjson is about ten times as
    fast as ``json.dumps`` (the billing job writes several JSON values per payment retry);
    non-string keys become strings, as ``json.dumps`` makes them. A UUID becomes its text,
    whether a ``uuid.UUID`` (which orjson writes itself) or asyncpg's subclass, the type of
    every id read from a uuid column and of every id ``repository.ids`` makes (which orjson
    refuses: ``_json_default`` writes it, called only for such values)."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_default(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def _init_connection(conn: Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name, encoder=json_text, decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 16) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )
    assert pool is not None
    return pool


@dataclass
class UnitOfWork:
    """State of one ``Database.transaction()``: hooks to run right before its COMMIT, and
    whatever they collect. Dropped when the transaction ends, committed or not.
    ``last_before_commit`` hooks run after every ``before_commit`` one: for a write that takes
    a lock every writer queues on (the audit chain's head), so that it is held only from
    that statement to the COMMIT."""

    before_commit: list[Callable[[Connection], Awaitable[None]]] = field(default_factory=list)
    last_before_commit: list[Callable[[Connection], Awaitable[None]]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


_UNITS: dict[int, UnitOfWork] = {}


def unit_of_work(conn: Connection) -> UnitOfWork | None:
    """The unit of work ``conn`` is in, or None outside ``Database.transaction()``."""
    return _UNITS.get(id(conn))


class Database:
    """The pool, and ``transaction()`` for a unit of work."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 16) -> Database:
        return cls(await create_pool(dsn, min_size=min(2, max_size), max_size=max_size))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A unit of work. Hooks registered with ``before_commit``, then those registered with
        ``last_before_commit``, run in order after the body and right before COMMIT (the
        audit trail writes its rows last: its chain lock is then held for one statement and
        the commit, not the whole transaction)."""
        async with self.pool.acquire() as conn, conn.transaction():
            key = id(conn)
            unit = _UNITS[key] = UnitOfWork()
            try:
                yield conn
                for hook in (*unit.before_commit, *unit.last_before_commit):
                    await hook(conn)
            finally:
                del _UNITS[key]

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def close(self) -> None:
        await self.pool.close()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    found = []
    for entry in resources.files("repository").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` when it does not exist; True when created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return False
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def migrate(dsn: str) -> list[int]:
    """Apply pending migrations under an advisory lock; returns the versions applied.

    Safe when several replicas start at once: the others wait on the lock, then find
    nothing to do.
    """
    conn: Connection = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migration (
                       version int PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
            applied = []
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info(
                    "applied migration %04d_%s",
                    version,
                    name,
                    extra={"action": "migrate", "version": version},
                )
                applied.append(version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()


async def pending_migrations(conn: Connection) -> list[int]:
    """Versions not yet applied to the database behind ``conn``."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL")
    done = (
        {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        if exists
        else set()
    )
    return [version for version, _, _ in migrations() if version not in done]
