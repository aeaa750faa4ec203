"""The billing job's payment retries: run due attempts of retry plans through the gateways.

In chunks of plans, in short steps that never hold a transaction across the network:

1. **open** (one transaction): claim due plans with ``FOR UPDATE SKIP LOCKED``; check the
   card networks' rules again for each card at this moment — a guard, not a hint: a rule
   that forbids the attempt reschedules it instead — and insert the attempts as OPEN with
   the idempotency keys ``retry-<plan>-attempt-<n>``, or find the open attempt of a worker
   that died; lease the plans to this worker;
2. **charge** through the gateway, renewing the chunk's leases every third of the lease while
   it does (a slow gateway never lets another worker take a plan being charged), then
   **record** the outcome, the next decision (or RECOVERED / EXHAUSTED), the events and the
   audit rows in one transaction.

A worker killed mid-charge leaves its attempt OPEN; once its lease expires another worker
replays it with the same key, so the customer is charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg

from refundretry.v1 import events_pb2, retry_plan_pb2
from repository import retries as plans
from repository.database import Connection, Database
from repository.settings import schedule_from_row
from service import changes, convert, dunning
from service.auth import SYSTEM
from service.domain.decline_codes import Classification, Decline, classify, stored_network
from service.domain.money import Money
from service.domain.network_rules import check_attempt
from service.domain.retry_plan import Action, Decision, Method, PlanStatus, check_plan_transition
from service.errors import FailedPrecondition, NotFound, Unavailable
from service.gateways.base import (
    ChargeOutcome,
    ChargeRequest,
    ChargingGateway,
    OutcomeKind,
    accepting_calls,
    decline_of,
    probing,
)
from service.retries import (
    CardHistories,
    Collected,
    RetryContext,
    amount_due,
    announce,
    card_history,
    decide_for,
    plan_methods,
    redecide,
    settle_other_plans,
    slot_of,
    view,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

AfterCharge = Callable[[ChargeRequest, ChargeOutcome], Awaitable[None]]
TRANSIENT_DB_RETRIES = 3
# Plans per chunk (one open and one record transaction each) and chunks in flight. What each
# statement costs whatever its rows (a round trip, executor start-up, the statement triggers
# of the analytics logs, BEGIN/COMMIT, the pool's reset) is shared by more attempts in a
# larger chunk: bench/retry_throughput.py measured chunks of 500 about 10 % cheaper per
# attempt than chunks of 250, and those 15 % cheaper than chunks of 100 (bench/README.md).
# A chunk's open transaction locks each of its cards (PostgreSQL's lock table holds
# max_locks_per_transaction x max_connections, 6,400 by default), and a worker opens one
# chunk at a time: 500 locks per worker at most.
CHUNK = 500
CHUNKS = 8
# Gateways keep idempotency keys for a limited time (Stripe: 24 hours): an attempt whose
# outcome stays unknown longer than this pauses the plan for a person to check.
UNKNOWN_GIVE_UP_AFTER = timedelta(hours=20)
# How old the success statistics may get before a job run rebuilds them.
STATS_MAX_AGE = timedelta(minutes=10)


# The leases renewed during the current run (RetryJob.run sets it; the chunks' tasks, and the
# renewal tasks they start, see the run's counter whichever runs overlap).
_RENEWED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "retry_job_leases_renewed", default=None
)


def idempotency_key(plan_id: uuid.UUID, attempt: int) -> str:
    return f"retry-{plan_id}-attempt-{attempt}"


@dataclass(slots=True)
class RetrySummary:
    claimed: int = 0
    recovered: int = 0
    rescheduled: int = 0
    waiting_for_customer: int = 0
    exhausted: int = 0
    blocked_by_rules: int = 0
    unknown: int = 0
    not_attempted: int = 0  # the gateway could not be reached: tried again shortly
    card_busy: int = 0  # another plan's attempt on the card is in flight: due again next run
    lease_lost: int = 0
    # The plan ended (a payment recorded for it, or a failure reported meanwhile exhausted it)
    # while its attempt was being charged: the outcome is recorded; a success after a payment
    # means the customer paid twice (logged as an error).
    settled_meanwhile: int = 0
    errors: int = 0
    dunning_steps: int = 0
    # Not an outcome: plans whose lease was renewed while their chunk charged, each time it
    # was (a gateway slower than a third of the lease).
    leases_renewed: int = 0

    def count(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)


@dataclass(slots=True)
class _Attempt:
    """One plan's attempt in a chunk: what is charged, then what the gateway answered."""

    plan_id: uuid.UUID
    attempt_id: uuid.UUID
    request: ChargeRequest
    gateway: str
    source: str
    network: str
    retry_of_class: str
    started_at: datetime
    replayed: bool  # an attempt opened before (a worker died, or its outcome is unknown)
    outcome: ChargeOutcome | None = None


