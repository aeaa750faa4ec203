"""A payment recorded for a failed payment's invoice counts against what its retry plan has
left to collect: in full it recovers the plan, in part the plan charges only the rest (as
Stripe retries an invoice's amount_remaining), in another currency a person decides. An
attempt charges what was due when it opened, and a replay charges that again under its key.
A retry of one failed payment of an invoice that collects it counts as paid for the invoice's
other plans (other failed payments of it: the same debt)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from refundretry.v1 import payment_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service.gateways.base import ChargeOutcome, ChargeRequest, OutcomeKind
from service.gateways.sandbox import SandboxGateway
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
)

PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
DUE = timedelta(minutes=2)  # the fast schedule's first retry is a minute after the failure


def invoice() -> str:
    return f"in_{uuid.uuid4().hex[:10]}"


async def pay(
    client: Client, billing_event_id: str, minor_units: int, currency: str = "USD"
) -> payment_pb2.Payment:
    """A payment of the invoice (its billing event) by another way: RecordPayment."""
    return await b.record_payment(
        client,
        billing_event_id=billing_event_id,
        customer_id="cus_9",
        items=[("plan", minor_units, 0)],
        currency=currency,
    )


def charging(amounts: list[tuple[str, int, str]]) -> SandboxGateway:
    """The sandbox, approving every charge and noting (key, amount, currency) of each."""

    def decide(request: ChargeRequest) -> ChargeOutcome:
        amounts.append(
            (request.idempotency_key, request.amount.minor_units, request.amount.currency)
        )
        return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id=f"ch_{len(amounts)}")

    return SandboxGateway(charge_decider=decide)


async def test_a_payment_of_part_of_the_invoice_leaves_the_rest_to_collect(
    client: Client, db: Database
) -> None:
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    assert (plan.amount_paid.minor_units, plan.amount_due.minor_units) == (0, 2500)

    await pay(client, bill, 1000)
    partly = await plan_of(client, plan.plan_id)
    assert partly.status == PS.RETRY_PLAN_STATUS_ACTIVE  # still collecting
    assert (partly.amount.minor_units, partly.amount_paid.minor_units) == (2500, 1000)
    assert (partly.amount_due.minor_units, partly.amount_due.currency_code) == (1500, "USD")
    told = (await events(db, plan.plan_id))[-1]
    assert told.type == "retry.partially_paid"
    assert told.retry_plan_changed.plan.amount_due.minor_units == 1500

    # The next attempt charges what is left, and that recovers the plan.
    charged: list[tuple[str, int, str]] = []
    summary = await retry_job(client, db, charging(charged)).run(due_by=datetime.now(UTC) + DUE)
    assert summary.recovered == 1
    assert charged == [(f"retry-{plan.plan_id}-attempt-2", 1500, "USD")]
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.status_reason == "attempt 2 succeeded"
    assert [a.amount.minor_units for a in done.attempts] == [2500, 1500]


async def test_payments_that_together_cover_the_invoice_recover_its_plan(
    client: Client, db: Database
) -> None:
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    await pay(client, bill, 1000)
    await pay(client, bill, 1500)
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.status_reason.startswith("paid by payment ")
    assert "more than" not in done.status_reason
    assert [e.type for e in await events(db, plan.plan_id)][-2:] == [
        "retry.partially_paid",
        "payment.recovered",
    ]
    # Nothing is left to charge.
    charged: list[tuple[str, int, str]] = []
    await retry_job(client, db, charging(charged)).run(due_by=datetime.now(UTC) + DUE)
    assert charged == []


async def test_an_overpayment_recovers_the_plan_and_says_by_how_much(client: Client) -> None:
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    await pay(client, bill, 1000)
    paid = await pay(client, bill, 10000)
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.status_reason == (
        f"paid by payment {paid.payment_id} (100.00 USD, 85.00 USD more than the 15.00 USD due)"
    )


async def test_a_payment_in_another_currency_pauses_the_plan_for_a_person(
    client: Client, db: Database
) -> None:
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    paid = await pay(client, bill, 2300, currency="EUR")
    paused = await plan_of(client, plan.plan_id)
    assert paused.status == PS.RETRY_PLAN_STATUS_PAUSED
    assert paused.status_reason.startswith(
        f"payment {paid.payment_id} paid 23.00 EUR, and 25.00 USD is due: the currencies differ"
    )
    assert paused.amount_paid.minor_units == 0  # nothing counted
    assert (await events(db, plan.plan_id))[-1].type == "retry.paused"
    charged: list[tuple[str, int, str]] = []
    await retry_job(client, db, charging(charged)).run(due_by=datetime.now(UTC) + DUE)
    assert charged == []  # never charged on a guess

    # The person who checked resumes it: it collects the whole amount again.
    await client.call(
        "t-ops",
        "ResumeRetryPlan",
        pb.ResumeRetryPlanRequest(request_id=b.request_id(), plan_id=plan.plan_id),
    )
    await retry_job(client, db, charging(charged)).run(due_by=datetime.now(UTC) + DUE)
    assert [(amount, currency) for _, amount, currency in charged] == [(2500, "USD")]


async def test_a_failure_reported_after_a_partial_payment_collects_only_the_rest(
    client: Client,
) -> None:
    """payment.succeeded and payment.failed come from independent queues: the payment of part
    of the invoice may be recorded first."""
    bill = invoice()
    await pay(client, bill, 600)
    await pay(client, bill, 400)
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert (plan.amount_paid.minor_units, plan.amount_due.minor_units) == (1000, 1500)
    assert [a.amount.minor_units for a in plan.attempts] == [2500]  # the failure's

    # Paid in full before, or in another currency: no plan, nothing written.
    for paid_before in ([(2500, "USD")], [(1000, "USD"), (1500, "USD")], [(100, "EUR")]):
        other = invoice()
        for minor_units, currency in paid_before:
            await pay(client, other, minor_units, currency)
        request = failure(billing_event_id=other, amount=2500)
        error = await rpc_error(record(client, request))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is paid already" in (error.details() or "")
        listed = await client.call(
            "t-reader",
            "ListRetryPlans",
            pb.ListRetryPlansRequest(payment_id=request.payment_id),
        )
        assert list(listed.plans) == []
    assert "not in USD: check it" in (error.details() or "")  # the EUR one


class Crash(BaseException):
    """The worker died after the gateway answered and before the outcome was stored."""


async def test_a_replayed_attempt_charges_what_it_charged_first_under_its_key(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker dies mid-charge; part of the invoice is paid before the attempt is replayed.
    The replay sends the same key with the same amount (a gateway refuses a key reused with
    other parameters, and the first call may have charged): the customer paid part twice,
    which the job records in the reason and logs for a person to refund."""
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan
    charged: list[tuple[str, int, str]] = []
    gateway = charging(charged)

    async def die(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        raise Crash

    dying = retry_job(client, db, gateway, lease=timedelta(seconds=1), after_charge=die)
    with pytest.raises(Crash):
        await dying.run(due_by=datetime.now(UTC) + DUE)
    await pay(client, bill, 1000)  # the customer pays part meanwhile
    assert (await plan_of(client, plan.plan_id)).amount_due.minor_units == 1500
    await asyncio.sleep(1.2)  # the dead worker's lease runs out

    summary = await retry_job(client, db, gateway).run(due_by=datetime.now(UTC) + DUE)
    assert summary.recovered == 1
    key = f"retry-{plan.plan_id}-attempt-2"
    assert charged == [(key, 2500, "USD"), (key, 2500, "USD")]
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert done.status_reason == (
        "attempt 2 succeeded, charging 25.00 USD: 10.00 USD more than was left due after "
        "payments recorded meanwhile; refund the difference"
    )
    assert done.attempts[-1].amount.minor_units == 2500
    overpaid = [r for r in caplog.records if getattr(r, "action", "") == "retry_job.overpaid"]
    assert [r.levelname for r in overpaid] == ["ERROR"]


async def test_a_partial_payment_while_an_attempt_is_charged_is_named_when_it_succeeds(
    client: Client, db: Database
) -> None:
    bill = invoice()
    plan = (await record(client, failure(billing_event_id=bill, amount=2500))).plan

    async def pay_part(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        await pay(client, bill, 2000)

    charged: list[tuple[str, int, str]] = []
    job = retry_job(client, db, charging(charged), after_charge=pay_part)
    assert (await job.run(due_by=datetime.now(UTC) + DUE)).recovered == 1
    done = await plan_of(client, plan.plan_id)
    assert done.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert "20.00 USD more than was left due" in done.status_reason


async def test_a_retry_that_collects_the_invoice_ends_its_other_failed_payments_plan(
    client: Client, db: Database
) -> None:
    """Two failed payments of one invoice (the billing system tried it twice, under two
    payment ids) have a plan each. The first plan's retry collects the invoice: the second
    plan counts it, as it counts a payment recorded for the invoice, and never charges it
    again."""
    bill = invoice()
    earlier = datetime.now(UTC) - timedelta(minutes=10)
    first = (await record(client, failure(billing_event_id=bill, at=earlier))).plan
    second = (await record(client, failure(billing_event_id=bill, card="pm_card_2"))).plan
    assert first.payment_id != second.payment_id

    charged: list[tuple[str, int, str]] = []
    gateway = charging(charged)
    summary = await retry_job(client, db, gateway).run(due_by=datetime.now(UTC))
    assert summary.recovered == 1
    assert charged == [(f"retry-{first.plan_id}-attempt-2", 2500, "USD")]  # only the due one

    ended = await plan_of(client, second.plan_id)
    assert ended.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert ended.status_reason == (
        f"paid by attempt 2 of retry plan {first.plan_id} for the same billing event (charge ch_1)"
    )
    told = (await events(db, second.plan_id))[-1]
    assert told.type == "payment.recovered"
    assert told.payment_recovered.recovered_by == "retry"

    # The second plan's attempt was due a minute after its failure: nothing is charged.
    await retry_job(client, db, gateway).run(due_by=datetime.now(UTC) + DUE)
    assert len(charged) == 1


async def test_plans_of_one_invoice_in_one_chunk(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """In one chunk: a plan that collected the invoice ends its declined sibling after that
    sibling's own outcome is recorded; two plans that both collected one invoice are logged
    as an error (the customer paid twice: a person refunds one); a sibling of a smaller
    amount left keeps collecting the rest."""
    declined_bill, twice_bill, part_bill = invoice(), invoice(), invoice()
    collects = await record(client, failure(billing_event_id=declined_bill, outcome="succeed"))
    declines = await record(
        client,
        failure(
            billing_event_id=declined_bill,
            card="pm_card_2",
            outcome="decline:insufficient_funds",
        ),
    )
    twice = [
        (await record(client, failure(billing_event_id=twice_bill, card=card, outcome="succeed")))
        for card in ("pm_card_3", "pm_card_4")
    ]
    part = await record(
        client,
        failure(billing_event_id=part_bill, card="pm_card_5", amount=1000, outcome="succeed"),
    )
    rest = await record(
        client,
        failure(
            billing_event_id=part_bill,
            card="pm_card_6",
            amount=2500,
            outcome="decline:insufficient_funds",
        ),
    )

    summary = await retry_job(client, db).run(due_by=datetime.now(UTC) + DUE)
    assert summary.recovered == 4  # the attempts that collected: the siblings are not counted

    ended = await plan_of(client, declines.plan.plan_id)
    assert ended.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert ended.status_reason.startswith(
        f"paid by attempt 2 of retry plan {collects.plan.plan_id}"
    )
    assert [e.type for e in await events(db, declines.plan.plan_id)][-3:] == [
        "retry.attempted",
        "retry.scheduled",
        "payment.recovered",
    ]
    for plan in twice:
        assert (await plan_of(client, plan.plan.plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED
    twice_logged = [
        r for r in caplog.records if getattr(r, "action", "") == "retry_job.collected_twice"
    ]
    assert [(r.levelname, getattr(r, "billing_event_id", None)) for r in twice_logged] == [
        ("ERROR", twice_bill)
    ]

    left = await plan_of(client, rest.plan.plan_id)
    assert left.status == PS.RETRY_PLAN_STATUS_ACTIVE
    assert (left.amount_paid.minor_units, left.amount_due.minor_units) == (1000, 1500)
    assert (await events(db, rest.plan.plan_id))[-1].type == "retry.partially_paid"
    assert (await plan_of(client, part.plan.plan_id)).status == PS.RETRY_PLAN_STATUS_RECOVERED
