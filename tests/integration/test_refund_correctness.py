"""The promises that matter most: no over-refund under concurrency, request ids, four eyes,
retries on the schedule, and one refund at the gateway even after a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from refundretry.v1 import events_pb2, refund_pb2, retry_schedule_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service.gateways.base import OutcomeKind, RefundOutcome, RefundRequest
from service.gateways.stripe_gateway import StripeGateway
from service.jobs.billing_job import JobRequest
from tests.integration import builders as b
from tests.integration.conftest import Client, job_with
from tests.stripe_server import StripeStubServer

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def outbox_events(db: Database, refund_id: str) -> list[events_pb2.Event]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE aggregate_id = $1 ORDER BY position", refund_id
        )
    events = []
    for row in rows:
        event = events_pb2.Event()
        event.ParseFromString(row["payload"])
        events.append(event)
    return events


async def create_schedule(client: Client, code: str, seconds: list[int], attempts: int) -> None:
    intervals = []
    for s in seconds:
        d = Duration()
        d.FromSeconds(s)
        intervals.append(d)
    await client.call(
        "t-ops",
        "CreateRetrySchedule",
        pb.CreateRetryScheduleRequest(
            request_id=b.request_id(),
            schedule=retry_schedule_pb2.RetrySchedule(
                code=code, intervals=intervals, max_attempts=attempts
            ),
        ),
    )


# -- no over-refund, ever ---------------------------------------------------------------------


async def test_200_concurrent_conflicting_partial_refunds_never_exceed_captured(
    client: Client,
) -> None:
    payment = await b.record_payment(client, items=[("plan", 9000, 1000)])
    results = await asyncio.gather(
        *(b.create_refund(client, payment.payment_id, amount=75) for _ in range(200)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) + len(refused) == 200
    assert len(created) == 10000 // 75  # 133 fit, 67 are refused
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in refused)
    after = await b.get_payment(client, payment.payment_id)
    assert after.pending_refund_amount.minor_units == 133 * 75
    assert after.refundable_amount.minor_units == 10000 - 133 * 75
    for refund in created:
        await b.approve(client, refund.refund_id)
    summary = await b.run_job(client)
    assert summary.refunds_succeeded == 133
    after = await b.get_payment(client, payment.payment_id)
    assert after.refunded_amount.minor_units == 133 * 75
    report = await client.call("t-reader", "Reconcile", pb.ReconcileRequest())
    assert report.balanced, report.issues


async def test_database_refuses_over_refund_even_without_the_application(db: Database) -> None:
    """The CHECK constraint is the last line of defence."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO payment (payment_id, gateway, gateway_transaction_id, customer_id,"
            " currency, captured_amount, captured_at) VALUES"
            " ('p1', 'sandbox', 'pi_x', 'c', 'USD', 100, now())"
        )
    async with db.transaction() as conn:
        with pytest.raises(Exception, match="payment_no_over_refund"):
            await conn.execute(
                "UPDATE payment SET pending_refund_amount = 60, refunded_amount = 41"
                " WHERE payment_id = 'p1'"
            )


# -- request ids (AIP-155) ----------------------------------------------------------------------


async def test_replayed_request_id_returns_the_first_refund(client: Client) -> None:
    payment = await b.record_payment(client)
    rid = b.request_id()
    first = await b.create_refund(client, payment.payment_id, amount=500, rid=rid)
    again = await asyncio.gather(
        *(b.create_refund(client, payment.payment_id, amount=500, rid=rid) for _ in range(10))
    )
    assert {r.refund_id for r in again} == {first.refund_id}
    after = await b.get_payment(client, payment.payment_id)
    assert after.pending_refund_amount.minor_units == 500  # reserved once
    error = await rpc_error(b.create_refund(client, payment.payment_id, amount=501, rid=rid))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rid in (error.details() or "")


