"""One id for one piece of work as it crosses services: taken from the caller (gRPC metadata
``x-correlation-id``, or a consumed message's AMQP ``correlation_id``), made up when there is
none, carried by every log line written while the work runs and by every event it publishes
(``Event.correlation_id`` and the AMQP ``correlation_id`` the relay sets), so an on-call
engineer can follow one request from the caller's logs through ours to its subscribers'."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

METADATA_KEY = "x-correlation-id"
_ID: ContextVar[str] = ContextVar("correlation_id", default="")
# What a caller may send: printable, no spaces, bounded (it lands in logs and headers).
_VALID = re.compile(r"[A-Za-z0-9._:/@+=\-]{1,128}")


def begin(value: str | None) -> str:
    """Make ``value`` (when it is a usable id; else a new one) the id of the work that runs in
    this task from now on; returns it."""
    correlation_id = value if value and _VALID.fullmatch(value) else uuid.uuid4().hex
    _ID.set(correlation_id)
    return correlation_id


def current() -> str:
    """The id of the work running in this task ("" outside any)."""
    return _ID.get()


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` to every record written while a piece of work runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id = _ID.get()
        if correlation_id and not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id
        return True
