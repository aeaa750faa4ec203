"""Field checks shared by every entry point (gRPC and events)."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Sequence
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


_NOT_A_PAGE = "is not a token this service returned"
_FORMAT = "v2"  # page token format


def _filters_digest(filters: Sequence[object]) -> str:
    """A short digest of a listing's filters (None and "" alike: both mean no filter)."""
    text = "\x1f".join("" if f is None else str(f) for f in filters)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_token(position: str, filters: Sequence[object]) -> str:
    """An opaque page token: where the next page starts, bound to the listing's filters (the
    page size may change from page to page, the filters may not)."""
    raw = f"{_FORMAT}:{_filters_digest(filters)}:{position}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def page_position(token: str, filters: Sequence[object]) -> str | None:
    """Where a page token continues (None for the first page). A token of a listing with
    other filters is refused: its position means nothing there (rows before it would be
    skipped without a word). Tokens of the first format (no filters bound) still work."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", _NOT_A_PAGE) from None
    version, _, rest = raw.partition(":")
    if version != _FORMAT:
        return raw  # a token of the first format: the position alone
    digest, _, position = rest.partition(":")
    if digest != _filters_digest(filters):
        raise InvalidArgument(
            "page_token",
            "was returned for a listing with other filters: ask with the same filters as for "
            "the first page, or without page_token to start again",
        )
    return position


def keyset_token(created_at: datetime, resource_id: uuid.UUID, filters: Sequence[object]) -> str:
    """A page token continuing after the (create time, id) of the last row of a page."""
    return page_token(f"{created_at.isoformat()}|{resource_id}", filters)


def keyset_after(token: str, filters: Sequence[object]) -> tuple[datetime, uuid.UUID] | None:
    """The (create time, id) a page token continues after; None for the first page."""
    position = page_position(token, filters)
    if position is None:
        return None
    try:
        created, _, resource_id = position.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(resource_id)
    except ValueError:
        raise InvalidArgument("page_token", _NOT_A_PAGE) from None
