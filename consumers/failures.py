"""What a failed message deserves: dead-lettering at once, or another delivery later.

Bad input never gets better by retrying: a message that cannot be parsed, carries the wrong
type, or is refused by the application's validation (any ``ServiceError``: invalid argument,
unknown resource, illegal state) goes to the dead-letter queue at once. A failure of something
outside the message (the database unreachable or restarting, a serialization failure or
deadlock, a concurrent writer that won a race) is retried with backoff, up to the delivery
limit. So is an error nobody expected (a bug): it may be transient, and the limit bounds it.
"""

from __future__ import annotations

from enum import Enum

import asyncpg

from service.errors import ServiceError, Unavailable


class Malformed(Exception):
    """The message cannot be read as the event its queue carries (encoding, type, event id)."""


class RetryLater(Exception):
    """The message may succeed later: it names something another event has not brought yet
    (the three queues are consumed independently, so their order is not guaranteed)."""


class Verdict(Enum):
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"


# Failures of the database or of concurrency, not of the message.
TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.InterfaceError,  # the connection was closed under us, the pool is closing
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, restarting, canceled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.exceptions.LockNotAvailableError,  # 55P03
    asyncpg.UniqueViolationError,  # a concurrent writer won a race; a retry sees its row
    OSError,  # connection refused or reset (ConnectionError is one)
    TimeoutError,
    Unavailable,
    RetryLater,
)


def verdict(exc: BaseException) -> Verdict:
    if isinstance(exc, TRANSIENT):
        return Verdict.RETRY
    if isinstance(exc, Malformed | ServiceError):
        return Verdict.DEAD_LETTER
    return Verdict.RETRY


def expected(exc: BaseException) -> bool:
    """False for an error nobody anticipated (logged with its traceback)."""
    return isinstance(exc, (*TRANSIENT, Malformed, ServiceError))
