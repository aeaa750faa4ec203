"""The billing job runs payment retries in chunks (one open and one record transaction per
chunk): every plan of a chunk ends as it would alone, one plan that cannot be stored does not
hold up the others, and two plans on one card never dodge the networks' rules together."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import retry_plan_pb2
from repository.database import Database
from service.config import Config
from service.errors import ConfigError
from service.gateways.base import ChargeOutcome, ChargeRequest, OutcomeKind
from service.gateways.sandbox import SandboxGateway
from service.jobs.retry_job import RetryJob
from service.server import build_billing_job
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.retry_builders import (
    events,
    failure,
    fast_schedule,  # noqa: F401  (autouse fixture)
    plan_of,
    record,
    rpc_error,
)
from tests.integration.retry_builders import retry_job as job

PS = retry_plan_pb2.RetryPlanStatus
AO = retry_plan_pb2.AttemptOutcome
DUE = timedelta(minutes=2)


async def test_each_plan_of_a_chunk_ends_as_it_would_alone(client: Client, db: Database) -> None:
    outcomes = {"succeed": 6, "decline:insufficient_funds": 6, "timeout": 4, "visa:04": 4}
    plans: dict[str, str] = {}
    for outcome, n in outcomes.items():
        for i in range(n):
            response = await record(client, failure(outcome=outcome, card=f"pm_{outcome}_{i}"))
            plans[response.plan.plan_id] = outcome
    summary = await job(client, db, SandboxGateway(), chunk=7, chunks=2).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (summary.claimed, summary.recovered, summary.rescheduled) == (20, 6, 6)
    assert (summary.unknown, summary.exhausted, summary.errors) == (4, 4, 0)
    expected = {
        "succeed": (
            PS.RETRY_PLAN_STATUS_RECOVERED,
            AO.ATTEMPT_OUTCOME_SUCCEEDED,
            "payment.recovered",
        ),
        "decline:insufficient_funds": (
            PS.RETRY_PLAN_STATUS_ACTIVE,
            AO.ATTEMPT_OUTCOME_DECLINED,
            "retry.scheduled",
        ),
        "timeout": (PS.RETRY_PLAN_STATUS_ACTIVE, AO.ATTEMPT_OUTCOME_UNKNOWN, None),
        "visa:04": (PS.RETRY_PLAN_STATUS_EXHAUSTED, AO.ATTEMPT_OUTCOME_DECLINED, "retry.exhausted"),
    }
    for plan_id, outcome in plans.items():
        status, attempt_outcome, last_event = expected[outcome]
        plan = await plan_of(client, plan_id)
        assert plan.status == status, (outcome, plan)
        assert plan.attempt_count == 2
        assert plan.attempts[-1].outcome == attempt_outcome
        assert plan.attempts[-1].idempotency_key == f"retry-{plan_id}-attempt-2"
        stream = await events(db, plan_id)
        attempted = [e for e in stream if e.type == "retry.attempted"]
        assert len(attempted) == 1
        # events carry the plan as it now is, without its history (GetRetryPlan has that)
        assert attempted[0].retry_attempted.plan.status == status
        assert not attempted[0].retry_attempted.plan.attempts
        assert attempted[0].retry_attempted.attempt.attempt_number == 2
        # the event's attempt is the stored one, field for field, though the job builds it
        # from what it wrote
        assert attempted[0].retry_attempted.attempt == plan.attempts[-1]
        assert attempted[0].retry_attempted.will_retry == (status == PS.RETRY_PLAN_STATUS_ACTIVE)
        after = [e.type for e in stream[stream.index(attempted[0]) + 1 :]]
        if last_event is None:
            assert after == []
        else:
            assert after[0] == last_event
        if outcome == "decline:insufficient_funds":
            decision = stream[stream.index(attempted[0]) + 1].retry_scheduled.decision
            assert decision.sequence == plan.decisions[-1].sequence == 2
            assert decision.next_attempt_time == plan.next_attempt_time
            # the event's decision is the stored one, field for field (its reason, rules and
            # data included), though the job builds it from what it wrote
            assert decision == plan.decisions[-1]
            assert decision.reason
            assert decision.data.fields["decline_class"].string_value


async def test_a_plan_whose_outcome_cannot_be_stored_does_not_hold_up_its_chunk(
    client: Client, db: Database
) -> None:
    plan_ids = [
        (await record(client, failure(outcome="succeed", card=f"pm_{i}"))).plan.plan_id
        for i in range(5)
    ]
    poisoned = plan_ids[2]

    def decide(request: ChargeRequest) -> ChargeOutcome:
        if request.plan_id == poisoned:  # PostgreSQL refuses a NUL byte in text
            return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id="ch_\x00bad")
        return ChargeOutcome(OutcomeKind.SUCCEEDED, gateway_charge_id=f"ch_{request.plan_id}")

    summary = await job(client, db, SandboxGateway(charge_decider=decide)).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (summary.recovered, summary.errors) == (4, 1)
    for plan_id in plan_ids:
        plan = await plan_of(client, plan_id)
        if plan_id == poisoned:  # left OPEN and due again: the next run replays the same key
            assert plan.status == PS.RETRY_PLAN_STATUS_ACTIVE
            assert plan.attempts[-1].outcome == AO.ATTEMPT_OUTCOME_OPEN
        else:
            assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    again = await job(client, db, SandboxGateway()).run(due_by=datetime.now(UTC) + DUE)
    assert again.recovered == 1
    plan = await plan_of(client, poisoned)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert [a.idempotency_key for a in plan.attempts[1:]] == [f"retry-{poisoned}-attempt-2"]


async def test_a_plan_that_cannot_be_opened_does_not_hold_up_its_chunk(
    client: Client, db: Database
) -> None:
    """The chunk claims its plans in its open transaction; when that transaction fails, the
    claims roll back with it and each plan is taken again alone: the others are charged once
    each, and the broken one stays due and untouched (no lease, no attempt)."""
    plan_ids = [
        (await record(client, failure(outcome="succeed", card=f"pm_open_{i}"))).plan.plan_id
        for i in range(5)
    ]
    broken = plan_ids[3]
    async with db.connection() as conn:  # a wallet position past the end of the wallet
        await conn.execute(
            "UPDATE retry_plan SET method_index = 7 WHERE plan_id = $1", uuid.UUID(broken)
        )
    charged: Counter[str] = Counter()

    async def count(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        charged[request.plan_id] += 1

    summary = await job(client, db, SandboxGateway(), after_charge=count).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (summary.claimed, summary.recovered, summary.errors) == (5, 4, 1)
    assert charged == {p: 1 for p in plan_ids if p != broken}
    plan = await plan_of(client, broken)
    assert (plan.status, len(plan.attempts)) == (PS.RETRY_PLAN_STATUS_ACTIVE, 1)
    async with db.connection() as conn:
        lease = await conn.fetchval(
            "SELECT lease_owner FROM retry_plan WHERE plan_id = $1", uuid.UUID(broken)
        )
    assert lease is None
    again = await job(client, db, SandboxGateway(), after_charge=count).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (again.claimed, again.errors) == (1, 1)  # still due, still refused, nothing charged
    assert sum(charged.values()) == 4


async def test_a_cancelled_run_takes_its_chunks_with_it(client: Client, db: Database) -> None:
    """A run cancelled (the service stopping) while it waits to start its next chunk cancels
    the chunks it started: none goes on charging behind a stopped service. The attempt whose
    charge was cut off stays OPEN (replayed with its key once the lease runs out)."""
    for i in range(2):
        await record(client, failure(outcome="succeed", card=f"pm_cancel_{i}"))
    charging, cut_off = asyncio.Event(), asyncio.Event()
    charged: list[str] = []

    async def hold(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        charged.append(request.plan_id)
        charging.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cut_off.set()
            raise

    one_at_a_time = job(client, db, SandboxGateway(), chunk=1, chunks=1, after_charge=hold)
    run = asyncio.create_task(one_at_a_time.run(due_by=datetime.now(UTC) + DUE, limit=2))
    await asyncio.wait_for(charging.wait(), 30)  # chunk 1 charging; chunk 2 waits for a slot
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.wait_for(cut_off.wait(), 5)
    (plan_id,) = charged
    assert (await plan_of(client, plan_id)).attempts[-1].outcome == AO.ATTEMPT_OUTCOME_OPEN


async def test_a_worker_opens_one_chunk_at_a_time(client: Client, db: Database) -> None:
    """A chunk's open transaction holds a lock per card until it commits, in PostgreSQL's lock
    table, which every connection shares: the next chunk's open waits for it, so a worker
    holds at most one chunk of card locks however many chunks it has in flight."""
    for i in range(12):
        await record(client, failure(outcome="succeed", card=f"pm_open_{i}"))
    inside = most = 0

    class Counting(RetryJob):
        async def _open(self, *args: Any) -> Any:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            try:
                return await super()._open(*args)
            finally:
                inside -= 1

    context = client.service.billing_job.retry_job.context  # type: ignore[union-attr]
    worker = Counting(db, {"sandbox": SandboxGateway()}, context, chunk=3, chunks=4)
    summary = await worker.run(due_by=datetime.now(UTC) + DUE)
    assert (summary.claimed, summary.recovered) == (12, 12)
    assert most == 1


async def test_the_chunk_size_is_a_setting(client: Client, db: Database) -> None:
    """REFUND_RETRY_RETRY_CHUNK is how many plans the billing job opens and records together
    (a slow gateway wants fewer, so that a chunk's charges end within the lease): each record
    transaction's audit rows carry that transaction's time."""
    for i in range(5):
        await record(client, failure(outcome="succeed", card=f"pm_setting_{i}"))
    config = Config.from_env({"REFUND_RETRY_RETRY_CHUNK": "2"})
    billing = build_billing_job(config, db, {"sandbox": SandboxGateway()})
    assert billing.retry_job is not None
    summary = await billing.retry_job.run(due_by=datetime.now(UTC) + DUE)
    assert summary.recovered == 5
    async with db.connection() as conn:
        times = await conn.fetch(
            "SELECT occurred_at FROM audit_event WHERE action = 'retry.attempted'"
        )
    assert sorted(Counter(r["occurred_at"] for r in times).values()) == [1, 2, 2]
    with pytest.raises(ConfigError, match="REFUND_RETRY_RETRY_CHUNK"):
        Config.from_env({"REFUND_RETRY_RETRY_CHUNK": "0"})


async def test_a_chunk_slower_than_its_lease_keeps_its_plans(
    client: Client, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway slower than the lease: the chunk's leases are renewed while it charges, so a
    second worker that comes after the lease the chunk was opened with finds nothing to take,
    and the first records every outcome: one attempt and one charge per plan, none lost."""
    caplog.set_level(logging.INFO, logger="service.jobs.retry_job")
    plans = [
        (await record(client, failure(outcome="succeed", card=f"pm_slow_{i}"))).plan.plan_id
        for i in range(2)
    ]
    keys: list[str] = []
    charging = asyncio.Event()

    async def slow(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        keys.append(request.idempotency_key)
        charging.set()
        await asyncio.sleep(1.5)  # each charge takes longer than the lease

    lease, due_by = timedelta(seconds=1), datetime.now(UTC) + DUE
    slow_worker = job(client, db, SandboxGateway(), lease=lease, concurrency=1, after_charge=slow)
    first = asyncio.create_task(slow_worker.run(due_by=due_by))
    await asyncio.wait_for(charging.wait(), 30)
    await asyncio.sleep(1.5)  # the leases the chunk was opened with have run out
    second = await job(client, db, SandboxGateway(), lease=lease, after_charge=slow).run(
        due_by=due_by
    )
    assert second.claimed == 0
    summary = await first
    assert (summary.claimed, summary.recovered, summary.lease_lost) == (2, 2, 0)
    assert summary.leases_renewed >= 2  # both plans, at least once: the metric counts these
    assert sorted(keys) == sorted(f"retry-{p}-attempt-2" for p in plans)
    for plan_id in plans:
        plan = await plan_of(client, plan_id)
        assert (plan.status, len(plan.attempts)) == (PS.RETRY_PLAN_STATUS_RECOVERED, 2)
    renewed = [r for r in caplog.records if getattr(r, "action", "") == "retry_job.leases_renewed"]
    assert renewed
    assert all(r.plans <= 2 for r in renewed)  # type: ignore[attr-defined]


async def test_a_worker_that_dies_mid_chunk_stops_renewing_its_leases(
    client: Client, db: Database
) -> None:
    """The leases are renewed only while the chunk runs: a worker that dies mid-chunk, after a
    renewal, stops renewing, so its plan is taken again once the lease runs out and its open
    attempt is replayed with the same key."""
    plan_id = (await record(client, failure(outcome="succeed", card="pm_dies"))).plan.plan_id

    async def die_later(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        await asyncio.sleep(0.6)  # past the first renewal, a third of the lease in
        raise Crash

    due_by = datetime.now(UTC) + DUE
    dying = job(client, db, SandboxGateway(), lease=timedelta(seconds=1), after_charge=die_later)
    with pytest.raises(Crash):
        await dying.run(due_by=due_by)
    async with db.connection() as conn:
        expires = await conn.fetchval(
            "SELECT lease_expires_at - now() FROM retry_plan WHERE plan_id = $1",
            uuid.UUID(plan_id),
        )
    assert timedelta(0) < expires <= timedelta(seconds=1)
    await asyncio.sleep(1.2)
    keys: list[str] = []

    async def count(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        keys.append(request.idempotency_key)

    summary = await job(client, db, SandboxGateway(), after_charge=count).run(due_by=due_by)
    assert (summary.claimed, summary.recovered) == (1, 1)
    assert keys == [f"retry-{plan_id}-attempt-2"]


async def test_two_plans_on_one_card_are_attempted_one_after_the_other(
    client: Client, db: Database
) -> None:
    """The first attempt's Visa category-1 decline (never retry this card) reaches the guard
    before the second plan's attempt: the card is charged once, not twice."""
    first = (await record(client, failure(outcome="visa:04", card="pm_shared"))).plan.plan_id
    second = (await record(client, failure(outcome="visa:04", card="pm_shared"))).plan.plan_id
    calls: Counter[str] = Counter()

    async def count(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        calls[request.payment_method] += 1

    summary = await job(client, db, SandboxGateway(), after_charge=count).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert calls == {"pm_shared": 1}
    assert summary.exhausted + summary.blocked_by_rules == 2
    statuses = {(await plan_of(client, p)).status for p in (first, second)}
    assert statuses == {PS.RETRY_PLAN_STATUS_EXHAUSTED}


async def test_two_workers_never_charge_one_card_at_once(client: Client, db: Database) -> None:
    """Worker A is charging plan 1's card (its outcome not recorded yet) when worker B, and a
    RetryNow, come for plan 2 on the same card: both wait (B counts the plan card_busy and
    leaves it due; RetryNow is FAILED_PRECONDITION saying why). A's Visa category-1 decline
    then forbids the card, and B's next run is refused by the rule: one charge in all."""
    first = (await record(client, failure(outcome="visa:04", card="pm_shared"))).plan.plan_id
    second = (await record(client, failure(outcome="visa:04", card="pm_shared"))).plan.plan_id
    calls: list[str] = []
    charged, release = asyncio.Event(), asyncio.Event()

    async def hold(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        calls.append(request.plan_id)
        charged.set()
        await release.wait()

    due_by = datetime.now(UTC) + DUE
    worker_a = asyncio.create_task(
        job(client, db, SandboxGateway(), after_charge=hold).run(due_by=due_by, limit=1)
    )
    await asyncio.wait_for(charged.wait(), 30)
    assert calls == [first]
    summary = await job(client, db, SandboxGateway()).run(due_by=due_by)
    assert (summary.claimed, summary.card_busy) == (1, 1)
    assert calls == [first]
    error = await rpc_error(
        client.call(
            "t-ops", "RetryNow", pb.RetryNowRequest(request_id=b.request_id(), plan_id=second)
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in flight" in (error.details() or "")
    plan = await plan_of(client, second)
    assert (plan.status, len(plan.attempts)) == (PS.RETRY_PLAN_STATUS_ACTIVE, 1)

    release.set()
    assert (await worker_a).exhausted == 1
    summary = await job(client, db, SandboxGateway()).run(due_by=due_by)
    assert (summary.claimed, summary.blocked_by_rules, summary.card_busy) == (1, 1, 0)
    assert calls == [first]
    assert (await plan_of(client, second)).status == PS.RETRY_PLAN_STATUS_EXHAUSTED


async def test_a_new_attempt_waits_for_a_replay_on_its_card_in_the_same_chunk(
    client: Client, db: Database
) -> None:
    """Plan A's worker died mid-charge on a card; plan B on the same card comes due. In one
    chunk, A's attempt is replayed under its key and B does not charge the card beside it: it
    waits (card_busy) until A's outcome is known, here a Visa category-1 decline that forbids
    the card, so B is refused by the rule. B's plan id sorts before A's, so B comes first in
    the chunk, before A's replay has claimed the card for the chunk. (Two plans are recorded
    and the larger id plays A: looking for an id that sorts first by recording plan after plan
    piled declines on the card until the Visa limit pushed B a month out.)"""
    one = (await record(client, failure(outcome="visa:04", card="pm_replayed"))).plan.plan_id
    two = (await record(client, failure(outcome="visa:04", card="pm_replayed"))).plan.plan_id
    first, second = max(one, two, key=uuid.UUID), min(one, two, key=uuid.UUID)

    async def die(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        raise Crash

    dying = job(client, db, SandboxGateway(), lease=timedelta(seconds=1), after_charge=die)
    with pytest.raises(Crash):  # RetryNow on A: B's first retry is not due yet
        await dying.retry_now(uuid.UUID(first), "t-ops", b.request_id())
    await asyncio.sleep(1.2)  # the dead worker's lease runs out
    keys: list[str] = []

    async def count(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        keys.append(request.idempotency_key)

    summary = await job(client, db, SandboxGateway(), after_charge=count).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert keys == [f"retry-{first}-attempt-2"]  # the replay only
    assert (summary.claimed, summary.exhausted, summary.card_busy) == (2, 1, 1)
    # the replayed attempt keeps what it was opened with (RetryNow), and its event says so
    (attempted,) = [e for e in await events(db, first) if e.type == "retry.attempted"]
    replayed = (await plan_of(client, first)).attempts[-1]
    assert replayed.source == retry_plan_pb2.AttemptSource.ATTEMPT_SOURCE_RETRY_NOW
    assert attempted.retry_attempted.attempt == replayed
    summary = await job(client, db, SandboxGateway(), after_charge=count).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (summary.claimed, summary.blocked_by_rules) == (1, 1)
    assert keys == [f"retry-{first}-attempt-2"]
    assert (await plan_of(client, second)).status == PS.RETRY_PLAN_STATUS_EXHAUSTED


class Crash(BaseException):
    """The worker died after the gateway answered and before the outcome was stored."""


async def test_a_replay_that_cannot_reach_the_gateway_keeps_the_attempt_and_its_key(
    client: Client, db: Database
) -> None:
    """A worker died mid-charge; the replay finds the gateway unreachable. The first call may
    have charged the card, so the attempt stays open (unknown) under its key and the next run
    replays that key again: never a second key, never a second charge."""
    plan_id = (await record(client, failure(outcome="succeed", card="pm_once"))).plan.plan_id
    keys: list[str] = []

    async def die(request: ChargeRequest, outcome: ChargeOutcome) -> None:
        raise Crash

    with pytest.raises(Crash):
        await job(client, db, SandboxGateway(), lease=timedelta(seconds=1), after_charge=die).run(
            due_by=datetime.now(UTC) + DUE
        )
    await asyncio.sleep(1.2)  # the dead worker's lease runs out

    def unreachable(request: ChargeRequest) -> ChargeOutcome:
        keys.append(request.idempotency_key)
        return ChargeOutcome(OutcomeKind.NOT_ATTEMPTED, message="connect failed", retryable=True)

    summary = await job(client, db, SandboxGateway(charge_decider=unreachable)).run(
        due_by=datetime.now(UTC) + DUE
    )
    assert (summary.unknown, summary.not_attempted) == (1, 0)
    plan = await plan_of(client, plan_id)
    assert [a.outcome for a in plan.attempts[1:]] == [AO.ATTEMPT_OUTCOME_UNKNOWN]
    assert plan.attempt_count == 2  # the attempt may have reached the issuer

    def succeed(request: ChargeRequest) -> ChargeOutcome:
        keys.append(request.idempotency_key)
        return ChargeOutcome(OutcomeKind.SUCCEEDED)

    ahead = datetime.now(UTC) + timedelta(minutes=5)
    assert (
        await job(client, db, SandboxGateway(charge_decider=succeed)).run(due_by=ahead)
    ).recovered == 1
    plan = await plan_of(client, plan_id)
    assert plan.status == PS.RETRY_PLAN_STATUS_RECOVERED
    assert len(plan.attempts) == 2
    assert keys == [f"retry-{plan_id}-attempt-2"] * 2