@dataclass(slots=True)
class _Due:
    """A chunk of due plans to claim in its open transaction: up to ``limit`` plans of
    ``gateways`` due by ``due_by``. ``claimed`` holds their ids once the claim answered,
    and ``answered`` is set when the open transaction has ended (committed or failed)."""

    gateways: list[str]
    limit: int
    due_by: datetime
    exclude: list[uuid.UUID]  # taken by the run's earlier chunks: one attempt per run
    claimed: list[uuid.UUID] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Named:
    """Plans by id: those this worker leased (RetryNow; a plan put after another plan's
    attempt on its card) and, with ``or_due_by``, those due by then that nobody holds (the
    plans of a chunk whose open transaction failed, taken again one by one)."""

    plan_ids: list[uuid.UUID]
    or_due_by: datetime | None = None


@dataclass(slots=True)
class _Writes:
    """What a chunk's record transaction writes, per plan, in one statement per table."""

    finished: dict[uuid.UUID, plans.FinishedAttempt] = field(default_factory=dict)  # by attempt
    decisions: list[tuple[plans.NewDecision, Decision]] = field(default_factory=list)
    moves: list[plans.PlanMove] = field(default_factory=list)
    results: dict[uuid.UUID, str] = field(default_factory=dict)
    next_at: dict[uuid.UUID, datetime | None] = field(default_factory=dict)