async def test_concurrent_first_use_of_one_request_id_creates_one_refund(client: Client) -> None:
    payment = await b.record_payment(client)
    rid = b.request_id()
    refunds = await asyncio.gather(
        *(b.create_refund(client, payment.payment_id, amount=100, rid=rid) for _ in range(20))
    )
    assert len({r.refund_id for r in refunds}) == 1
    listed = await client.call(
        "t-reader", "ListRefunds", pb.ListRefundsRequest(payment_id=payment.payment_id)
    )
    assert len(listed.refunds) == 1


# -- approvals: four eyes, tiers, roles -------------------------------------------------------


async def test_requester_can_never_approve_their_own_refund(client: Client) -> None:
    payment = await b.record_payment(client)
    refund = await b.create_refund(client, payment.payment_id, token="t-alice")
    error = await rpc_error(b.approve(client, refund.refund_id, token="t-alice"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "four eyes" in (error.details() or "")
    assert (await b.get_refund(client, refund.refund_id)).approvals == []
    approved = await b.approve(client, refund.refund_id, token="t-bob")
    assert approved.status == RS.REFUND_STATUS_APPROVED


async def test_tier_needs_distinct_approvers(client: Client) -> None:
    await b.set_policy(client, tiers=[("USD", 5000, 2), ("USD", 50000, 3)])
    payment = await b.record_payment(client, items=[("plan", 9000, 1000)])
    small = await b.create_refund(client, payment.payment_id, amount=1000)
    assert small.required_approvals == 1
    big = await b.create_refund(client, payment.payment_id, amount=6000)
    assert big.required_approvals == 2
    once = await b.approve(client, big.refund_id, token="t-bob")
    assert once.status == RS.REFUND_STATUS_PENDING_APPROVAL
    twice = await rpc_error(b.approve(client, big.refund_id, token="t-bob"))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await b.approve(client, big.refund_id, token="t-carol")
    assert done.status == RS.REFUND_STATUS_APPROVED
    assert {a.approver for a in done.approvals} == {"bob@example.com", "carol@example.com"}
    late = await rpc_error(b.approve(client, big.refund_id, token="t-alice"))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("token", "method", "code"),
    [
        (None, "GetRefundPolicy", grpc.StatusCode.UNAUTHENTICATED),
        ("wrong-token", "GetRefundPolicy", grpc.StatusCode.UNAUTHENTICATED),
        ("t-reader", "CreateRefund", grpc.StatusCode.PERMISSION_DENIED),
        ("t-billing", "ApproveRefund", grpc.StatusCode.PERMISSION_DENIED),
        ("t-bob", "RecordPayment", grpc.StatusCode.PERMISSION_DENIED),
        ("t-alice", "UpdateRefundPolicy", grpc.StatusCode.PERMISSION_DENIED),
        ("t-billing", "RunBillingJob", grpc.StatusCode.PERMISSION_DENIED),
        ("t-reader", "CreateRetrySchedule", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_roles(client: Client, token: str | None, method: str, code: grpc.StatusCode) -> None:
    request = getattr(pb, f"{method}Request")()
    error = await rpc_error(client.call(token, method, request))
    assert error.code() == code


async def test_reject_and_cancel_release_the_reservation(client: Client, db: Database) -> None:
    payment = await b.record_payment(client)
    one = await b.create_refund(client, payment.payment_id, amount=3000)
    two = await b.create_refund(client, payment.payment_id, amount=4000)
    rejected = await client.call(
        "t-bob",
        "RejectRefund",
        pb.RejectRefundRequest(request_id=b.request_id(), refund_id=one.refund_id, reason="no"),
    )
    assert rejected.refund.status == RS.REFUND_STATUS_REJECTED
    assert rejected.refund.decided_by == "bob@example.com"
    assert rejected.refund.details[0].status == DS.REFUND_DETAIL_STATUS_CANCELED
    await b.approve(client, two.refund_id, token="t-bob")
    canceled = await client.call(
        "t-billing",
        "CancelRefund",
        pb.CancelRefundRequest(request_id=b.request_id(), refund_id=two.refund_id, reason="dup"),
    )
    assert canceled.refund.status == RS.REFUND_STATUS_CANCELED
    after = await b.get_payment(client, payment.payment_id)
    assert after.pending_refund_amount.minor_units == 0
    assert after.refundable_amount.minor_units == 10000
    assert all(i.pending_refund.minor_units == 0 for i in after.items)
    # illegal transitions change nothing
    error = await rpc_error(b.approve(client, one.refund_id, token="t-carol"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "REJECTED" in (error.details() or "")
    assert (await b.run_job(client)).refunds_claimed == 0
    assert [e.type for e in await outbox_events(db, one.refund_id)] == [
        "refund.created",
        "refund.rejected",
    ]


async def test_a_refund_that_is_processing_cannot_be_canceled(client: Client) -> None:
    payment = await b.record_payment(
        client, metadata={"sandbox_refund_outcome": "pending_then_succeed"}
    )
    refund = await b.create_refund(client, payment.payment_id)
    await b.approve(client, refund.refund_id, token="t-bob")
    summary = await b.run_job(client)
    assert summary.refunds_pending_at_gateway == 1
    error = await rpc_error(
        client.call(
            "t-billing",
            "CancelRefund",
            pb.CancelRefundRequest(request_id=b.request_id(), refund_id=refund.refund_id),
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await b.get_refund(client, refund.refund_id)).status == RS.REFUND_STATUS_PROCESSING


# -- gateway failures and the retry schedule ---------------------------------------------------


async def test_gateway_failure_is_retried_on_the_schedule_and_succeeds_later(
    client: Client, db: Database
) -> None:
    await create_schedule(client, "refund-fast", [60, 600], attempts=4)
    payment = await b.record_payment(
        client, metadata={"sandbox_refund_outcome": "fail_then_succeed:2"}
    )
    refund = await b.create_refund(client, payment.payment_id, schedule="refund-fast")
    await b.approve(client, refund.refund_id, token="t-bob")

    first = await b.run_job(client)
    assert first.retries_scheduled == 1
    detail = (await b.get_refund(client, refund.refund_id)).details[0]
    assert detail.status == DS.REFUND_DETAIL_STATUS_RETRY_SCHEDULED
    assert detail.attempt_count == 1
    assert detail.remaining_retry_count == 3
    assert detail.last_error_code == "insufficient_merchant_balance"
    wait = detail.next_retry_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=50) < wait <= timedelta(seconds=60)

    assert (await b.run_job(client)).refunds_claimed == 0  # not due yet
    second = await b.run_job(client, end=datetime.now(UTC) + timedelta(seconds=61))
    assert second.retries_scheduled == 1
    detail = (await b.get_refund(client, refund.refund_id)).details[0]
    assert detail.attempt_count == 2
    wait = detail.next_retry_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=590) < wait <= timedelta(seconds=600)  # the second interval

    third = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=11))
    assert third.refunds_succeeded == 1
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].attempt_count == 3
    assert done.details[0].remaining_retry_count == 1
    events = await outbox_events(db, refund.refund_id)
    failures = [e.refund_attempt_failed for e in events if e.type == "refund.attempt_failed"]
    assert [f.will_retry for f in failures] == [True, True]
    assert all(f.HasField("next_retry_time") for f in failures)
    assert events[-1].type == "refund.succeeded"


async def test_retries_run_out_and_the_refund_fails_releasing_the_money(
    client: Client, db: Database
) -> None:
    await create_schedule(client, "refund-twice", [1], attempts=2)
    payment = await b.record_payment(
        client, metadata={"sandbox_refund_outcome": "fail_then_succeed:5"}
    )
    refund = await b.create_refund(client, payment.payment_id, amount=4000, schedule="refund-twice")
    await b.approve(client, refund.refund_id, token="t-bob")
    await b.run_job(client)
    last = await b.run_job(client, end=datetime.now(UTC) + timedelta(seconds=5))
    assert last.refunds_failed == 1
    failed = await b.get_refund(client, refund.refund_id)
    assert failed.status == RS.REFUND_STATUS_FAILED
    assert failed.details[0].remaining_retry_count == 0
    after = await b.get_payment(client, payment.payment_id)
    assert after.pending_refund_amount.minor_units == 0
    assert after.refunded_amount.minor_units == 0
    events = await outbox_events(db, refund.refund_id)
    assert events[-1].type == "refund.failed"
    assert events[-1].refund_failed.will_retry is False
    # the money is refundable again
    again = await b.create_refund(client, payment.payment_id)
    assert again.amount.minor_units == 10000


async def test_pending_at_the_sandbox_gateway_is_synced_until_final(client: Client) -> None:
    ok = await b.record_payment(client, metadata={"sandbox_refund_outcome": "pending_then_succeed"})
    bad = await b.record_payment(client, metadata={"sandbox_refund_outcome": "pending_then_fail"})
    refunds = [await b.create_refund(client, p.payment_id) for p in (ok, bad)]
    for refund in refunds:
        await b.approve(client, refund.refund_id, token="t-bob")
    first = await b.run_job(client)
    assert first.refunds_pending_at_gateway == 2
    synced = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=2))
    assert synced.refunds_succeeded == 1
    assert synced.refunds_failed == 1
    statuses = [(await b.get_refund(client, r.refund_id)).status for r in refunds]
    assert statuses == [RS.REFUND_STATUS_SUCCEEDED, RS.REFUND_STATUS_FAILED]
    # one attempt each: syncing is not a new attempt
    for refund in refunds:
        assert (await b.get_refund(client, refund.refund_id)).details[0].attempt_count == 1


