"""Payments (original transactions) and their billing event items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("payments")


@dataclass(frozen=True, slots=True)
class NewItem:
    item_id: str
    description: str
    amount: int
    tax: int
    period_start: datetime | None
    period_end: datetime | None


async def insert(
    conn: Connection,
    *,
    payment_id: str,
    gateway: str,
    gateway_transaction_id: str,
    customer_id: str,
    subscription_id: str,
    billing_event_id: str,
    currency: str,
    captured_amount: int,
    captured_at: datetime,
    metadata: dict[str, str],
    items: Sequence[NewItem],
) -> None:
    await conn.execute(
        Q["insert_payment"],
        payment_id,
        gateway,
        gateway_transaction_id,
        customer_id,
        subscription_id,
        billing_event_id,
        currency,
        captured_amount,
        captured_at,
        metadata,
    )
    await conn.execute(
        Q["insert_items"],
        payment_id,
        [i.item_id for i in items],
        list(range(len(items))),
        [i.description for i in items],
        [i.amount for i in items],
        [i.tax for i in items],
        [i.period_start for i in items],
        [i.period_end for i in items],
    )


async def lock_settling(
    conn: Connection, payment_id: str, billing_event_id: str, subscription_id: str = ""
) -> None:
    """Wait for any other transaction settling this payment or billing event, or starting
    its retries, to end; hold them off until this one ends (see the query). With
    ``subscription_id``, also any transaction recording the subscription's cancellation
    (``lock_subscription``)."""
    keys = [f"settle-payment:{payment_id}"]
    if billing_event_id:
        keys.append(f"settle-billing-event:{billing_event_id}")
    if subscription_id:
        keys.append(_subscription_key(subscription_id))
    await conn.fetchval(Q["lock_settling"], keys)


def _subscription_key(subscription_id: str) -> str:
    return f"subscription:{subscription_id}"


async def lock_subscription(conn: Connection, subscription_id: str) -> None:
    """Serialize a subscription's cancellation with the failures of its payments that would
    start retries (``lock_settling`` with the subscription): the later one sees the other."""
    await conn.fetchval(Q["lock_settling"], [_subscription_key(subscription_id)])


async def get(conn: Connection, payment_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_payment" if lock else "get_payment"], payment_id)


async def items(conn: Connection, payment_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(Q["get_items"], payment_id)


async def reserve(conn: Connection, payment_id: str, lines: Sequence[tuple[str, int, int]]) -> None:
    """Reserve (item_id, net, tax) lines and their total on the payment."""
    total = sum(net + tax for _, net, tax in lines)
    updated = await conn.fetchval(
        Q["reserve"],
        payment_id,
        [item for item, _, _ in lines],
        [n for _, n, _ in lines],
        [t for _, _, t in lines],
        total,
    )
    if updated is None:
        raise LookupError(f"payment {payment_id} lost an item while reserving")


# Lock order: payment row, then its items. ``reserve``'s callers lock the payment first
# (``get(lock=True)``); release and settle take that lock themselves before touching items, so
# creating and settling refunds of one payment can never deadlock.


async def release(conn: Connection, payment_id: str, refund_id: Any, amount: int) -> None:
    await conn.execute(Q["lock_payment"], payment_id)
    await conn.execute(Q["release"], payment_id, refund_id, amount)


async def settle(conn: Connection, payment_id: str, refund_id: Any, amount: int) -> None:
    await conn.execute(Q["lock_payment"], payment_id)
    await conn.execute(Q["settle"], payment_id, refund_id, amount)