class RetryJob:
    """Runs due retry attempts in chunks: per chunk of up to ``chunk`` plans one open and one
    record transaction, each a handful of set-based statements, and the charges in between
    (at most ``concurrency`` gateway calls in flight, ``chunks`` chunks at once). A chunk
    that fails is split and run plan by plan, so one bad plan never holds up the others."""

    def __init__(
        self,
        db: Database,
        gateways: Mapping[str, ChargingGateway],
        context: RetryContext,
        *,
        worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        unknown_replay_delay: timedelta = timedelta(seconds=30),
        concurrency: int = 16,
        chunk: int = CHUNK,
        chunks: int = CHUNKS,
        after_charge: AfterCharge | None = None,
    ) -> None:
        self._db = db
        self._gateways = gateways
        self.context = context
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = lease
        self._unknown_replay = unknown_replay_delay
        self._concurrency = concurrency
        self._gateway_calls = asyncio.Semaphore(concurrency)
        self._chunk = chunk
        self._chunks = asyncio.Semaphore(chunks)
        self._after_charge = after_charge

    async def run(self, *, due_by: datetime | None = None, limit: int = 500) -> RetrySummary:
        await self.refresh_stats_if_old()
        summary = RetrySummary()
        due_by = due_by or datetime.now(UTC)
        # Due work of a gateway this worker cannot call now (not configured here, or its
        # circuit breaker open) stays scheduled and untouched; a gateway on probation (the
        # breaker half-open) gets one plan, the probe.
        usable = [name for name, g in self._gateways.items() if accepting_calls(g)]
        trial = [name for name in usable if probing(self._gateways[name])]
        claims = [([name for name in usable if name not in trial], limit)]
        claims += [([name], 1) for name in trial]
        # Each chunk claims its plans in its own open transaction. The next chunk starts once
        # the previous one's open transaction has ended with a full chunk, and a chunk slot is
        # free: chunks overlap in charging and recording, never in opening. An open
        # transaction holds a lock per card of its chunk in PostgreSQL's lock table, shared by
        # every connection; so a worker holds at most one chunk of them.
        # A plan recorded by one chunk may be due again by ``due_by`` (an unknown outcome is
        # read again 30 s on): later chunks leave out what the run took.
        running: list[asyncio.Task[list[str]]] = []
        taken: list[uuid.UUID] = []
        renewed = [0]
        counting = _RENEWED.set(renewed)
        try:
            for gateways, most in claims:
                while gateways and most > 0:
                    await self._chunks.acquire()
                    due = _Due(gateways, min(self._chunk, most), due_by, exclude=list(taken))
                    running.append(asyncio.create_task(self._run_due(due)))
                    await due.answered.wait()
                    taken += due.claimed
                    most -= due.limit
                    if len(due.claimed) < due.limit:
                        break
        except BaseException:  # cancelled (shutdown): the chunks started go with the run
            for task in running:
                task.cancel()
            raise
        finally:
            _RENEWED.reset(counting)  # the chunks' tasks keep the counter they started with
        failure: BaseException | None = None
        for outcome in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                continue
            for result in outcome:
                summary.count(result)
        if failure is not None:
            raise failure
        summary.claimed = len(taken)
        summary.leases_renewed = renewed[0]
        summary.dunning_steps = await dunning.run_due(self._db, actor=SYSTEM.name, limit=limit)
        return summary

    async def retry_now(self, plan_id: uuid.UUID, actor: str, request_id: str) -> asyncpg.Record:
        """Attempt at once (RetryNow): the plan must be ACTIVE, not being attempted, and the
        network rules must allow the card now — otherwise FAILED_PRECONDITION naming the
        rule. Returns the plan after the attempt; a replayed request id returns the plan
        without attempting again."""
        now = datetime.now(UTC)
        digest = changes.fingerprint("RetryNow", str(plan_id))
        async with self._db.transaction() as conn:
            if await changes.replayed(conn, "RetryNow", request_id, digest, str(plan_id)):
                return await view(conn, plan_id)
            plan = await plans.lock(conn, plan_id)
            if plan is None:
                raise NotFound(f"retry plan {plan_id} does not exist")
            if plan["status"] != PlanStatus.ACTIVE:
                raise FailedPrecondition(f"retry plan {plan_id} is {plan['status']}")
            if plan["lease_expires_at"] is not None and plan["lease_expires_at"] > now:
                raise FailedPrecondition("an attempt of this plan is already running")
            gateway = self._gateways.get(plan["gateway"])
            if gateway is None:
                raise FailedPrecondition(f"gateway {plan['gateway']} is not configured here")
            if not accepting_calls(gateway):
                raise Unavailable(
                    f"gateway {plan['gateway']} is failing and its circuit breaker is open: "
                    "try again later (the plan's scheduled attempts wait for it too)"
                )
            methods = await plan_methods(conn, plan_id)
            method = methods[plan["method_index"]]
            if await plans.busy_cards(conn, [(method.payment_method_id, plan_id)]):
                raise FailedPrecondition(
                    f"an attempt of another retry plan on card {method.payment_method_id} is "
                    "in flight: its outcome decides whether the card may be charged again; "
                    "try again once it is known"
                )
            violation = check_attempt(
                method.payment_method_id,
                method.network,
                now,
                await card_history(conn, methods, now),
                self.context.limits,
            )
            if violation is not None:
                raise FailedPrecondition(
                    f"{violation.rule_id}: {violation.message}", rule_id=violation.rule_id
                )
            await plans.update_plan(conn, plan, next_attempt_at=now, waiting_for_method=False)
            await plans.claim_plan(conn, plan_id, self.worker_id, self._lease.total_seconds())
            row = await view(conn, plan_id)
            await changes.record(
                conn,
                actor=actor,
                action="retry.retry_now",
                entity_type="retry_plan",
                entity_id=str(plan_id),
                data={"payment_method_id": method.payment_method_id},
                event_field="retry_plan_changed",
                event_payload=events_pb2.RetryPlanChanged(
                    plan=convert.retry_plan_state(row, row["methods"])
                ),
            )
        (result,) = await self._process(_Named([plan_id]), "RETRY_NOW")
        if result == "errors":
            raise Unavailable("the attempt failed before its outcome was recorded; it is replayed")
        async with self._db.connection() as conn:
            return await view(conn, plan_id)

    async def refresh_stats_if_old(self) -> None:
        async with self._db.transaction() as conn:
            if await plans.stats_age(conn) < STATS_MAX_AGE:
                return
            locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('stats'))")
            if locked:
                await plans.refresh_stats(conn)

    async def _run_due(self, due: _Due) -> list[str]:
        try:
            return await self._process(due, "SCHEDULED")
        finally:
            self._chunks.release()

    async def _process(self, target: _Due | _Named, source: str) -> list[str]:
        """Open, charge and record the attempts of the plans ``target`` names: due plans to
        claim, or plans by id. One result per plan."""
        try:
            try:
                opened, results, later = await self._transient_retry(self._open, target, source)
            finally:
                if isinstance(target, _Due):
                    # The run's next chunk may open now, whether this open committed, failed
                    # or was cancelled: the one place that sets it.
                    target.answered.set()
        except Exception as exc:
            if isinstance(target, _Named):
                plan_ids, due_by = target.plan_ids, target.or_due_by
            else:
                plan_ids, due_by = target.claimed, target.due_by
            if not plan_ids:  # nothing claimed (the database is down, say): the run fails
                raise
            # The claims were rolled back with the transaction: each plan is taken again.
            return await self._split(
                plan_ids, exc, lambda one: self._process(_Named(one, due_by), source)
            )
        if opened:
            async with self._leases_renewed([a.plan_id for a in opened] + later):
                await self._charge_all(opened)
            results += await self._record_isolated(opened)
        if later:  # a card already attempted in this chunk: after its outcome
            async with self._leases_renewed(later):
                for plan_id in later:
                    results += await self._process(_Named([plan_id]), source)
        return results

    @contextlib.asynccontextmanager
    async def _leases_renewed(self, plan_ids: list[uuid.UUID]) -> AsyncIterator[None]:
        """While the block runs (a chunk charging, plans put off until another plan's outcome
        on their card), this worker's leases of ``plan_ids`` are renewed every third of the
        lease: however slow the gateway, no other worker takes a plan that this one is
        charging. A block shorter than a third of the lease renews nothing; the renewals stop
        with it, however it ends, so a worker that stops or dies never keeps a lease alive."""
        stop = asyncio.Event()
        renewing = asyncio.create_task(self._renew_leases(plan_ids, stop))
        try:
            yield
        finally:
            stop.set()
            await renewing

    async def _renew_leases(self, plan_ids: list[uuid.UUID], stop: asyncio.Event) -> None:
        every, started = self._lease.total_seconds() / 3, time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            try:
                async with self._db.connection() as conn:
                    held = await plans.renew_leases(
                        conn, plan_ids, self.worker_id, self._lease.total_seconds()
                    )
            except Exception:  # the next renewal tries again; a lease that runs out is lost
                log.warning(
                    "could not renew the leases of %d retry plans",
                    len(plan_ids),
                    exc_info=True,
                    extra={"action": "retry_job.lease_renewal_failed"},
                )
                continue
            if (renewed := _RENEWED.get()) is not None:
                renewed[0] += held
            log.info(
                "a chunk of the billing job is still charging after %.0f s: leases of %d of its "
                "%d retry plans renewed",
                time.monotonic() - started,
                held,
                len(plan_ids),
                extra={"action": "retry_job.leases_renewed", "plans": held},
            )

    async def _record_isolated(self, opened: list[_Attempt]) -> list[str]:
        try:
            return await self._transient_retry(self._record, opened)
        except Exception as exc:
            return await self._split(
                [a.plan_id for a in opened],
                exc,
                lambda one: self._record_isolated([a for a in opened if a.plan_id == one[0]]),
            )

    async def _split(
        self,
        plan_ids: list[uuid.UUID],
        error: Exception,
        each: Callable[[list[uuid.UUID]], Awaitable[list[str]]],
    ) -> list[str]:
        """A chunk's transaction failed: run its plans one by one, so only the plan that
        fails is left out (its lease released: it is due again)."""
        if len(plan_ids) > 1:
            results: list[str] = []
            for plan_id in plan_ids:
                results += await each([plan_id])
            return results
        (plan_id,) = plan_ids
        log.error(
            "retry plan %s failed in the billing job; its lease is released",
            plan_id,
            exc_info=error,
            extra={"action": "retry_job.plan_failed", "plan_id": str(plan_id)},
        )
        with contextlib.suppress(Exception):
            async with self._db.connection() as conn:
                await plans.release_leases(conn, [plan_id], self.worker_id)
        return ["errors"]

    @staticmethod
    async def _transient_retry(step: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        for attempt in range(TRANSIENT_DB_RETRIES + 1):
            try:
                return await step(*args)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == TRANSIENT_DB_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def _charge_all(self, opened: list[_Attempt]) -> None:
        """Charge a chunk's attempts: a few workers take them in turn (as many as gateway calls
        may be in flight), not a task per attempt, which cost about three times as much
        per attempt in the event loop."""
        pending = iter(opened)

        async def worker() -> None:
            for attempt in pending:
                await self._charge(attempt)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(opened)))))

    async def _charge(self, attempt: _Attempt) -> None:
        gateway = self._gateways.get(attempt.gateway)
        if gateway is None:
            outcome = ChargeOutcome(
                OutcomeKind.NOT_ATTEMPTED, message="gateway not configured", retryable=True
            )
        else:
            try:
                async with self._gateway_calls:
                    outcome = await gateway.charge(attempt.request)
            except Exception as exc:  # an adapter bug must not lose the attempt
                log.exception(
                    "gateway %s raised; the attempt is replayed with the same key",
                    gateway.name,
                    extra={"action": "retry_job.gateway_error"},
                )
                outcome = ChargeOutcome(
                    OutcomeKind.UNKNOWN, message=f"{type(exc).__name__}", retryable=True
                )
        if attempt.replayed and outcome.kind is OutcomeKind.NOT_ATTEMPTED:
            # This call did not reach the gateway, but an earlier one with the same key may
            # have: the attempt stays open (unknown) and is replayed with its key again, so
            # the customer is never charged under a second key.
            outcome = dataclasses.replace(outcome, kind=OutcomeKind.UNKNOWN, retryable=True)
        attempt.outcome = outcome
        if self._after_charge is not None:
            await self._after_charge(attempt.request, outcome)

    async def _open(
        self, target: _Due | _Named, source: str
    ) -> tuple[list[_Attempt], list[str], list[uuid.UUID]]:
        """In one transaction: claim the plans (lock due ones, skipping those another worker
        holds; or lock the named ones), check the card networks' rules for each plan's card at
        this moment (a guard, not a hint: a rule that forbids the attempt makes the plan decide
        again), insert the attempts as OPEN with their idempotency keys, or find the open
        attempt of a worker that died, and lease the plans it goes on with. Returns the
        attempts to charge, the results of plans that end here, and plans to run after this
        chunk (their card is attempted in it already: the guard must see that outcome
        first)."""
        now = datetime.now(UTC)
        opened: list[_Attempt] = []
        results: list[str] = []
        later: list[uuid.UUID] = []
        new: list[plans.NewAttempt] = []
        put_off: list[uuid.UUID] = []  # plans that end here: no lease
        async with self._db.transaction() as conn:
            if isinstance(target, _Due):
                rows = await plans.claim_due(
                    conn,
                    due_by=target.due_by,
                    limit=target.limit,
                    gateways=target.gateways,
                    exclude=target.exclude,
                )
                target.claimed = [r["plan_id"] for r in rows]
            else:
                rows = await plans.leased_plans(
                    conn, target.plan_ids, self.worker_id, or_due_by=target.or_due_by
                )
                results += ["lease_lost"] * (len(target.plan_ids) - len(rows))
            if not rows:
                return opened, results, later
            wallets = {r["plan_id"]: _wallet(r) for r in rows}
            facts = await plans.attempt_facts(conn, list(wallets))
            # Lock the cards to be charged before reading their history: an attempt on one of
            # them by another plan either committed its outcome already (the history has it)
            # or is in flight, in another worker's chunk or replayed in this one (the card is
            # busy and this plan waits for a later run).
            busy = await plans.busy_cards(
                conn,
                [
                    (wallets[r["plan_id"]][r["method_index"]].payment_method_id, r["plan_id"])
                    for r in rows
                    if (fact := facts.get(r["plan_id"])) is None or fact["open_attempt_id"] is None
                ],
            )
            histories = await CardHistories.read(conn, list(wallets.values()), now)
            cards_in_chunk: set[str] = set()
            for plan in rows:
                plan_id = plan["plan_id"]
                fact = facts.get(plan_id)
                if fact is not None and fact["open_attempt_id"] is not None:
                    # A worker died mid-charge, or the outcome is unknown: replay the attempt
                    # with the same key; a pending charge (its id known) is read instead.
                    number, method_id = fact["attempt_number"], fact["payment_method_id"]
                    attempt_id, retry_of = fact["open_attempt_id"], fact["retry_of_class"]
                    started_at, charge_id = fact["attempted_at"], fact["gateway_charge_id"]
                    opened_by, network = fact["source"], fact["network"]
                    # The same key charges the same amount, whatever was paid meanwhile (an
                    # attempt from before migration 0014 charged the plan's amount).
                    amount = fact["amount"] or plan["amount"]
                    replayed = True
                else:
                    wallet = wallets[plan_id]
                    method = wallet[plan["method_index"]]
                    if method.payment_method_id in cards_in_chunk:
                        later.append(plan_id)
                        continue
                    if plan_id in busy:
                        log.info(
                            "retry plan %s: another plan's attempt on its card is in flight; "
                            "it is attempted after that outcome is known",
                            plan_id,
                            extra={"action": "retry_job.card_busy", "plan_id": str(plan_id)},
                        )
                        put_off.append(plan_id)
                        results.append("card_busy")
                        continue
                    violation = check_attempt(
                        method.payment_method_id,
                        method.network,
                        now,
                        histories.of(wallet),
                        self.context.limits,
                    )
                    if violation is not None:
                        log.info(
                            "retry plan %s: %s refuses the attempt now; deciding again",
                            plan_id,
                            violation.rule_id,
                            extra={
                                "action": "retry_job.guard",
                                "plan_id": str(plan_id),
                                "rule_id": violation.rule_id,
                            },
                        )
                        await redecide(conn, plan, actor=SYSTEM.name, context=self.context)
                        put_off.append(plan_id)
                        results.append("blocked_by_rules")
                        continue
                    number = fact["next_number"] if fact is not None else 1
                    retry_of = fact["last_class"] if fact is not None else ""
                    method_id, started_at, charge_id = method.payment_method_id, now, ""
                    opened_by, network = source, method.network.value
                    amount = amount_due(plan)
                    replayed = False
                    hour, day, days = slot_of(
                        now, ZoneInfo(plan["time_zone"]), plan["first_failed_at"]
                    )
                    new.append(
                        plans.NewAttempt(
                            plan_id=plan_id,
                            attempt_number=number,
                            source=opened_by,
                            attempted_at=started_at,
                            payment_method_id=method_id,
                            network=network,
                            outcome="OPEN",
                            idempotency_key=idempotency_key(plan_id, number),
                            local_hour=hour,
                            day_of_month=day,
                            days_since_failure=days,
                            amount=amount,
                            retry_of_class=retry_of,
                        )
                    )
                    attempt_id = uuid.UUID(int=0)  # set below, once inserted
                cards_in_chunk.add(method_id)
                request = ChargeRequest(
                    plan_id=str(plan_id),
                    customer_id=plan["customer_id"],
                    payment_method=method_id,
                    amount=Money(plan["currency"], amount),
                    idempotency_key=idempotency_key(plan_id, number),
                    attempt=number,
                    metadata=plan["metadata"],
                    gateway_charge_id=charge_id,
                )
                opened.append(
                    _Attempt(
                        plan_id,
                        attempt_id,
                        request,
                        plan["gateway"],
                        source=opened_by,
                        network=network,
                        retry_of_class=retry_of,
                        started_at=started_at,
                        replayed=replayed,
                    )
                )
            if opened or later:
                ids = dict(
                    zip(
                        (a.plan_id for a in new),
                        await plans.open_attempts(
                            conn,
                            new,
                            lease=[a.plan_id for a in opened] + later,
                            worker=self.worker_id,
                            lease_seconds=self._lease.total_seconds(),
                        ),
                        strict=True,
                    )
                )
                for attempt in opened:
                    attempt.attempt_id = ids.get(attempt.plan_id, attempt.attempt_id)
            if put_off and isinstance(target, _Named):
                # Named plans may be leased already (RetryNow, a plan put after another):
                # those that end here are given back. Claimed due plans were never leased.
                await plans.release_leases(conn, put_off, self.worker_id)
        return opened, results, later

    async def _record(self, opened: list[_Attempt]) -> list[str]:
        """In one transaction: each attempt's outcome, the plan's next decision (or RECOVERED /
        EXHAUSTED), and their events and audit rows."""
        now = datetime.now(UTC)
        w = _Writes()
        async with self._db.transaction() as conn:
            locked = {
                r["plan_id"]: r
                for r in await plans.leased_plans(conn, [a.plan_id for a in opened], self.worker_id)
            }
            mine = [a for a in opened if a.plan_id in locked]
            lost = await _settled_meanwhile(conn, [a for a in opened if a.plan_id not in locked])
            if not mine:
                return lost
            for attempt in mine:
                w.finished[attempt.attempt_id] = _finished(attempt)
            await plans.finish_attempts(conn, list(w.finished.values()))
            # The decisions see this chunk's outcomes in the card history.
            wallets = {a.plan_id: _wallet(locked[a.plan_id]) for a in mine}
            histories = await CardHistories.read(conn, list(wallets.values()), now)
            schedules = {
                code: schedule_from_row(row)
                for code, row in (
                    await plans.schedules(conn, [p["schedule_code"] for p in locked.values()])
                ).items()
            }
            stats = await self.context.stats.get(conn)
            for attempt in mine:
                plan = locked[attempt.plan_id]
                self._next_step(
                    attempt,
                    plan,
                    wallets[attempt.plan_id],
                    now,
                    w,
                    lambda plan, wallet, last, code, made: decide_for(
                        plan,
                        schedules[plan["schedule_code"]],
                        wallet,
                        last=last,
                        decline_code=code,
                        failed_at=now,
                        attempts_made=made,
                        history=histories.of(wallet),
                        stats=stats,
                        now=now,
                        limits=self.context.limits,
                    ),
                )
            decided = await plans.insert_decisions(conn, [d for d, _ in w.decisions])
            moved = await plans.move_plans(conn, w.moves)
            moves = {m.plan_id: m for m in w.moves}
            decisions = {d.plan_id: decision for d, decision in w.decisions}
            for attempt in mine:
                plan_id = attempt.plan_id
                state = convert.retry_plan_state(
                    moves[plan_id].applied_to(locked[plan_id], moved[plan_id]),
                    _wallet_rows(wallets[plan_id]),
                )
                result = w.results[plan_id]
                await _attempted(
                    conn,
                    state,
                    attempt,
                    w.finished[attempt.attempt_id],
                    will_retry=w.next_at.get(plan_id) is not None,
                    next_at=w.next_at.get(plan_id),
                )
                if result == "recovered":
                    assert attempt.outcome is not None
                    await changes.record(
                        conn,
                        actor=SYSTEM.name,
                        action="payment.recovered",
                        entity_type="retry_plan",
                        entity_id=str(plan_id),
                        data={
                            "recovered_by": "retry",
                            "attempt": attempt.request.attempt,
                            "gateway_charge_id": attempt.outcome.gateway_charge_id,
                        },
                        event_field="payment_recovered",
                        event_payload=events_pb2.PaymentRecovered(plan=state, recovered_by="retry"),
                    )
                elif plan_id in decisions:
                    await announce(
                        conn,
                        decisions[plan_id],
                        plan=state,
                        latest=convert.retry_decision(decided[plan_id]),
                        actor=SYSTEM.name,
                    )
            # The invoices collected here are not charged again by their other plans.
            await settle_other_plans(
                conn,
                [
                    Collected(
                        a.plan_id,
                        locked[a.plan_id]["billing_event_id"],
                        a.request.amount,
                        a.request.attempt,
                        w.finished[a.attempt_id].gateway_charge_id,  # as stored
                    )
                    for a in mine
                    if w.results[a.plan_id] == "recovered"
                ],
                actor=SYSTEM.name,
            )
        return lost + [w.results[a.plan_id] for a in mine]

    def _next_step(
        self,
        attempt: _Attempt,
        plan: asyncpg.Record,
        wallet: tuple[Method, ...],
        now: datetime,
        w: _Writes,
        decide_next: Callable[
            [asyncpg.Record, tuple[Method, ...], Classification, str, int], Decision
        ],
    ) -> None:
        """The plan's next state after ``attempt``'s outcome, into ``w``."""
        outcome = attempt.outcome
        assert outcome is not None
        plan_id, number = attempt.plan_id, attempt.request.attempt
        status, reason = plan["status"], plan["status_reason"]

        def move(
            status: str,
            reason: str,
            next_at: datetime | None,
            *,
            method_index: int = plan["method_index"],
            waiting: bool = False,
            attempt_count: int = plan["attempt_count"],
        ) -> None:
            w.moves.append(
                plans.PlanMove(
                    plan_id, status, reason, next_at, method_index, waiting, attempt_count
                )
            )
            retrying = status == PlanStatus.ACTIVE and not waiting and next_at is not None
            w.next_at[plan_id] = next_at if retrying else None

        if outcome.kind in (OutcomeKind.UNKNOWN, OutcomeKind.PENDING):
            if now - attempt.started_at > UNKNOWN_GIVE_UP_AFTER:
                # Before the gateway forgets the idempotency key, a person must look.
                status = PlanStatus.PAUSED.value
                reason = (
                    f"the outcome of attempt {number} is unknown since "
                    f"{attempt.started_at.isoformat()}: check {attempt.request.idempotency_key} "
                    "at the gateway, then resume"
                )
            move(status, reason, now + self._unknown_replay)
            w.results[plan_id] = "unknown"
            return
        if outcome.kind is OutcomeKind.SUCCEEDED:
            check_plan_transition(PlanStatus(status), PlanStatus.RECOVERED)
            move(PlanStatus.RECOVERED.value, _succeeded(attempt, plan), None)
            w.results[plan_id] = "recovered"
            return
        if outcome.kind is OutcomeKind.NOT_ATTEMPTED and outcome.retryable:
            # Nothing reached the gateway (unreachable, rate limited, our key refused): the
            # attempt is given back and tried again shortly, at the plan's current decision,
            # instead of being pushed to the schedule's next slot for a passing outage. A
            # longer outage opens the gateway's circuit breaker, and the job then leaves the
            # plan alone until it closes.
            move(
                status, reason, now + self._unknown_replay, attempt_count=plan["attempt_count"] - 1
            )
            w.results[plan_id] = "not_attempted"
            return
        decline, classification = _declined(outcome)
        # NOT_ATTEMPTED never reached the issuer: it does not use up an attempt.
        made = plan["attempt_count"] - (1 if outcome.kind is OutcomeKind.NOT_ATTEMPTED else 0)
        decision = decide_next(plan, wallet, classification, decline.code, made)
        if decision.action is Action.STOP:
            check_plan_transition(PlanStatus(status), PlanStatus.EXHAUSTED)
            status, reason = PlanStatus.EXHAUSTED.value, decision.reason
        move(
            status,
            reason,
            decision.at,
            method_index=decision.method_index,
            waiting=decision.action is Action.WAIT_FOR_PAYMENT_METHOD,
            attempt_count=made,
        )
        w.decisions.append(
            (
                plans.NewDecision(
                    plan_id=plan_id,
                    action=decision.action.value,
                    next_attempt_at=decision.at,
                    payment_method_id=wallet[decision.method_index].payment_method_id
                    if wallet
                    else "",
                    reason=decision.reason,
                    rule_ids=decision.rule_ids,
                    data=decision.data,
                ),
                decision,
            )
        )
        w.results[plan_id] = {
            Action.RETRY: "rescheduled",
            Action.WAIT_FOR_PAYMENT_METHOD: "waiting_for_customer",
            Action.STOP: "exhausted",
        }[decision.action]