# -- Stripe, through the real SDK, and a crash at the worst moment -----------------------------


@pytest.fixture
def config_overrides(stripe_server: StripeStubServer) -> dict[str, str]:
    return {
        "REFUND_RETRY_STRIPE_API_KEY": stripe_server.api_key,
        "REFUND_RETRY_STRIPE_API_BASE": stripe_server.base_url,
    }


async def stripe_refund(client: Client, stripe_server: StripeStubServer, behaviour: str) -> Any:
    payment = await b.record_payment(client, gateway="stripe", items=[("plan", 5000, 0)])
    stripe_server.add_payment(payment.gateway_transaction_id, amount=5000, behaviour=behaviour)
    refund = await b.create_refund(client, payment.payment_id, amount=2000)
    await b.approve(client, refund.refund_id, token="t-bob")
    return refund


async def test_stripe_refund_pending_then_succeeded(
    client: Client, stripe_server: StripeStubServer
) -> None:
    refund = await stripe_refund(client, stripe_server, "pending_then_succeed")
    assert (await b.run_job(client)).refunds_pending_at_gateway == 1
    processing = await b.get_refund(client, refund.refund_id)
    assert processing.status == RS.REFUND_STATUS_PROCESSING
    gateway_id = processing.details[0].gateway_refund_id
    assert gateway_id.startswith("re_")
    stripe_server.settle(gateway_id)
    assert (await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=2))).refunds_succeeded
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    (created,) = stripe_server.refunds
    assert created["amount"] == 2000
    assert created["metadata"]["payment_id"] == refund.payment_id


