"""Whom an event concerns: the customer, payment and subscription ids WatchEvents filters by,
found in the event's payload when the event is written."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from refundretry.v1 import events_pb2

ID_FIELDS = ("customer_id", "payment_id", "subscription_id")


@dataclass(frozen=True, slots=True)
class Subjects:
    customer_id: str | None = None
    payment_id: str | None = None
    subscription_id: str | None = None


def of_payload(payload: Message) -> Subjects:
    """The ids an event payload names: its own ``customer_id``, ``payment_id`` and
    ``subscription_id`` fields, else those of the messages it embeds directly (a
    ``RefundEvent``, ``RetryPlan`` or ``Payment`` snapshot carries all three). One rule for
    every payload, so a new event type is filterable without a change here; empty strings
    count as absent."""
    found: dict[str, str] = {}
    for field, names in _places(payload.DESCRIPTOR):
        if field is None:
            holder = payload
        elif payload.HasField(field):
            holder = getattr(payload, field)
        else:
            continue
        for name in names:
            if name not in found and (value := getattr(holder, name)):
                found[name] = value
    return Subjects(**found)


@functools.cache
def _places(descriptor: Descriptor) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
    """Where a payload of this type may hold the ids, in the order looked at: the payload
    itself (None), then its singular message fields by field number; each with the id names
    it has. An id is taken from the first place that has it not empty."""
    embedded = sorted(
        ((f.number, f.name, f.message_type) for f in descriptor.fields if not f.is_repeated),
        key=lambda field: field[0],
    )
    places: list[tuple[str | None, tuple[str, ...]]] = []
    own = tuple(name for name in ID_FIELDS if name in descriptor.fields_by_name)
    if own:
        places.append((None, own))
    for _, field, kind in embedded:
        if kind is not None:
            names = tuple(name for name in ID_FIELDS if name in kind.fields_by_name)
            if names:
                places.append((field, names))
    return tuple(places)


def of_event(event: events_pb2.Event) -> Subjects:
    """The ids of ``event``'s payload (none when it has no payload)."""
    kind = event.WhichOneof("payload")
    return of_payload(getattr(event, kind)) if kind else Subjects()
