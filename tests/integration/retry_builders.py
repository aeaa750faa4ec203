"""Payment-retry requests as the billing system would send them, with sensible defaults."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from refundretry.v1 import events_pb2, retry_plan_pb2, retry_schedule_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service.gateways.sandbox import SandboxGateway
from service.jobs.retry_job import RetryJob
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.stripe_server import StripeStubServer


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def schedule(
    client: Client,
    code: str,
    seconds: list[int],
    attempts: int,
    *,
    timing: Any = retry_schedule_pb2.RETRY_TIMING_FIXED,
    hours: tuple[int, int] | None = None,
    span_days: int = 0,
    wallet: Any = retry_schedule_pb2.WALLET_POLICY_AFTER_HARD_DECLINE,
) -> None:
    intervals = []
    for s in seconds:
        d = Duration()
        d.FromSeconds(s)
        intervals.append(d)
    message = retry_schedule_pb2.RetrySchedule(
        code=code,
        intervals=intervals,
        max_attempts=attempts,
        timing=timing,
        max_span_days=span_days,
        wallet_policy=wallet,
    )
    if hours:
        message.allowed_hours.start_hour, message.allowed_hours.end_hour = hours
    await client.call(
        "t-ops",
        "CreateRetrySchedule",
        pb.CreateRetryScheduleRequest(request_id=b.request_id(), schedule=message),
    )


def failure(
    *,
    payment_id: str | None = None,
    code: str = "insufficient_funds",
    network: str = "VISA",
    visa: str = "",
    mac: str = "",
    card: str = "pm_card_1",
    wallet: list[tuple[str, str]] | None = None,
    schedule_code: str = "test-fast",
    at: datetime | None = None,
    time_zone: str = "Europe/Berlin",
    outcome: str = "",
    amount: int = 2500,
    billing_event_id: str = "",
    subscription_id: str = "sub_9",
) -> pb.RecordPaymentFailureRequest:
    request = pb.RecordPaymentFailureRequest(
        request_id=b.request_id(),
        payment_id=payment_id or f"inv_{b.request_id()[:8]}",
        billing_event_id=billing_event_id,
        customer_id="cus_9",
        subscription_id=subscription_id,
        amount=b.usd(amount),
        gateway="sandbox",
        payment_method=retry_plan_pb2.PaymentMethod(payment_method_id=card, network=network),
        decline=retry_plan_pb2.Decline(
            decline_code=code, visa_response_code=visa, mc_advice_code=mac
        ),
        failure_time=b.ts(at or datetime.now(UTC)),
        time_zone=time_zone,
        wallet=[
            retry_plan_pb2.PaymentMethod(payment_method_id=m, network=n) for m, n in (wallet or [])
        ],
        retry_schedule_code=schedule_code,
    )
    if outcome:
        request.metadata["sandbox_charge_outcome"] = outcome
    return request


@pytest.fixture(autouse=True)
async def fast_schedule(client: Client) -> None:
    """The schedule ``failure()`` names: attempts 60 and 120 s apart, 4 in all. Autouse in the
    modules that import it."""
    await schedule(client, "test-fast", [60, 120], attempts=4)


def retry_job(
    client: Client, db: Database, gateway: SandboxGateway | None = None, **kwargs: object
) -> RetryJob:
    """A RetryJob with the service's retry context, on the sandbox gateway (a new one when
    none is given); ``kwargs`` as RetryJob's (e.g. ``after_charge``)."""
    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    return RetryJob(db, {"sandbox": gateway or SandboxGateway()}, context, **kwargs)  # type: ignore[arg-type]


async def record(client: Client, request: pb.RecordPaymentFailureRequest) -> Any:
    return await client.call("t-billing", "RecordPaymentFailure", request)


async def run_retries(client: Client, *, ahead: timedelta = timedelta(0)) -> Any:
    """RunBillingJob's payment retries, due up to now + ahead."""
    summary = await b.run_job(client, end=datetime.now(UTC) + ahead)
    return summary.payment_retries


async def plan_of(client: Client, plan_id: str) -> Any:
    return (
        await client.call("t-reader", "GetRetryPlan", pb.GetRetryPlanRequest(plan_id=plan_id))
    ).plan


async def events(db: Database, plan_id: str) -> list[events_pb2.Event]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE aggregate_id = $1 ORDER BY position", plan_id
        )
    out = []
    for row in rows:
        event = events_pb2.Event()
        event.ParseFromString(row["payload"])
        out.append(event)
    return out


async def processing_plan(client: Client, server: StripeStubServer) -> str:
    """A retry plan of customer ``cus_9`` whose Stripe charge answered ``processing`` (its
    attempt UNKNOWN)."""
    await schedule(client, "stripe-fast", [60, 120], attempts=4)
    server.add_card("pm_slow", customer="cus_9", network="visa", behaviour="processing")
    request = failure(card="pm_slow", schedule_code="stripe-fast", at=datetime.now(UTC))
    request.gateway = "stripe"
    plan_id: str = (await record(client, request)).plan.plan_id
    first = await run_retries(client, ahead=timedelta(seconds=61))
    assert (first.plans_claimed, first.outcomes_unknown) == (1, 1)
    return plan_id