async def test_stripe_refund_pending_then_failed(
    client: Client, stripe_server: StripeStubServer
) -> None:
    refund = await stripe_refund(client, stripe_server, "pending_then_fail")
    await b.run_job(client)
    gateway_id = (await b.get_refund(client, refund.refund_id)).details[0].gateway_refund_id
    stripe_server.settle(gateway_id)
    summary = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=2))
    assert summary.refunds_failed == 1
    failed = await b.get_refund(client, refund.refund_id)
    assert failed.status == RS.REFUND_STATUS_FAILED
    assert failed.details[0].last_error_code == "card_expired_or_canceled"
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.refundable_amount.minor_units == 5000


class Crash(BaseException):
    """The worker died after the gateway answered and before the outcome was stored."""


async def test_crash_between_gateway_call_and_commit_gives_one_refund_at_the_gateway(
    client: Client, stripe_server: StripeStubServer
) -> None:
    refund = await stripe_refund(client, stripe_server, "succeed")
    gateway = StripeGateway(stripe_server.api_key, stripe_server.base_url)

    async def die(request: RefundRequest, outcome: RefundOutcome) -> None:
        raise Crash(request.idempotency_key)

    crashing = job_with(
        client.service, {"stripe": gateway}, lease=timedelta(seconds=1), after_gateway_call=die
    )
    try:
        with pytest.raises(Crash):
            await crashing.run(JobRequest())
    finally:
        await gateway.close()
    assert len(stripe_server.refunds) == 1  # money moved once
    stuck = await b.get_refund(client, refund.refund_id)
    assert stuck.details[0].status == DS.REFUND_DETAIL_STATUS_PROCESSING
    assert stuck.details[0].gateway_refund_id == ""  # the outcome was never stored

    await asyncio.sleep(1.2)  # the dead worker's lease expires
    summary = await b.run_job(client)
    assert summary.refunds_succeeded == 1
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].attempt_count == 1
    (only,) = stripe_server.refunds
    assert done.details[0].gateway_refund_id == only["id"]
    keys = [r.idempotency_key for r in stripe_server.requests if r.method == "POST"]
    assert len(keys) == 2
    assert len(set(keys)) == 1  # the replay used the same key
    assert stripe_server.requests[-1].replayed


