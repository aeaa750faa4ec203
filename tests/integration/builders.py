"""Requests as other services would send them, with sensible defaults."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from refundretry.v1 import money_pb2, payment_pb2, refund_policy_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from tests.integration.conftest import Client

_ids = itertools.count(1)


def usd(minor: int, currency: str = "USD") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def request_id() -> str:
    return str(uuid.uuid4())


def payment_message(
    *,
    payment_id: str | None = None,
    items: list[tuple[str, int, int]] | None = None,
    currency: str = "USD",
    gateway: str = "sandbox",
    transaction_id: str | None = None,
    captured_at: datetime | None = None,
    metadata: dict[str, str] | None = None,
    customer_id: str = "cus_1",
    billing_event_id: str | None = None,
    subscription_id: str = "sub_1",
) -> payment_pb2.Payment:
    """A payment of (item_id, net, tax) items; default one item of 9000 + 1000 tax."""
    number = next(_ids)
    items = items if items is not None else [("plan", 9000, 1000)]
    total = sum(net + tax for _, net, tax in items)
    return payment_pb2.Payment(
        payment_id=payment_id or f"pay_{number}_{uuid.uuid4().hex[:6]}",
        gateway=gateway,
        gateway_transaction_id=transaction_id or f"pi_{uuid.uuid4().hex[:12]}",
        customer_id=customer_id,
        subscription_id=subscription_id,
        billing_event_id=f"be_{number}" if billing_event_id is None else billing_event_id,
        captured_amount=usd(total, currency),
        capture_time=ts(captured_at or datetime.now(UTC) - timedelta(days=1)),
        items=[
            payment_pb2.BillingEventItem(
                item_id=item_id,
                description=f"item {item_id}",
                amount=usd(net, currency),
                tax=usd(tax, currency),
            )
            for item_id, net, tax in items
        ],
        metadata=metadata or {},
    )


async def record_payment(client: Client, **kwargs: Any) -> payment_pb2.Payment:
    response = await client.call(
        "t-billing",
        "RecordPayment",
        pb.RecordPaymentRequest(request_id=request_id(), payment=payment_message(**kwargs)),
    )
    return response.payment  # type: ignore[no-any-return]


async def create_refund(
    client: Client,
    payment_id: str,
    *,
    amount: int | None = None,
    currency: str = "USD",
    items: list[tuple[str, int | None]] | None = None,
    token: str = "t-billing",
    rid: str | None = None,
    schedule: str = "",
) -> Any:
    request = pb.CreateRefundRequest(
        request_id=rid or request_id(),
        payment_id=payment_id,
        reason="requested_by_customer",
        retry_schedule_code=schedule,
    )
    if amount is not None:
        request.amount.CopyFrom(usd(amount, currency))
    for item_id, gross in items or []:
        line = request.items.add(item_id=item_id)
        if gross is not None:
            line.amount.CopyFrom(usd(gross, currency))
    return (await client.call(token, "CreateRefund", request)).refund


async def approve(client: Client, refund_id: str, token: str = "t-alice") -> Any:
    response = await client.call(
        token,
        "ApproveRefund",
        pb.ApproveRefundRequest(request_id=request_id(), refund_id=refund_id),
    )
    return response.refund


async def set_policy(
    client: Client,
    *,
    auto: dict[str, int] | None = None,
    tiers: list[tuple[str, int, int]] | None = None,
    window: timedelta = timedelta(days=180),
) -> Any:
    duration = Duration()
    duration.FromTimedelta(window)
    policy = refund_policy_pb2.RefundPolicy(
        auto_approval_thresholds=[
            refund_policy_pb2.AutoApprovalThreshold(max_amount=usd(v, c))
            for c, v in (auto or {}).items()
        ],
        approval_tiers=[
            refund_policy_pb2.ApprovalTier(min_amount=usd(v, c), required_approvals=n)
            for c, v, n in (tiers or [])
        ],
        refund_window=duration,
    )
    response = await client.call(
        "t-admin",
        "UpdateRefundPolicy",
        pb.UpdateRefundPolicyRequest(request_id=request_id(), policy=policy),
    )
    return response.policy


async def run_job(client: Client, *, end: datetime | None = None) -> Any:
    request = pb.RunBillingJobRequest(
        request_id=request_id(), process_new_refunds=True, process_due_retries=True
    )
    if end is not None:
        request.range_end.CopyFrom(ts(end))
    return (await client.call("t-ops", "RunBillingJob", request)).summary


async def get_refund(client: Client, refund_id: str) -> Any:
    return (
        await client.call("t-reader", "GetRefund", pb.GetRefundRequest(refund_id=refund_id))
    ).refund


async def get_payment(client: Client, payment_id: str) -> Any:
    return (
        await client.call("t-reader", "GetPayment", pb.GetPaymentRequest(payment_id=payment_id))
    ).payment