def _succeeded(attempt: _Attempt, plan: asyncpg.Record) -> str:
    """The status reason of a plan its attempt recovered. A payment recorded while the attempt
    was being charged may have paid part of what it charged: the customer paid the difference
    twice, and a person must refund it (logged as an error, and said in the reason)."""
    number, charged = attempt.request.attempt, attempt.request.amount
    due = amount_due(plan)
    if charged.minor_units <= due:
        return f"attempt {number} succeeded"
    over = Money(charged.currency, charged.minor_units - due)
    log.error(
        "retry plan %s: attempt %d charged %s, %s more than is due after the payments recorded "
        "while it was being charged; refund the difference",
        attempt.plan_id,
        number,
        charged,
        over,
        extra={
            "action": "retry_job.overpaid",
            "plan_id": str(attempt.plan_id),
            "idempotency_key": attempt.request.idempotency_key,
        },
    )
    return (
        f"attempt {number} succeeded, charging {charged}: {over} more than was left due after "
        "payments recorded meanwhile; refund the difference"
    )


def _declined(outcome: ChargeOutcome) -> tuple[Decline, Classification]:
    """The decline an unsuccessful outcome amounts to, and its classification."""
    decline = decline_of(outcome)
    return decline, classify(decline)


def _finished(attempt: _Attempt) -> plans.FinishedAttempt:
    """The attempt row's outcome columns."""
    outcome = attempt.outcome
    assert outcome is not None
    # A pending charge read again keeps its id even when the read fails.
    charge_id = outcome.gateway_charge_id or attempt.request.gateway_charge_id
    if outcome.kind in (OutcomeKind.UNKNOWN, OutcomeKind.PENDING):
        return plans.FinishedAttempt(
            attempt.attempt_id,
            "UNKNOWN",
            gateway_charge_id=charge_id,
            message=outcome.message,
        )
    if outcome.kind is OutcomeKind.SUCCEEDED:
        return plans.FinishedAttempt(
            attempt.attempt_id,
            "SUCCEEDED",
            gateway_charge_id=charge_id,
            message=outcome.message,
        )
    decline, classification = _declined(outcome)
    return plans.FinishedAttempt(
        attempt.attempt_id,
        {
            OutcomeKind.NOT_ATTEMPTED: "NOT_ATTEMPTED",
            OutcomeKind.REQUIRES_ACTION: "REQUIRES_ACTION",
        }.get(outcome.kind, "DECLINED"),
        decline_code=decline.code,
        visa_response_code=decline.visa_response_code,
        mc_advice_code=decline.mc_advice_code,
        decline_class=classification.decline_class.value,
        gateway_charge_id=charge_id,
        message=outcome.message or classification.reason,
    )


