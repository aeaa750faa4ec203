"""What every mutating use case does in its transaction: honour the request id, and record the
change as an outbox event and an audit row (the audit row last: it holds the chain head's lock
until commit)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from refundretry.v1 import events_pb2
from repository import journal
from repository.database import Connection
from repository.ids import uuid7
from service import convert, correlation
from service.errors import InvalidArgument, RequestIdReused
from service.outbox import subjects

MAX_REQUEST_ID = 128


def fingerprint(*parts: object) -> bytes:
    """A stable digest of a request's content (everything but its request id)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def validate_request_id(request_id: str) -> str:
    if not request_id:
        raise InvalidArgument("request_id", "is required (a unique idempotency key per request)")
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(
            "request_id", f"must be at most {MAX_REQUEST_ID} printable characters"
        )
    return request_id


async def replayed(
    conn: Connection, scope: str, request_id: str, digest: bytes, new_resource_id: str
) -> str | None:
    """None for a new request id (now claimed for ``new_resource_id``); the first request's
    resource id when this exact request was made before. A different request under a used id
    raises RequestIdReused."""
    claimed, first_digest, resource_id = await journal.claim_request_id(
        conn, scope, request_id, digest, new_resource_id
    )
    if claimed:
        return None
    if first_digest != digest:
        raise RequestIdReused(
            f"request_id {request_id!r} was already used for a different {scope} request"
        )
    return resource_id


async def previous(conn: Connection, scope: str, request_id: str, digest: bytes) -> str | None:
    """The resource of an earlier request with this id, without claiming the id; raises
    RequestIdReused when that request differs."""
    found = await journal.find_request_id(conn, scope, request_id)
    if found is None:
        return None
    first_digest, resource_id = found
    if first_digest != digest:
        raise RequestIdReused(
            f"request_id {request_id!r} was already used for a different {scope} request"
        )
    return resource_id


async def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    data: dict[str, Any],
    event_field: str,
    event_payload: Any,
) -> None:
    """Write the outbox event ``action`` carrying ``event_payload`` in ``Event.<event_field>``,
    then the audit row. The event also records the customer, payment and subscription its
    payload names (``service.outbox.subjects``), for WatchEvents' filters. Inside a unit of
    work both are written right before COMMIT."""
    event_id = uuid7()
    event_key = str(event_id)
    event = events_pb2.Event(
        event_id=event_key,
        type=action,
        aggregate_type=entity_type,
        aggregate_id=entity_id,
        actor=actor,
        correlation_id=correlation.current(),
    )
    convert.set_ts(event.occur_time, datetime.now(UTC))
    getattr(event, event_field).CopyFrom(event_payload)
    about = subjects.of_payload(event_payload)
    await journal.add_outbox(
        conn,
        journal.OutboxRow(
            event_id=event_id,
            event_type=action,
            aggregate_type=entity_type,
            aggregate_id=entity_id,
            payload=event.SerializeToString(),
            customer_id=about.customer_id,
            payment_id=about.payment_id,
            subscription_id=about.subscription_id,
        ),
    )
    await journal.append_audit(
        conn,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        data={**data, "event_id": event_key},
    )
