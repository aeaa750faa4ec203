"""Outbox events written the way the service writes them (``changes.record`` in a unit of
work), and what the outbox table holds, for the relay and WatchEvents tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from refundretry.v1 import events_pb2, refund_pb2
from repository import journal
from repository.database import Connection, Database
from service import changes


@dataclass(frozen=True, slots=True)
class Written:
    event_id: str
    aggregate_id: str


async def record_refund_event(
    conn: Connection,
    refund_id: str,
    *,
    customer_id: str = "cus_1",
    payment_id: str = "pay_1",
    subscription_id: str = "sub_1",
    action: str = "refund.created",
) -> None:
    """A ``refund.created`` (or ``action``) event about ``refund_id``, with its audit row."""
    await changes.record(
        conn,
        actor="test",
        action=action,
        entity_type="refund",
        entity_id=refund_id,
        data={},
        event_field="refund_created",
        event_payload=events_pb2.RefundCreated(
            refund=refund_pb2.RefundEvent(
                refund_id=refund_id,
                customer_id=customer_id,
                payment_id=payment_id,
                subscription_id=subscription_id,
            )
        ),
    )


async def add_event_only(conn: Connection, refund_id: str) -> None:
    """A ``refund.created`` outbox row through the service's writer, without an audit row:
    it does not take the audit chain's lock, so two open transactions can both write one."""
    event_id = uuid.uuid4()
    event = events_pb2.Event(
        event_id=str(event_id),
        type="refund.created",
        aggregate_type="refund",
        aggregate_id=refund_id,
        refund_created=events_pb2.RefundCreated(refund=refund_pb2.RefundEvent(refund_id=refund_id)),
    )
    await journal.add_outbox(
        conn,
        journal.OutboxRow(
            event_id=event_id,
            event_type="refund.created",
            aggregate_type="refund",
            aggregate_id=refund_id,
            payload=event.SerializeToString(),
        ),
    )


async def write_events(
    db: Database, count: int, *, aggregates: int = 3, per_transaction: int = 5
) -> list[Written]:
    """``count`` events over ``aggregates`` refunds in turn, ``per_transaction`` per unit of
    work; their event ids in the order written."""
    refunds = [str(uuid.uuid4()) for _ in range(aggregates)]
    done = 0
    while done < count:
        async with db.transaction() as conn:
            for _ in range(min(per_transaction, count - done)):
                await record_refund_event(conn, refunds[done % aggregates])
                done += 1
    rows = (await outbox_rows(db))[-count:]
    return [Written(str(r["event_id"]), str(r["aggregate_id"])) for r in rows]


async def outbox_rows(db: Database) -> list[dict[str, object]]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT position, event_id, event_type, aggregate_id, published_at, customer_id,"
            " payment_id, subscription_id FROM outbox ORDER BY position"
        )
    return [dict(r) for r in rows]


async def unpublished(db: Database) -> int:
    async with db.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return int(count)
