"""Payments by subscription: what a subscription.cancelled event refunds."""

from __future__ import annotations

import asyncpg

from repository.database import Connection
from repository.queries import Queries

Q = Queries("subscriptions")


async def last_paid(conn: Connection, subscription_id: str) -> asyncpg.Record | None:
    """The subscription's payment whose service period ends last (the one captured last when
    none of its payments has a service period); None when it has no payment."""
    return await conn.fetchrow(Q["last_paid"], subscription_id)