def _wallet(plan: asyncpg.Record) -> tuple[Method, ...]:
    """A ``leased_plans`` row's wallet, in order."""
    return tuple(
        Method(method_id, stored_network(network))
        for method_id, network in zip(plan["wallet_ids"], plan["wallet_networks"], strict=True)
    )


def _wallet_rows(wallet: tuple[Method, ...]) -> list[dict[str, str]]:
    return [{"payment_method_id": m.payment_method_id, "network": m.network.value} for m in wallet]


async def _settled_meanwhile(conn: Connection, lost: list[_Attempt]) -> list[str]:
    """The attempts of a chunk whose plan this worker no longer holds: ``lease_lost``, except
    those whose plan ended while they were charged (a payment recorded for it, or a failure
    reported meanwhile that exhausted it, ends its lease, and nothing will replay them). Their
    outcome is recorded all the same, with its event, for what the gateway did is a fact: a
    success after a payment means the customer paid twice."""
    charged = [a for a in lost if a.outcome is not None]
    if not charged:
        return ["lease_lost"] * len(lost)
    finished = {a.attempt_id: _finished(a) for a in charged}
    written = await plans.finish_settled_attempts(conn, list(finished.values()))
    for attempt in (a for a in charged if a.attempt_id in written):
        row = await plans.view(conn, attempt.plan_id)
        assert row is not None
        done = finished[attempt.attempt_id]
        await _attempted(
            conn,
            convert.retry_plan_state(row, row["methods"]),
            attempt,
            done,
            will_retry=False,
            next_at=None,
        )
        succeeded = done.outcome == "SUCCEEDED"
        if succeeded and row["status"] == PlanStatus.RECOVERED:
            what = (
                f"succeeded too (charge {done.gateway_charge_id}): the customer paid twice, "
                "refund one"
            )
        elif succeeded:
            what = (
                f"succeeded (charge {done.gateway_charge_id}): the payment was collected "
                f"although the plan is {row['status']}; check what its end did"
            )
        else:
            what = f"ended {done.outcome}"
        log.log(
            logging.ERROR if succeeded else logging.WARNING,
            "retry plan %s became %s while attempt %d was being charged (%s); the attempt %s",
            attempt.plan_id,
            row["status"],
            attempt.request.attempt,
            row["status_reason"],
            what,
            extra={
                "action": "retry_job.settled_meanwhile",
                "plan_id": str(attempt.plan_id),
                "outcome": done.outcome,
                "idempotency_key": attempt.request.idempotency_key,
            },
        )
    return ["settled_meanwhile" if a.attempt_id in written else "lease_lost" for a in lost]


