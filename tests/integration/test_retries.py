"""Payment retries through gRPC on the real database: plans, decisions with reasons, the card
networks' rules as a guard, execution by the billing job, recovery, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import retry_plan_pb2
from repository.database import Database
from service.gateways.base import ChargeOutcome, ChargeRequest, OutcomeKind
from service.gateways.sandbox import SandboxGateway
from service.jobs.retry_job import RetryJob
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.retry_builders import (
    events,
    failure,
    fast_schedule,  # noqa: F401  (autouse fixture)
    plan_of,
    record,
    retry_job,
    rpc_error,
    run_retries,
    schedule,
)

PS = retry_plan_pb2.RetryPlanStatus
DA = retry_plan_pb2.DecisionAction
AO = retry_plan_pb2.AttemptOutcome


# -- decisions ------------------------------------------------------------------------------


async def test_soft_decline_is_retried_after_the_interval_with_a_reason(client: Client) -> None:
    failed_at = datetime.now(UTC)
    response = await record(client, failure(at=failed_at))
    plan, decision = response.plan, response.decision
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert plan.attempt_count == 1
    assert decision.action == DA.DECISION_ACTION_RETRY
    due = decision.next_attempt_time.ToDatetime(tzinfo=UTC)
    assert timedelta(seconds=59) <= due - failed_at <= timedelta(seconds=61)
    assert "insufficient_funds" in decision.reason
    assert decision.payment_method_id == "pm_card_1"
    assert plan.attempts[0].outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert plan.attempts[0].decline_class == retry_plan_pb2.DECLINE_CLASS_SOFT
    fetched = await plan_of(client, plan.plan_id)
    assert fetched.decisions[-1].reason == decision.reason


async def test_allowed_hours_move_the_attempt_into_the_customers_day(client: Client) -> None:
    await schedule(client, "test-hours", [3600], attempts=3, hours=(9, 17))
    # 20:30 in Tokyo: one hour later is 21:30, outside 9-17, so 09:00 next day local time.
    failed_at = datetime(2026, 11, 24, 11, 30, tzinfo=UTC)  # 20:30 JST
    response = await record(
        client,
        failure(at=failed_at, schedule_code="test-hours", time_zone="Asia/Tokyo"),
    )
    due = response.decision.next_attempt_time.ToDatetime(tzinfo=UTC)
    now = datetime.now(UTC)
    local_hour = (due + timedelta(hours=9)).hour
    assert 9 <= local_hour < 17
    assert due >= max(failed_at + timedelta(hours=1), now - timedelta(seconds=5))


async def test_hard_decline_without_wallet_stops_at_once(client: Client, db: Database) -> None:
    response = await record(client, failure(code="stolen_card"))
    assert response.plan.status == PS.RETRY_PLAN_STATUS_EXHAUSTED
    assert response.decision.action == DA.DECISION_ACTION_STOP
    assert "stolen_card" in response.plan.status_reason
    assert [e.type for e in await events(db, response.plan.plan_id)] == [
        "dunning.notice",
        "retry.exhausted",
        "dunning.exhausted",
        "dunning.final_action",
    ]


async def test_hard_decline_with_wallet_moves_to_the_next_method(client: Client) -> None:
    response = await record(client, failure(code="lost_card", wallet=[("pm_backup", "MASTERCARD")]))
    assert response.plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert response.decision.payment_method_id == "pm_backup"
    assert response.plan.current_method_index == 1
    assert "pm_backup" in response.decision.reason


async def test_visa_category_1_is_never_retried(client: Client) -> None:
    response = await record(client, failure(code="generic_decline", visa="04"))
    assert response.plan.status == PS.RETRY_PLAN_STATUS_EXHAUSTED
    assert "visa.category1" in response.decision.rule_ids


async def test_mastercard_advice_24_sets_the_earliest_retry(client: Client) -> None:
    failed_at = datetime.now(UTC)
    response = await record(
        client, failure(network="MASTERCARD", mac="25", at=failed_at, card="pm_mc")
    )
    due = response.decision.next_attempt_time.ToDatetime(tzinfo=UTC)
    assert due - failed_at >= timedelta(hours=24)
    error = await rpc_error(
        client.call(
            "t-ops",
            "RetryNow",
            pb.RetryNowRequest(request_id=b.request_id(), plan_id=response.plan.plan_id),
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mastercard" in (error.details() or "")


async def test_customer_action_waits_for_a_new_method_then_retries_at_once(
    client: Client,
) -> None:
    response = await record(client, failure(code="expired_card", outcome="succeed"))
    plan = response.plan
    assert response.decision.action == DA.DECISION_ACTION_WAIT_FOR_PAYMENT_METHOD
    assert plan.waiting_for_payment_method
    assert not plan.HasField("next_attempt_time")
    assert (await run_retries(client, ahead=timedelta(days=30))).plans_claimed == 0
    added = await client.call(
        "t-ops",
        "AddPaymentMethod",
        pb.AddPaymentMethodRequest(
            request_id=b.request_id(),
            plan_id=plan.plan_id,
            payment_method=retry_plan_pb2.PaymentMethod(
                payment_method_id="pm_new_card", network="VISA"
            ),
        ),
    )
    assert not added.plan.waiting_for_payment_method
    assert added.plan.decisions[-1].payment_method_id == "pm_new_card"
    summary = await run_retries(client)
    assert summary.recovered == 1
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.attempts[-1].payment_method_id == "pm_new_card"


# -- execution by the billing job ------------------------------------------------------------


async def test_retry_declines_then_recovers(client: Client, db: Database) -> None:
    response = await record(client, failure(outcome="decline_then_succeed:2:insufficient_funds"))
    plan_id = response.plan.plan_id
    assert (await run_retries(client)).plans_claimed == 0  # not due yet
    first = await run_retries(client, ahead=timedelta(seconds=61))
    assert first.rescheduled == 1
    after_first = await plan_of(client, plan_id)
    assert after_first.attempt_count == 2
    assert after_first.attempts[1].outcome == AO.ATTEMPT_OUTCOME_DECLINED
    assert after_first.attempts[1].idempotency_key == f"retry-{plan_id}-attempt-2"
    second = await run_retries(client, ahead=timedelta(minutes=5))
    assert second.recovered == 1
    done = await plan_of(client, plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED
    assert done.attempts[-1].gateway_charge_id.startswith("sbpi_")
    types = [e.type for e in await events(db, plan_id)]
    assert types == [
        "dunning.notice",
        "retry.scheduled",
        "retry.attempted",
        "retry.scheduled",
        "retry.attempted",
        "payment.recovered",
    ]
    attempted = [
        e.retry_attempted for e in await events(db, plan_id) if e.HasField("retry_attempted")
    ]
    assert [a.will_retry for a in attempted] == [True, False]


async def test_attempts_run_out_and_the_plan_is_exhausted(client: Client) -> None:
    response = await record(client, failure(outcome="decline:insufficient_funds"))
    for _ in range(3):
        await run_retries(client, ahead=timedelta(minutes=10))
    plan = await plan_of(client, response.plan.plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_EXHAUSTED
    assert plan.attempt_count == 4
    assert "allows 4 attempts" in plan.status_reason


async def test_two_concurrent_workers_never_run_the_same_attempt(
    client: Client, db: Database
) -> None:
    plan_ids = []
    for i in range(30):  # one card each: the networks' per-card limits do not interfere
        response = await record(client, failure(outcome="succeed", card=f"pm_{i}"))
        plan_ids.append(response.plan.plan_id)
    calls: list[str] = []

    def decide(request: ChargeRequest) -> ChargeOutcome:
        calls.append(request.idempotency_key)
        return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id=f"ch_{len(calls)}")

    gateway = SandboxGateway(charge_decider=decide)
    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    workers = [RetryJob(db, {"sandbox": gateway}, context, concurrency=8) for _ in range(2)]
    due = datetime.now(UTC) + timedelta(minutes=2)
    summaries = await asyncio.gather(*(w.run(due_by=due) for w in workers))
    assert sum(s.recovered for s in summaries) == 30, summaries
    assert len(calls) == len(set(calls)) == 30
    for plan_id in plan_ids:
        assert (await plan_of(client, plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED


class Crash(BaseException):
    """The worker died after the gateway answered and before the outcome was stored."""


async def test_a_worker_killed_mid_charge_leaves_one_charge(client: Client, db: Database) -> None:
    response = await record(client, failure(outcome="succeed"))
    plan_id = response.plan.plan_id
    charges: dict[str, int] = {}

    def decide(request: ChargeRequest) -> ChargeOutcome:
        charges[request.idempotency_key] = charges.get(request.idempotency_key, 0) + 1
        return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id="ch_once")

    async def die(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        raise Crash

    gateway = SandboxGateway(charge_decider=decide)
    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    dying = RetryJob(
        db, {"sandbox": gateway}, context, lease=timedelta(seconds=1), after_charge=die
    )
    with pytest.raises(Crash):
        await dying.run(due_by=datetime.now(UTC) + timedelta(minutes=2))
    stuck = await plan_of(client, plan_id)
    assert stuck.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_OPEN
    await asyncio.sleep(1.2)
    survivor = RetryJob(db, {"sandbox": gateway}, context)
    assert (await survivor.run(due_by=datetime.now(UTC) + timedelta(minutes=2))).recovered == 1
    done = await plan_of(client, plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.attempt_count == 2
    # the same key twice: the gateway (idempotent) moved the money once
    assert charges == {f"retry-{plan_id}-attempt-2": 2}


# -- the networks' rules are a guard ---------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "visa"),
    [
        ("VISA", ""),
        # The network not given, but the failure carried a Visa response code: a Visa card.
        ("OTHER", "51"),
    ],
)
async def test_retry_now_cannot_exceed_the_visa_reattempt_limit(
    client: Client, network: str, visa: str
) -> None:
    await schedule(client, "test-many", [1], attempts=40)
    response = await record(
        client,
        failure(
            schedule_code="test-many",
            outcome="decline:insufficient_funds",
            network=network,
            visa=visa,
        ),
    )
    plan_id = response.plan.plan_id
    for _ in range(15):
        await client.call(
            "t-ops", "RetryNow", pb.RetryNowRequest(request_id=b.request_id(), plan_id=plan_id)
        )
    error = await rpc_error(
        client.call(
            "t-ops", "RetryNow", pb.RetryNowRequest(request_id=b.request_id(), plan_id=plan_id)
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "visa.reattempt_limit" in (error.details() or "")
    plan = await plan_of(client, plan_id)
    assert plan.attempt_count == 16  # the failure and 15 reattempts
    # the schedule cannot get past the rule either: the next attempt waits out the window
    assert plan.next_attempt_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(days=29)


# -- a payment paid already is never retried ---------------------------------------------------


async def plans_for(client: Client, payment_id: str) -> list[Any]:
    listed = await client.call(
        "t-reader", "ListRetryPlans", pb.ListRetryPlansRequest(payment_id=payment_id)
    )
    return list(listed.plans)


async def test_a_failure_of_a_payment_recorded_as_paid_starts_no_plan(client: Client) -> None:
    payment = await b.record_payment(client, billing_event_id="be_paid")
    for request in (
        failure(payment_id=payment.payment_id),  # the same payment
        failure(billing_event_id="be_paid"),  # another charge of the same invoice
    ):
        error = await rpc_error(client.call("t-billing", "RecordPaymentFailure", request))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "paid already" in (error.details() or "")
        assert f"payment {payment.payment_id} was recorded as captured" in (error.details() or "")
        assert await plans_for(client, request.payment_id) == []  # nothing written


async def test_a_failure_of_a_payment_a_retry_recovered_starts_no_plan(client: Client) -> None:
    first = await record(client, failure(outcome="succeed"))
    plan_id = first.plan.plan_id
    await client.call(
        "t-ops", "RetryNow", pb.RetryNowRequest(request_id=b.request_id(), plan_id=plan_id)
    )
    assert (await plan_of(client, plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED
    # A late copy of the failure (another event id, so another request id).
    error = await rpc_error(record(client, failure(payment_id=first.plan.payment_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"retry plan {plan_id} recovered it" in (error.details() or "")
    assert [p.plan_id for p in await plans_for(client, first.plan.payment_id)] == [plan_id]


async def test_a_payment_and_its_failure_recorded_at_once_leave_nothing_to_retry(
    client: Client,
) -> None:
    """Whichever commits first, the payment ends every plan of its invoice: either the failure
    waits and sees it paid, or its plan is committed before the payment recovers it."""
    invoices = [f"be_race_{i}" for i in range(12)]

    async def pay(invoice: str) -> None:
        await b.record_payment(client, billing_event_id=invoice)

    async def fail(invoice: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # FAILED_PRECONDITION when paid first
            await record(client, failure(billing_event_id=invoice))

    await asyncio.gather(*(step(i) for i in invoices for step in (pay, fail)))
    for status in (PS.RETRY_PLAN_STATUS_ACTIVE, PS.RETRY_PLAN_STATUS_PAUSED):
        listed = await client.call(
            "t-reader", "ListRetryPlans", pb.ListRetryPlansRequest(status=status)
        )
        assert [p.billing_event_id for p in listed.plans] == []


async def test_a_plan_paid_while_its_attempt_is_charged_records_that_attempt(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The customer pays the invoice while the billing job is charging the retry: the payment
    ends the plan (and its lease), and the job still records what the gateway did. Here both
    succeeded: the customer paid twice, which the job says as an error for a person."""
    plan = (await record(client, failure(outcome="succeed"))).plan

    async def pay_meanwhile(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        # The invoice's amount exactly (failure()'s 25.00 USD).
        await b.record_payment(client, payment_id=plan.payment_id, items=[("plan", 2500, 0)])

    job = retry_job(client, db, after_charge=pay_meanwhile)
    summary = await job.run(due_by=datetime.now(UTC) + timedelta(minutes=2))

    assert (summary.settled_meanwhile, summary.lease_lost, summary.recovered) == (1, 0, 0)
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.status_reason.startswith(f"paid by payment {plan.payment_id}; attempt 2 was")
    assert done.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED  # not left OPEN
    assert done.attempts[-1].gateway_charge_id
    errors = [
        r for r in caplog.records if getattr(r, "action", "") == "retry_job.settled_meanwhile"
    ]
    assert [r.levelname for r in errors] == ["ERROR"]
    assert "paid twice" in errors[0].getMessage()


async def test_a_plan_exhausted_while_its_attempt_is_charged_records_that_attempt(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The billing system reports a hard decline of the same payment while the job charges
    it: the plan is EXHAUSTED, and the job's success is still recorded, as an error: the
    money came in although the plan ended."""
    plan = (await record(client, failure(outcome="succeed"))).plan

    async def fail_meanwhile(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        await record(client, failure(payment_id=plan.payment_id, code="stolen_card"))

    job = retry_job(client, db, after_charge=fail_meanwhile)
    summary = await job.run(due_by=datetime.now(UTC) + timedelta(minutes=2))

    assert (summary.settled_meanwhile, summary.lease_lost) == (1, 0)
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_EXHAUSTED
    charged = {a.attempt_number: a for a in done.attempts}[2]  # 3 is the reported failure
    assert charged.outcome == AO.ATTEMPT_OUTCOME_SUCCEEDED
    said = [r for r in caplog.records if getattr(r, "action", "") == "retry_job.settled_meanwhile"]
    assert [r.levelname for r in said] == ["ERROR"]
    assert "collected although the plan is EXHAUSTED" in said[0].getMessage()


async def test_an_unresolved_attempt_of_a_paid_plan_holds_no_card(client: Client) -> None:
    """A plan paid another way while its attempt's outcome is unknown is never due again, so
    nothing replays that attempt: its reason says so for a person, and the card's other plans
    are charged instead of waiting for it forever."""
    first = (await record(client, failure(outcome="timeout", card="pm_shared"))).plan
    assert (await run_retries(client, ahead=timedelta(minutes=2))).outcomes_unknown == 1
    await b.record_payment(client, payment_id=first.payment_id)
    paid = await plan_of(client, first.plan_id)
    assert paid.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert "the outcome of attempt 2 is not known" in paid.status_reason
    assert f"retry-{first.plan_id}-attempt-2" in paid.status_reason

    other = (await record(client, failure(outcome="succeed", card="pm_shared"))).plan
    summary = await run_retries(client, ahead=timedelta(minutes=2))
    assert (summary.card_busy, summary.recovered) == (0, 1)
    assert (await plan_of(client, other.plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED


# -- pause, resume, cancel, recovery by another payment ---------------------------------------


async def test_pause_resume_cancel(client: Client) -> None:
    plan_id = (await record(client, failure(outcome="succeed"))).plan.plan_id

    async def change(method: str, **fields: str) -> Any:
        request = getattr(pb, f"{method}Request")(
            request_id=b.request_id(), plan_id=plan_id, **fields
        )
        return (await client.call("t-ops", method, request)).plan

    paused = await change("PauseRetryPlan", reason="customer on the phone")
    assert paused.status == PS.RETRY_PLAN_STATUS_PAUSED
    assert (await run_retries(client, ahead=timedelta(minutes=5))).plans_claimed == 0
    again = await rpc_error(change("PauseRetryPlan"))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    resumed = await change("ResumeRetryPlan")
    assert resumed.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert resumed.HasField("next_attempt_time")
    canceled = await change("CancelRetryPlan", reason="written off")
    assert canceled.status == PS.RETRY_PLAN_STATUS_CANCELED
    assert canceled.status_reason == "written off"
    for method in ("ResumeRetryPlan", "PauseRetryPlan", "CancelRetryPlan"):
        error = await rpc_error(change(method))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await run_retries(client, ahead=timedelta(minutes=5))).plans_claimed == 0


async def test_a_payment_recorded_for_the_same_invoice_recovers_the_plan(
    client: Client, db: Database
) -> None:
    response = await record(client, failure(billing_event_id="be_77", outcome="succeed"))
    payment = b.payment_message()
    payment.billing_event_id = "be_77"
    await client.call(
        "t-billing",
        "RecordPayment",
        pb.RecordPaymentRequest(request_id=b.request_id(), payment=payment),
    )
    plan = await plan_of(client, response.plan.plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert payment.payment_id in plan.status_reason
    recovered = (await events(db, plan.plan_id))[-1]
    assert recovered.type == "payment.recovered"
    assert recovered.payment_recovered.recovered_by == "payment"
    assert (await run_retries(client, ahead=timedelta(minutes=5))).plans_claimed == 0


async def test_a_second_failure_advances_the_open_plan(client: Client) -> None:
    first = await record(client, failure(payment_id="inv_same"))
    second = await record(client, failure(payment_id="inv_same", card="pm_other"))
    assert second.plan.plan_id == first.plan.plan_id
    assert second.plan.attempt_count == 2
    assert [m.payment_method_id for m in second.plan.payment_methods] == ["pm_card_1", "pm_other"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", b.usd(2600)),
        ("amount", b.usd(2500, "EUR")),
        ("customer_id", "cus_someone_else"),
        ("gateway", "stripe"),
        ("subscription_id", "sub_other"),
    ],
)
async def test_a_second_failure_must_describe_the_same_payment(
    client: Client, db: Database, field: str, value: Any
) -> None:
    """A plan charges its customer's methods through its gateway: a failure of the same payment
    naming another customer, gateway, subscription or amount is refused, and writes nothing."""
    first = await record(client, failure(payment_id="inv_same"))
    request = failure(payment_id="inv_same")
    if isinstance(value, str):
        setattr(request, field, value)
    else:
        getattr(request, field).CopyFrom(value)
    before = await counts(db)
    error = await rpc_error(record(client, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: payment 'inv_same' has an open plan")
    assert await counts(db) == before
    assert (await plan_of(client, first.plan.plan_id)).attempt_count == 1


async def test_a_second_failure_may_leave_out_the_subscription(client: Client) -> None:
    first = await record(client, failure(payment_id="inv_same"))
    request = failure(payment_id="inv_same")
    request.subscription_id = ""
    second = await record(client, request)
    assert second.plan.plan_id == first.plan.plan_id
    assert second.plan.subscription_id == "sub_9"


# -- bad input --------------------------------------------------------------------------------


TABLES = (
    "retry_plan",
    "payment_attempt",
    "retry_decision",
    "outbox",
    "audit_event",
    "idempotency_key",
)


async def counts(db: Database) -> dict[str, int]:
    async with db.connection() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"gateway": "paypal"}, "gateway"),
        ({"visa": "5"}, "decline.visa_response_code"),
        ({"mac": "3x"}, "decline.mc_advice_code"),
        ({"amount": -5}, "amount.minor_units"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"network": "DINERSPLUS"}, "payment_method.network"),
        ({"code": "Not A Code"}, "decline.decline_code"),
        ({"schedule_code": "no-such"}, "retry_schedule_code"),
        ({"card": ""}, "payment_method.payment_method_id"),
    ],
)
async def test_bad_failure_input_names_the_field_and_writes_nothing(
    client: Client, db: Database, change: dict[str, Any], field: str
) -> None:
    request = failure(**{k: v for k, v in change.items() if k not in ("gateway",)})
    if "gateway" in change:
        request.gateway = change["gateway"]
    before = await counts(db)
    error = await rpc_error(record(client, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    assert await counts(db) == before


async def test_calls_on_unknown_or_malformed_plans(client: Client) -> None:
    error = await rpc_error(plan_of(client, "nope"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(plan_of(client, "00000000-0000-0000-0000-000000000000"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    exhausted = (await record(client, failure(code="stolen_card"))).plan.plan_id
    error = await rpc_error(
        client.call(
            "t-ops", "RetryNow", pb.RetryNowRequest(request_id=b.request_id(), plan_id=exhausted)
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "EXHAUSTED" in (error.details() or "")


async def test_replayed_failure_returns_the_same_plan(client: Client, db: Database) -> None:
    request = failure()
    first = await record(client, request)
    before = await counts(db)
    again = await record(client, request)
    assert again.plan.plan_id == first.plan.plan_id
    assert again.plan.attempt_count == 1
    assert await counts(db) == before


async def test_an_unknown_outcome_is_replayed_with_the_same_key_and_blocks_cancel(
    client: Client, db: Database
) -> None:
    plan_id = (await record(client, failure(outcome="timeout"))).plan.plan_id
    first = await run_retries(client, ahead=timedelta(minutes=2))
    assert first.outcomes_unknown == 1
    unknown = await plan_of(client, plan_id)
    assert unknown.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_UNKNOWN
    error = await rpc_error(
        client.call(
            "t-ops",
            "CancelRetryPlan",
            pb.CancelRetryPlanRequest(request_id=b.request_id(), plan_id=plan_id),
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not known yet" in (error.details() or "")
    keys: list[str] = []

    def answer(request: ChargeRequest) -> ChargeOutcome:
        keys.append(request.idempotency_key)
        return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id="ch_late")

    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    job = RetryJob(db, {"sandbox": SandboxGateway(charge_decider=answer)}, context)
    assert (await job.run(due_by=datetime.now(UTC) + timedelta(minutes=2))).recovered == 1
    assert keys == [f"retry-{plan_id}-attempt-2"]
    done = await plan_of(client, plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.attempt_count == 2


async def test_a_card_declined_for_good_long_ago_is_still_never_retried(client: Client) -> None:
    """The network-rule history keeps HARD declines however old (not only the last 31 days)."""
    old = await record(
        client,
        failure(
            card="pm_old_visa",
            code="generic_decline",
            visa="04",
            at=datetime.now(UTC) - timedelta(days=40),
        ),
    )
    assert old.plan.status == PS.RETRY_PLAN_STATUS_EXHAUSTED
    fresh = await record(client, failure(card="pm_old_visa", code="insufficient_funds"))
    assert fresh.decision.action == DA.DECISION_ACTION_STOP
    assert "visa.category1" in fresh.decision.rule_ids


async def test_list_retry_plans_pages_and_filters(client: Client) -> None:
    ids = [(await record(client, failure(card=f"pm_list_{i}"))).plan.plan_id for i in range(3)]
    await record(client, failure(code="stolen_card", card="pm_list_x"))  # EXHAUSTED
    seen: list[str] = []
    token = ""
    for _ in range(4):
        page = await client.call(
            "t-reader",
            "ListRetryPlans",
            pb.ListRetryPlansRequest(
                status=PS.RETRY_PLAN_STATUS_ACTIVE, page_size=2, page_token=token
            ),
        )
        seen += [p.plan_id for p in page.plans]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids


async def test_a_page_token_continues_only_the_listing_it_came_from(client: Client) -> None:
    """A token names a place in one listing: with other filters it would skip rows without a
    word, so it is refused; the page size may change from page to page."""
    ids = [(await record(client, failure(card=f"pm_tok_{i}"))).plan.plan_id for i in range(3)]

    async def page(token: str = "", size: int = 1, **filters: Any) -> Any:
        request = pb.ListRetryPlansRequest(page_size=size, page_token=token, **filters)
        return await client.call("t-reader", "ListRetryPlans", request)

    first = await page(status=PS.RETRY_PLAN_STATUS_ACTIVE)
    rest = await page(first.next_page_token, size=5, status=PS.RETRY_PLAN_STATUS_ACTIVE)
    assert [p.plan_id for p in [*first.plans, *rest.plans]] == ids
    for other in ({}, {"status": PS.RETRY_PLAN_STATUS_EXHAUSTED}, {"customer_id": "cus_other"}):
        error = await rpc_error(page(first.next_page_token, **other))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (error.details() or "")
        assert "other filters" in (error.details() or "")
