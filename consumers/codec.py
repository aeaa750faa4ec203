"""Reading a consumed message as its protobuf event: protobuf binary or canonical proto3 JSON.

The contract (README, protos/refundretry/v1/billing_events.proto): the body's encoding is named
by ``content_type`` ("application/x-protobuf" or "application/json"), the event type by the
AMQP ``type`` property or, for clients that cannot set it, a ``type`` header; the event id by
the message's ``event_id`` field, or the AMQP ``message_id`` when that is empty. JSON is parsed
strictly (unknown fields are refused, as a typo would otherwise silently drop a value); binary
follows protobuf's rules (unknown fields are skipped, so a producer may add fields first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from consumers.failures import Malformed
from service import validation
from service.errors import InvalidArgument

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_ALIASES = frozenset({PROTOBUF, "application/protobuf"})

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the codec reads of an AMQP message."""

    body: bytes
    content_type: str | None
    type: str | None
    headers: Mapping[str, Any]
    message_id: str | None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def event_type_of(envelope: Envelope) -> str | None:
    return envelope.type or _text(envelope.headers.get("type"))


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(envelope: Envelope, expected_type: str, message_class: type[M]) -> tuple[str, M]:
    """(event id, message) of ``envelope``; ``Malformed`` naming what is wrong otherwise."""
    event_type = event_type_of(envelope)
    if not event_type:
        raise Malformed(f"no event type: set the `type` property (or header) to {expected_type!r}")
    if event_type != expected_type:
        raise Malformed(f"event type {event_type!r} on the queue of {expected_type!r} events")
    message = message_class()
    kind = media_type(envelope.content_type)
    name = message_class.DESCRIPTOR.full_name
    if kind in _PROTOBUF_ALIASES:
        try:
            message.ParseFromString(envelope.body)
        except DecodeError as exc:
            raise Malformed(f"body is not a protobuf {name}: {exc}") from exc
    elif kind == JSON:
        try:
            json_format.Parse(envelope.body.decode("utf-8"), message, ignore_unknown_fields=False)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise Malformed(f"body is not the JSON of a {name}: {exc}") from exc
    else:
        raise Malformed(
            f"content_type {envelope.content_type!r} is neither {PROTOBUF!r} nor {JSON!r}"
        )
    event_id = getattr(message, "event_id", "") or (envelope.message_id or "")
    try:
        validation.identifier(event_id, "event_id")
    except InvalidArgument as exc:
        raise Malformed(f"{exc.message} (or the AMQP message_id when event_id is empty)") from exc
    return event_id, message


def encode(message: Message, content_type: str = PROTOBUF) -> bytes:
    """The body of ``message`` in ``content_type`` (what a producer sends; tests and the
    benchmark publish with it)."""
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(message).encode()
    return message.SerializeToString()