async def _attempted(
    conn: Connection,
    plan: retry_plan_pb2.RetryPlan,
    attempt: _Attempt,
    finished: plans.FinishedAttempt,
    *,
    will_retry: bool,
    next_at: datetime | None,
) -> None:
    """The attempt's event and audit row. The event's attempt is built from what the job
    wrote: the row as the open transaction inserted it (or found it open) with the outcome
    columns ``finished`` has just stored."""
    message = convert.payment_attempt(
        {
            "attempt_number": attempt.request.attempt,
            "source": attempt.source,
            "attempted_at": attempt.started_at,
            "payment_method_id": attempt.request.payment_method,
            "network": attempt.network,
            "idempotency_key": attempt.request.idempotency_key,
            "outcome": finished.outcome,
            "decline_code": finished.decline_code,
            "visa_response_code": finished.visa_response_code,
            "mc_advice_code": finished.mc_advice_code,
            "decline_class": finished.decline_class,
            "gateway_charge_id": finished.gateway_charge_id,
            "message": finished.message,
            "amount": attempt.request.amount.minor_units,
        },
        attempt.request.amount.currency,
    )
    await changes.record(
        conn,
        actor=SYSTEM.name,
        action="retry.attempted",
        entity_type="retry_plan",
        entity_id=plan.plan_id,
        data={
            "attempt": attempt.request.attempt,
            "outcome": message.outcome,
            "idempotency_key": attempt.request.idempotency_key,
            "will_retry": will_retry,
        },
        event_field="retry_attempted",
        event_payload=events_pb2.RetryAttempted(
            plan=plan,
            attempt=message,
            will_retry=will_retry,
            next_attempt_time=convert.ts(next_at),
        ),
    )
