"""Billing-system events as the billing system would publish them, and waiting for the service
to have handled them (its inbox row)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from refundretry.v1 import billing_events_pb2 as ev
from refundretry.v1 import payment_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service.server import Service
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import Broker


def event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def payment_failed(
    *,
    payment_id: str | None = None,
    amount: int = 4900,
    code: str = "insufficient_funds",
    at: datetime | None = None,
    billing_event_id: str = "",
    eid: str | None = None,
    subscription_id: str = "sub_7",
) -> ev.PaymentFailed:
    return ev.PaymentFailed(
        event_id=event_id() if eid is None else eid,
        occur_time=b.ts(datetime.now(UTC)),
        payment_id=payment_id or f"inv_{uuid.uuid4().hex[:10]}",
        billing_event_id=billing_event_id,
        customer_id="cus_42",
        subscription_id=subscription_id,
        amount=b.usd(amount),
        gateway="sandbox",
        payment_method=retry_plan_pb2.PaymentMethod(
            payment_method_id="pm_visa_4242", network="VISA"
        ),
        decline=retry_plan_pb2.Decline(decline_code=code, visa_response_code="51"),
        failure_time=b.ts(at or datetime.now(UTC) - timedelta(hours=1)),
        time_zone="Europe/Berlin",
        wallet=[retry_plan_pb2.PaymentMethod(payment_method_id="pm_mc_5454", network="MASTERCARD")],
        retry_schedule_code="payment-fixed",
    )


def period_item(
    item_id: str, net: int, tax: int, start: datetime | None, end: datetime | None
) -> payment_pb2.BillingEventItem:
    item = payment_pb2.BillingEventItem(
        item_id=item_id, description=f"item {item_id}", amount=b.usd(net), tax=b.usd(tax)
    )
    if start is not None and end is not None:
        item.service_period_start.CopyFrom(b.ts(start))
        item.service_period_end.CopyFrom(b.ts(end))
    return item


def payment_succeeded(
    *,
    payment_id: str | None = None,
    subscription_id: str = "sub_7",
    billing_event_id: str = "",
    items: list[payment_pb2.BillingEventItem] | None = None,
    captured_at: datetime | None = None,
    eid: str | None = None,
) -> ev.PaymentSucceeded:
    items = items if items is not None else [period_item("plan", 9000, 900, None, None)]
    total = sum(i.amount.minor_units + i.tax.minor_units for i in items)
    return ev.PaymentSucceeded(
        event_id=event_id() if eid is None else eid,
        occur_time=b.ts(datetime.now(UTC)),
        payment=payment_pb2.Payment(
            payment_id=payment_id or f"pay_{uuid.uuid4().hex[:10]}",
            gateway="sandbox",
            gateway_transaction_id=f"pi_{uuid.uuid4().hex[:12]}",
            customer_id="cus_42",
            subscription_id=subscription_id,
            billing_event_id=billing_event_id,
            captured_amount=b.usd(total),
            capture_time=b.ts(captured_at or datetime.now(UTC) - timedelta(days=1)),
            items=items,
        ),
    )


def subscription_cancelled(
    subscription_id: str,
    cancel_at: datetime,
    policy: int = ev.CANCELLATION_REFUND_POLICY_PRORATED,
    *,
    payment_id: str = "",
    eid: str | None = None,
) -> ev.SubscriptionCancelled:
    return ev.SubscriptionCancelled(
        event_id=event_id() if eid is None else eid,
        occur_time=b.ts(datetime.now(UTC)),
        subscription_id=subscription_id,
        customer_id="cus_42",
        cancel_time=b.ts(cancel_at),
        refund_policy=policy,  # type: ignore[arg-type]
        payment_id=payment_id,
        reason="too expensive",
    )


async def inbox_row(db: Database, consumer: str, eid: str) -> asyncpg.Record | None:
    async with db.connection() as conn:
        return await conn.fetchrow(
            "SELECT * FROM inbox WHERE consumer = $1 AND event_id = $2", consumer, eid
        )


async def handled(
    service: Service, consumer: str, eid: str, *, seconds: float = 30
) -> asyncpg.Record:
    """The inbox row of event ``eid``, once the service has handled it (fails after
    ``seconds`` without it)."""
    deadline = time.monotonic() + seconds
    while True:
        row = await inbox_row(service.db, consumer, eid)
        if row is not None:
            return row
        assert time.monotonic() < deadline, f"{consumer} event {eid} was not handled"
        await asyncio.sleep(0.02)


async def consuming(service: Service, seconds: float = 30) -> None:
    """Wait until the service's consumers have declared their queues and consume."""
    assert service.consumers is not None, "the test's settings must turn the consumers on"
    await asyncio.wait_for(service.consumers.ready.wait(), seconds)


async def count(db: Database, sql: str, *args: Any) -> int:
    async with db.connection() as conn:
        return int(await conn.fetchval(sql, *args))


@pytest.fixture
async def live(service: Service, broker: Broker) -> Service:
    """The service, once its consumers consume from the broker fixture's vhost."""
    await consuming(service)
    return service


async def plans_of(client: Client, payment_id: str) -> list[Any]:
    response = await client.call(
        "t-reader", "ListRetryPlans", pb.ListRetryPlansRequest(payment_id=payment_id)
    )
    return list(response.plans)
