"""Field checks shared by every entry point (gRPC and events)."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime

from service.errors import InvalidArgument

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def identifier(value: str, field: str, *, required: bool = True) -> str:
    """An external identifier: 1-128 of letters, digits, '_', '.', ':' or '-'."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            field, "must be 1-128 letters, digits, '_', '.', ':' or '-', starting alphanumeric"
        )
    return value


def uuid_id(value: str, field: str, what: str) -> uuid.UUID:
    """A resource id of this service (a UUID)."""
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"{value!r} is not a {what} id (a UUID)") from None


def refund_id(value: str, field: str = "refund_id") -> uuid.UUID:
    return uuid_id(value, field, "refund")


def text(value: str, field: str, limit: int = 1000) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters")
    return value


def page_size(value: int, default: int = 50, limit: int = 1000) -> int:
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(value or default, limit)


def keyset_token(created_at: datetime, resource_id: uuid.UUID) -> str:
    """An opaque page token: the (create time, id) of the last row of a page."""
    raw = f"{created_at.isoformat()}|{resource_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def keyset_after(token: str) -> tuple[datetime, uuid.UUID] | None:
    """The (create time, id) a page token continues after; None for the first page."""
    if not token:
        return None
    try:
        created, _, resource_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(resource_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this service returned") from None