# -- bad input: the right code, the field named, nothing written -------------------------------


TABLES = (
    "payment",
    "refund_event",
    "refund_event_detail",
    "idempotency_key",
    "outbox",
    "audit_event",
    "journal_entry",
)


async def counts(db: Database) -> dict[str, int]:
    async with db.connection() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


def refund_request(payment_id: str, **fields: Any) -> Callable[[], pb.CreateRefundRequest]:
    def build() -> pb.CreateRefundRequest:
        request = pb.CreateRefundRequest(request_id=b.request_id(), payment_id=payment_id)
        for name, value in fields.items():
            if name == "amount":
                request.amount.CopyFrom(value)
            else:
                setattr(request, name, value)
        return request

    return build


@pytest.mark.parametrize(
    ("case", "code", "field"),
    [
        ("negative", grpc.StatusCode.INVALID_ARGUMENT, "amount.minor_units"),
        ("zero", grpc.StatusCode.INVALID_ARGUMENT, "amount.minor_units"),
        ("unknown currency", grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
        ("lowercase currency", grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
        ("currency mismatch", grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
        ("above refundable", grpc.StatusCode.FAILED_PRECONDITION, "exceeds the refundable"),
        ("empty payment id", grpc.StatusCode.INVALID_ARGUMENT, "payment_id"),
        ("malformed payment id", grpc.StatusCode.INVALID_ARGUMENT, "payment_id"),
        ("unknown payment", grpc.StatusCode.NOT_FOUND, "pay_nope"),
        ("empty request id", grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        ("amount and items", grpc.StatusCode.INVALID_ARGUMENT, "amount"),
        ("unknown item", grpc.StatusCode.INVALID_ARGUMENT, "items[0].item_id"),
        ("unknown schedule", grpc.StatusCode.INVALID_ARGUMENT, "retry_schedule_code"),
    ],
)
async def test_bad_create_refund_input_names_the_field_and_writes_nothing(
    client: Client, db: Database, case: str, code: grpc.StatusCode, field: str
) -> None:
    payment = await b.record_payment(client, items=[("plan", 900, 100)])
    pid = payment.payment_id
    builds: dict[str, Callable[[], pb.CreateRefundRequest]] = {
        "negative": refund_request(pid, amount=b.usd(-5)),
        "zero": refund_request(pid, amount=b.usd(0)),
        "unknown currency": refund_request(pid, amount=b.usd(5, "ABC")),
        "lowercase currency": refund_request(pid, amount=b.usd(5, "usd")),
        "currency mismatch": refund_request(pid, amount=b.usd(5, "EUR")),
        "above refundable": refund_request(pid, amount=b.usd(1001)),
        "empty payment id": refund_request(""),
        "malformed payment id": refund_request("pay 1; drop"),
        "unknown payment": refund_request("pay_nope"),
        "empty request id": lambda: pb.CreateRefundRequest(payment_id=pid),
        "amount and items": lambda: pb.CreateRefundRequest(
            request_id=b.request_id(),
            payment_id=pid,
            amount=b.usd(5),
            items=[pb.RefundLineItem(item_id="plan")],
        ),
        "unknown item": lambda: pb.CreateRefundRequest(
            request_id=b.request_id(), payment_id=pid, items=[pb.RefundLineItem(item_id="nope")]
        ),
        "unknown schedule": refund_request(pid, retry_schedule_code="no-such-schedule"),
    }
    before = await counts(db)
    error = await rpc_error(client.call("t-billing", "CreateRefund", builds[case]()))
    assert error.code() == code
    assert field in (error.details() or "")
    assert "Traceback" not in (error.details() or "")
    assert await counts(db) == before


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: setattr(p, "gateway", "paypal"), "payment.gateway"),
        (lambda p: p.captured_amount.CopyFrom(b.usd(-1)), "payment.captured_amount.minor_units"),
        (lambda p: p.captured_amount.CopyFrom(b.usd(10001)), "payment.captured_amount"),
        (lambda p: p.items[0].tax.CopyFrom(b.usd(1000, "EUR")), "payment.items[0].tax"),
        (lambda p: setattr(p, "customer_id", ""), "payment.customer_id"),
        (lambda p: p.ClearField("capture_time"), "payment.capture_time"),
        (lambda p: p.metadata.__setitem__("sandbox_refund_outcome", "explode"), "sandbox"),
    ],
)
async def test_bad_record_payment_input_names_the_field_and_writes_nothing(
    client: Client, db: Database, mutate: Callable[[Any], None], field: str
) -> None:
    payment = b.payment_message()
    mutate(payment)
    before = await counts(db)
    error = await rpc_error(
        client.call(
            "t-billing",
            "RecordPayment",
            pb.RecordPaymentRequest(request_id=b.request_id(), payment=payment),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    assert await counts(db) == before


async def test_malformed_refund_ids(client: Client) -> None:
    for bad in ("", "not-a-uuid"):
        error = await rpc_error(b.get_refund(client, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refund_id" in (error.details() or "")
    error = await rpc_error(b.get_refund(client, "00000000-0000-0000-0000-000000000000"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -- unknown outcomes and gateways that need a person ------------------------------------------


class FlakyGateway:
    """Answers UNKNOWN (a timeout after sending) ``unknown`` times, then succeeds; records the
    idempotency keys it saw."""

    name = "sandbox"

    def __init__(self, unknown: int) -> None:
        self.unknown = unknown
        self.keys: list[str] = []

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        self.keys.append(request.idempotency_key)
        if len(self.keys) <= self.unknown:
            return RefundOutcome(
                OutcomeKind.UNKNOWN, error_code="timeout", error_message="read timed out"
            )
        return RefundOutcome(OutcomeKind.SUCCEEDED, "gw_refund_1")

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        raise AssertionError("nothing is pending")

    async def close(self) -> None:
        return None


async def approved_refund(client: Client, **payment: Any) -> Any:
    paid = await b.record_payment(client, **payment)
    refund = await b.create_refund(client, paid.payment_id)
    await b.approve(client, refund.refund_id, token="t-bob")
    return refund


async def test_unknown_outcome_is_replayed_with_the_same_key(client: Client) -> None:
    refund = await approved_refund(client)
    gateway = FlakyGateway(unknown=2)
    job = job_with(client.service, {"sandbox": gateway}, unknown_replay_delay=timedelta(0))
    assert (await job.run(JobRequest())).unknown == 1
    open_attempt = (await b.get_refund(client, refund.refund_id)).details[0]
    assert open_attempt.status == DS.REFUND_DETAIL_STATUS_PROCESSING
    assert open_attempt.last_error_code == "timeout"
    assert (await job.run(JobRequest())).unknown == 1
    assert (await job.run(JobRequest())).succeeded == 1
    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].attempt_count == 1  # one attempt, replayed
    assert len(set(gateway.keys)) == 1
    assert len(gateway.keys) == 3


async def test_an_outcome_unknown_for_too_long_goes_to_a_person(
    client: Client, db: Database
) -> None:
    refund = await approved_refund(client)
    gateway = FlakyGateway(unknown=100)
    job = job_with(
        client.service,
        {"sandbox": gateway},
        unknown_replay_delay=timedelta(0),
        unknown_give_up_after=timedelta(seconds=0.5),
    )
    await job.run(JobRequest())
    await asyncio.sleep(0.6)
    summary = await job.run(JobRequest())
    assert summary.requires_action == 1
    stuck = await b.get_refund(client, refund.refund_id)
    assert stuck.status == RS.REFUND_STATUS_REQUIRES_ACTION
    assert stuck.details[0].last_error_code == "outcome_unknown"
    assert (await job.run(JobRequest())).claimed == 0  # nobody replays it any more
    assert (await outbox_events(db, refund.refund_id))[-1].type == "refund.requires_action"
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.pending_refund_amount.minor_units == 10000  # still reserved


async def test_requires_action_at_the_gateway_is_synced_until_it_finishes(client: Client) -> None:
    refund = await approved_refund(client, metadata={"sandbox_refund_outcome": "requires_action"})
    assert (await b.run_job(client)).refunds_requires_action == 1
    waiting = await b.get_refund(client, refund.refund_id)
    assert waiting.status == RS.REFUND_STATUS_REQUIRES_ACTION
    assert waiting.details[0].HasField("next_retry_time")
    summary = await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=2))
    assert summary.refunds_succeeded == 1
    assert (await b.get_refund(client, refund.refund_id)).status == RS.REFUND_STATUS_SUCCEEDED


async def test_run_billing_job_replays_its_first_summary_for_a_reused_request_id(
    client: Client,
) -> None:
    await approved_refund(client)
    request = pb.RunBillingJobRequest(
        request_id=b.request_id(), process_new_refunds=True, process_due_retries=True
    )
    first = await client.call("t-ops", "RunBillingJob", request)
    assert first.summary.refunds_succeeded == 1
    await approved_refund(client)  # new work: a replay must not run it
    again = await client.call("t-ops", "RunBillingJob", request)
    assert again.summary == first.summary
    other = pb.RunBillingJobRequest(request_id=request.request_id, process_new_refunds=True)
    error = await rpc_error(client.call("t-ops", "RunBillingJob", other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await b.run_job(client)).refunds_succeeded == 1


async def test_creating_and_settling_refunds_of_one_payment_at_once_never_deadlocks(
    client: Client,
) -> None:
    await b.set_policy(client, auto={"USD": 1000})
    payment = await b.record_payment(client, items=[("plan", 90000, 10000)])
    for _ in range(40):
        await b.create_refund(client, payment.payment_id, amount=100)
    for _ in range(3):
        results = await asyncio.gather(
            b.run_job(client),
            *(b.create_refund(client, payment.payment_id, amount=100) for _ in range(40)),
        )
        assert results[0].errors == 0
    final = await b.run_job(client)
    assert final.errors == 0
    after = await b.get_payment(client, payment.payment_id)
    assert after.refunded_amount.minor_units == 160 * 100
    assert after.pending_refund_amount.minor_units == 0
    report = await client.call("t-reader", "Reconcile", pb.ReconcileRequest())
    assert report.balanced, report.issues
