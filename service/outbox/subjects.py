"""Whom an event concerns: the customer, payment and subscription ids WatchEvents filters by,
found in the event's payload when the event is written."""

from __future__ import annotations

from dataclasses import dataclass

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
    candidates = [payload]
    for field, value in payload.ListFields():
        if field.message_type is not None and not field.is_repeated:
            candidates.append(value)
    found: dict[str, str] = {}
    for name in ID_FIELDS:
        for message in candidates:
            if name in message.DESCRIPTOR.fields_by_name and getattr(message, name):
                found[name] = getattr(message, name)
                break
    return Subjects(**found)


def of_event(event: events_pb2.Event) -> Subjects:
    """The ids of ``event``'s payload (none when it has no payload)."""
    kind = event.WhichOneof("payload")
    return of_payload(getattr(event, kind)) if kind else Subjects()
