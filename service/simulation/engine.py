"""The simulation: a population of failed payments drawn from a recoverability model, retried
on a simulated clock by the real decision code, with the sandbox gateway answering by the model.

Population
    Every payment is drawn from ``random.Random(f"population:{seed}:{index}")``: payment ``i`` is
    the same whatever the number of payments and for every strategy (first failure time,
    amount, time zone, card network, decline, and when the customer would fix their card or pay
    another way).

Schedules (``payment-smart``, ``payment-fixed``)
    A discrete-event simulation over all payments in time order, doing what the application
    does, with its own code:

    - the first failure (as ``service.retries.record_payment_failure``): the decline is
      classified by ``classify`` and ``decide`` is called with ``attempts_made`` 1;
    - a due attempt (as the billing job, ``service.jobs.retry_job``): the network rules are
      checked again with ``check_attempt`` (a refusal moves the attempt to the time the rule
      allows, or stops the plan), the sandbox gateway (``SandboxGateway(charge_decider=...)``)
      charges, and a decline is classified and ``decide`` called with the attempt count;
    - a new payment method (as ``service.retries.add_payment_method``): it joins the wallet; a
      plan waiting for one moves to it and retries at once;
    - the customer paying another way cancels the plan.

    ``decide`` gets the card history of the last 31 days (``HISTORY_WINDOW``) as
    ``PastAttempt`` values and the success statistics of retries by the class of the decline
    they retried, by local hour, day of month and days since failure, rebuilt from the
    simulation's own earlier attempts at most every ``STATS_MAX_AGE`` (10 simulated minutes, as
    the billing job): the smart schedule learns as it would in production, from an empty
    history at the start. Nothing is enforced here beyond what that code does.

Oracle
    Knows the model's probabilities (not the draws). For each payment, after each failure, it
    takes the hourly slots (top of each local hour, and the earliest allowed instant) inside
    the smart schedule's allowed hours and 21-day span, at or after the earliest time the real
    network rules allow (``earliest_allowed``) and the smart schedule's minimum gap; picks
    greedily the slots of highest model probability, at least the gap apart, as many as it has
    attempts left of the smart schedule's 8 (ties to the earliest, never a slot of probability
    0), and attempts at the earliest of them; it then decides again. Hard declines stop it;
    customer-action declines wait for the customer's new payment method as the application
    does. It is an upper bound for a schedule with the smart schedule's budget, not an optimum
    over every policy.

The charge of attempt ``k`` of payment ``i`` succeeds when the ``k``-th draw of
``random.Random(f"charges:{seed}:{i}")`` is below the model's probability at that time: every
strategy sees the same draws (common random numbers), so their differences are the strategies'.
Network-rule violations are counted afterwards by the independent checker
(:mod:`service.simulation.checker`) over every attempt.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo

from service.domain.decline_codes import (
    Classification,
    Decline,
    DeclineClass,
    classify,
)
from service.domain.money import Money
from service.domain.network_rules import (
    DEFAULT_LIMITS,
    NetworkLimits,
    PastAttempt,
    check_attempt,
    earliest_allowed,
    relevant_history,
)
from service.domain.retry_plan import Action, Decision, Method, PlanState, decide
from service.domain.retry_schedule import RetrySchedule, Timing, WalletPolicy
from service.domain.retry_timing import (
    AllowedHours,
    Rate,
    SuccessStats,
    buckets,
    next_allowed,
)
from service.gateways.base import ChargeOutcome, ChargeRequest, OutcomeKind, decline_of
from service.gateways.sandbox import SandboxGateway
from service.jobs.retry_job import STATS_MAX_AGE
from service.retries import HISTORY_WINDOW
from service.simulation.checker import SimAttempt
from service.simulation.model import RecoverabilityModel
from service.simulation.report import (
    Outcome,
    PaymentResult,
    SimPayment,
    SimulationReport,
    StrategyResult,
    summarize,
)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
# When customers act (add a payment method, pay another way): their waking hours.
CUSTOMER_HOURS = AllowedHours(8, 22)
# A plan handling more events than this is a bug in the simulation, not a long plan.
MAX_EVENTS_PER_PLAN = 500

# The schedules migration 0002_retry_plans.sql seeds, as repository.settings.schedule_from_row
# builds them.
FIXED_SCHEDULE = RetrySchedule(
    code="payment-fixed",
    intervals=(DAY, 2 * DAY, 2 * DAY, 2 * DAY),
    max_attempts=5,
    description="Failed payments: days 1, 3, 5 and 7 after the failure, 9:00-20:00 local",
    timing=Timing.FIXED,
    allowed_hours=AllowedHours(9, 20),
    max_span_days=14,
    wallet=WalletPolicy.AFTER_HARD_DECLINE,
)
SMART_SCHEDULE = RetrySchedule(
    code="payment-smart",
    intervals=(timedelta(hours=4),),
    max_attempts=8,
    description="Failed payments: the hours and days that recover best, within 21 days",
    timing=Timing.SMART,
    allowed_hours=AllowedHours(8, 21),
    max_span_days=21,
    wallet=WalletPolicy.AFTER_HARD_DECLINE,
)
ORACLE = "oracle"
SCHEDULES = {s.code: s for s in (SMART_SCHEDULE, FIXED_SCHEDULE)}
STRATEGIES = (SMART_SCHEDULE.code, FIXED_SCHEDULE.code, ORACLE)
DESCRIPTIONS = {
    SMART_SCHEDULE.code: "the real decide() with the seeded smart schedule (8 attempts, 21 "
    "days, 08-21 local, gap 4 h), learning from its own attempts",
    FIXED_SCHEDULE.code: "the real decide() with the seeded fixed schedule (days 1, 3, 5, 7; 5 "
    "attempts, 14 days, 09-20 local)",
    ORACLE: "knows the model: the most probable allowed hourly slots within the smart "
    "schedule's budget and the network rules",
}

Progress = Callable[[str], None]


# ---- the population ------------------------------------------------------------------------


def _pick(rng: random.Random, weights: Sequence[float]) -> int:
    """An index drawn in proportion to ``weights`` (one draw from ``rng``)."""
    u = rng.random() * math.fsum(weights)
    total = 0.0
    for index, weight in enumerate(weights):
        total += weight
        if u < total and weight > 0:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)


def _first_day(u: float, per_day: float) -> int | None:
    """The first day (0, 1, ...) an event of probability ``per_day`` per day happens, from the
    uniform draw ``u``; None when it never does."""
    if per_day <= 0:
        return None
    if per_day >= 1:
        return 0
    return math.floor(math.log1p(-u) / math.log1p(-per_day))


def _customer_time(
    first_failed_at: datetime, day: int | None, u: float, zone: ZoneInfo, end: datetime
) -> datetime | None:
    if day is None:
        return None
    at = next_allowed(first_failed_at + day * DAY + u * DAY, zone, CUSTOMER_HOURS)
    return at if at <= end else None


def generate_population(model: RecoverabilityModel, seed: int, payments: int) -> list[SimPayment]:
    """``payments`` failed payments drawn from ``model``; payment ``i`` depends only on
    (model, seed, i)."""
    population = model.population
    network_shares = [n.share for n in population.networks]
    out = []
    for index in range(payments):
        rng = random.Random(f"population:{seed}:{index}")
        first_failed_at = population.start + rng.random() * population.failures_over_days * DAY
        amount = population.amounts[_pick(rng, [a.share for a in population.amounts])]
        zone_choice = population.time_zones[_pick(rng, [z.share for z in population.time_zones])]
        network = population.networks[_pick(rng, network_shares)].network
        applicable = [d for d in model.declines if d.applies_to(network)]
        if not applicable or not any(d.share > 0 for d in applicable):
            applicable = list(model.declines)
        decline = applicable[_pick(rng, [d.share for d in applicable])]
        new_network = population.networks[_pick(rng, network_shares)].network
        fix_day_u, fix_time_u, paid_day_u, paid_time_u = (rng.random() for _ in range(4))
        zone = ZoneInfo(zone_choice.zone)
        profile = model.profile(decline.code)
        end = first_failed_at + population.horizon
        out.append(
            SimPayment(
                index=index,
                payment_id=f"pay_sim_{index}",
                customer_id=f"cus_sim_{index}",
                amount=Money(amount.currency, amount.minor_units),
                zone=zone,
                network=network,
                decline=decline,
                decline_class=classify(decline.decline_on(network)).decline_class,
                first_failed_at=first_failed_at,
                fix_at=_customer_time(
                    first_failed_at,
                    _first_day(fix_day_u, profile.fix_card_per_day),
                    fix_time_u,
                    zone,
                    end,
                ),
                new_network=new_network,
                paid_elsewhere_at=_customer_time(
                    first_failed_at,
                    _first_day(paid_day_u, profile.pay_another_way_per_day),
                    paid_time_u,
                    zone,
                    end,
                ),
                horizon_end=end,
            )
        )
    return out


# ---- what the strategies share: the gateway and the plan's record --------------------------


class PlanStatus(IntEnum):
    ACTIVE = 0
    RECOVERED = 1
    EXHAUSTED = 2
    PAID_ANOTHER_WAY = 3


@dataclass(slots=True)
class _Plan:
    payment: SimPayment
    rng: random.Random  # the charges' draws
    methods: list[Method]
    method_index: int = 0
    attempts_made: int = 0  # the original failure included, as the plan's attempt_count
    status: PlanStatus = PlanStatus.ACTIVE
    waiting: bool = False  # for a new payment method
    version: int = 0  # bumped by every decision: older queued attempts are stale
    attempts: list[SimAttempt] = field(default_factory=list)
    history: list[PastAttempt] = field(default_factory=list)
    last_class: DeclineClass | None = None
    recovered_at: datetime | None = None
    recovered_with_new_method: bool = False
    guard_reschedules: int = 0
    events: int = 0

    def result(self) -> PaymentResult:
        outcome = {
            PlanStatus.ACTIVE: Outcome.OPEN,
            PlanStatus.RECOVERED: Outcome.RECOVERED,
            PlanStatus.EXHAUSTED: Outcome.EXHAUSTED,
            PlanStatus.PAID_ANOTHER_WAY: Outcome.PAID_ANOTHER_WAY,
        }[self.status]
        return PaymentResult(
            payment=self.payment,
            outcome=outcome,
            attempts=tuple(self.attempts),
            recovered_at=self.recovered_at,
            recovered_with_new_method=self.recovered_with_new_method,
            guard_reschedules=self.guard_reschedules,
        )

    def card_history(self, now: datetime) -> list[PastAttempt]:
        """The plan's cards' history as the application reads it (every simulated card
        belongs to one plan)."""
        return relevant_history(self.history, now, HISTORY_WINDOW)

    def state(self) -> PlanState:
        payment = self.payment
        return PlanState(
            self.attempts_made,
            payment.first_failed_at,
            tuple(self.methods),
            self.method_index,
            payment.zone,
        )


@dataclass(frozen=True, slots=True)
class _Charge:
    plan: _Plan
    at: datetime
    new_method: bool


class _Runner:
    """Charges through the sandbox gateway answering by the model, and records attempts."""

    def __init__(self, model: RecoverabilityModel, seed: int, limits: NetworkLimits) -> None:
        self.model = model
        self.seed = seed
        self.limits = limits
        self.gateway = SandboxGateway(charge_decider=self._answer)
        self._charging: _Charge | None = None
        # decline class retried -> [by hour, by day of month, by days since failure, overall]
        self._counts: dict[DeclineClass, list[dict[int, list[int]]]] = {}
        self._stats: dict[DeclineClass, SuccessStats] = {}
        self._stats_at: datetime | None = None
        self._stats_dirty = True

    def new_plan(self, payment: SimPayment) -> _Plan:
        return _Plan(
            payment=payment,
            rng=random.Random(f"charges:{self.seed}:{payment.index}"),
            methods=[Method(payment.card, payment.network)],
        )

    def probability(self, payment: SimPayment, at: datetime, new_method: bool) -> float:
        if new_method:
            return self.model.new_payment_method.success_probability
        local = at.astimezone(payment.zone)
        days = (at - payment.first_failed_at) // DAY
        return self.model.profile(payment.decline.code).probability(local.hour, local.day, days)

    def _answer(self, request: ChargeRequest) -> ChargeOutcome:
        """The sandbox's charge decider: the model's answer for the charge being made."""
        charge = self._charging
        assert charge is not None
        assert charge.plan.payment.payment_id == request.plan_id
        payment = charge.plan.payment
        p = self.probability(payment, charge.at, charge.new_method)
        if charge.plan.rng.random() < p:
            return ChargeOutcome(OutcomeKind.SUCCEEDED, message=f"simulation: approved (p={p:.3f})")
        if charge.new_method:
            network = payment.new_network
            decline = Decline(self.model.new_payment_method.decline_code, network)
        else:
            network = payment.network
            decline = payment.decline.decline_on(network)
        kind = (
            OutcomeKind.REQUIRES_ACTION
            if decline.code == "authentication_required"
            else OutcomeKind.DECLINED
        )
        return ChargeOutcome(
            kind,
            decline_code=decline.code,
            network=network.value,
            visa_response_code=decline.visa_response_code,
            mc_advice_code=decline.mc_advice_code,
            message=f"simulation: declined (p={p:.3f})",
        )

    def record_failure(self, plan: _Plan) -> Classification:
        """The payment's first failure, as RecordPaymentFailure stores it."""
        payment = plan.payment
        decline = payment.decline.decline_on(payment.network)
        classification = classify(decline)
        self._record(plan, payment.first_failed_at, 0, False, decline, classification, "FAILURE")
        plan.attempts_made = 1
        return classification

    async def charge(self, plan: _Plan, at: datetime) -> Classification | None:
        """Charge the plan's current method at ``at`` as the billing job does: None when it
        succeeded, else the decline's classification (``plan.attempts_made`` is updated)."""
        method = plan.methods[plan.method_index]
        new_method = plan.method_index > 0
        number = plan.attempts_made + 1
        payment = plan.payment
        request = ChargeRequest(
            plan_id=payment.payment_id,
            customer_id=payment.customer_id,
            payment_method=method.payment_method_id,
            amount=payment.amount,
            idempotency_key=f"simulation:{payment.payment_id}:{number}",
            attempt=number,
        )
        self._charging = _Charge(plan, at, new_method)
        try:
            outcome = await self.gateway.charge(request)
        finally:
            self._charging = None
        plan.attempts_made = number
        if outcome.kind is OutcomeKind.SUCCEEDED:
            self._record(plan, at, plan.method_index, True, None, None, "SCHEDULED")
            plan.status = PlanStatus.RECOVERED
            plan.recovered_at = at
            plan.recovered_with_new_method = new_method
            return None
        decline = decline_of(outcome)  # as the billing job maps a gateway outcome
        classification = classify(decline)
        self._record(plan, at, plan.method_index, False, decline, classification, "SCHEDULED")
        if outcome.kind is OutcomeKind.NOT_ATTEMPTED:
            plan.attempts_made -= 1  # never reached the issuer: it does not use an attempt
        return classification

    def _record(
        self,
        plan: _Plan,
        at: datetime,
        method_index: int,
        approved: bool,
        decline: Decline | None,
        classification: Classification | None,
        source: str,
    ) -> None:
        method = plan.methods[method_index]
        retry_of = plan.last_class if source != "FAILURE" else None
        plan.attempts.append(
            SimAttempt(
                at=at,
                card=method.payment_method_id,
                network=method.network,
                approved=approved,
                decline_code="" if decline is None else decline.code,
                visa_response_code="" if decline is None else decline.visa_response_code,
                mc_advice_code="" if decline is None else decline.mc_advice_code,
                source=source,
                retry_of_class="" if retry_of is None else retry_of.value,
            )
        )
        plan.history.append(
            PastAttempt(at, method.payment_method_id, method.network, approved, classification)
        )
        if classification is not None:
            plan.last_class = classification.decline_class
        if retry_of is not None:
            self._learn(retry_of, at, plan.payment, approved)

    def _learn(self, retried: DeclineClass, at: datetime, payment: SimPayment, ok: bool) -> None:
        """Count a retry into the statistics (as the attempt_stats refresh aggregates them)."""
        hour, day, since = buckets(at, payment.first_failed_at, payment.zone)
        counts = self._counts.setdefault(retried, [{}, {}, {}, {}])
        for dimension, key in zip(counts, (hour, day, since, 0), strict=True):
            cell = dimension.setdefault(key, [0, 0])
            cell[0] += int(ok)
            cell[1] += 1
        self._stats_dirty = True

    def stats(self, now: datetime) -> dict[DeclineClass, SuccessStats]:
        """The success statistics as the application reads them: rebuilt from the attempts so
        far when older than STATS_MAX_AGE."""
        if self._stats_dirty and (self._stats_at is None or now - self._stats_at >= STATS_MAX_AGE):
            self._stats = {
                retried: SuccessStats(
                    by_hour={k: Rate(s, a) for k, (s, a) in counts[0].items()},
                    by_day_of_month={k: Rate(s, a) for k, (s, a) in counts[1].items()},
                    by_days_since_failure={k: Rate(s, a) for k, (s, a) in counts[2].items()},
                    overall=Rate(*counts[3].get(0, [0, 0])),
                )
                for retried, counts in self._counts.items()
            }
            self._stats_at = now
            self._stats_dirty = False
        return self._stats


# ---- the schedules: a discrete-event simulation --------------------------------------------


class _Event(IntEnum):
    FAILURE = 0
    NEW_METHOD = 1
    PAID_ANOTHER_WAY = 2
    ATTEMPT = 3


class ScheduleSimulation(_Runner):
    def __init__(
        self,
        model: RecoverabilityModel,
        seed: int,
        limits: NetworkLimits,
        schedule: RetrySchedule,
    ) -> None:
        super().__init__(model, seed, limits)
        self.schedule = schedule
        # (time, sequence, event, payment index, plan version, time as datetime)
        self._queue: list[tuple[float, int, int, int, int, datetime]] = []
        self._sequence = 0

    def _push(self, at: datetime, event: _Event, plan: _Plan) -> None:
        self._sequence += 1
        heapq.heappush(
            self._queue,
            (at.timestamp(), self._sequence, event, plan.payment.index, plan.version, at),
        )

    async def run(
        self, population: Sequence[SimPayment], progress: Progress | None
    ) -> list[PaymentResult]:
        plans = [self.new_plan(p) for p in population]
        for plan in plans:
            payment = plan.payment
            self._push(payment.first_failed_at, _Event.FAILURE, plan)
            if payment.fix_at is not None:
                self._push(payment.fix_at, _Event.NEW_METHOD, plan)
            if payment.paid_elsewhere_at is not None:
                self._push(payment.paid_elsewhere_at, _Event.PAID_ANOTHER_WAY, plan)
        start = min((p.first_failed_at for p in population), default=None)
        reported_day = 0
        while self._queue:
            _, _, kind, index, version, now = heapq.heappop(self._queue)
            plan = plans[index]
            if now > plan.payment.horizon_end or plan.status is not PlanStatus.ACTIVE:
                continue
            plan.events += 1
            if plan.events > MAX_EVENTS_PER_PLAN:
                raise RuntimeError(f"payment {plan.payment.payment_id} never settles")
            if progress is not None and start is not None:
                day = int((now - start) / DAY)
                if day >= reported_day + 10:
                    reported_day = day
                    progress(f"{self.schedule.code}: simulated day {day}")
            if kind == _Event.FAILURE:
                classification = self.record_failure(plan)
                self._decide(plan, classification, plan.payment.decline.code, now, now)
            elif kind == _Event.NEW_METHOD:
                self._new_method(plan, now)
            elif kind == _Event.PAID_ANOTHER_WAY:
                plan.status = PlanStatus.PAID_ANOTHER_WAY
            elif version == plan.version:
                await self._attempt(plan, now)
        return [plan.result() for plan in plans]

    def _decide(
        self,
        plan: _Plan,
        classification: Classification,
        decline_code: str,
        failed_at: datetime,
        now: datetime,
    ) -> None:
        decision = decide(
            schedule=self.schedule,
            state=plan.state(),
            last=classification,
            decline_code=decline_code,
            failed_at=failed_at,
            history=plan.card_history(now),
            stats=self.stats(now),
            now=now,
            limits=self.limits,
        )
        self._apply(plan, decision)

    def _apply(self, plan: _Plan, decision: Decision) -> None:
        """As store_decision: move the plan by the decision."""
        plan.version += 1
        plan.method_index = decision.method_index
        plan.waiting = decision.action is Action.WAIT_FOR_PAYMENT_METHOD
        if decision.action is Action.STOP:
            plan.status = PlanStatus.EXHAUSTED
        elif decision.action is Action.RETRY:
            assert decision.at is not None
            self._push(decision.at, _Event.ATTEMPT, plan)

    def _new_method(self, plan: _Plan, now: datetime) -> None:
        """As add_payment_method: the method joins the wallet; a waiting plan moves to it and
        is due at once."""
        plan.methods.append(Method(plan.payment.new_card, plan.payment.new_network))
        if plan.waiting:
            self._apply(
                plan,
                Decision(
                    Action.RETRY,
                    now,
                    len(plan.methods) - 1,
                    "the customer added a payment method: retry at once",
                    ("customer_action.new_payment_method",),
                ),
            )

    async def _attempt(self, plan: _Plan, now: datetime) -> None:
        """As the billing job: the rules checked again, the charge, the next decision."""
        method = plan.methods[plan.method_index]
        violation = check_attempt(
            method.payment_method_id,
            method.network,
            now,
            plan.card_history(now),
            self.limits,
        )
        if violation is not None:  # as RetryJob._reschedule: decide again from the last failure
            plan.guard_reschedules += 1
            last = next(a for a in reversed(plan.attempts) if not a.approved)
            decline = Decline(
                last.decline_code, last.network, last.visa_response_code, last.mc_advice_code
            )
            self._decide(plan, classify(decline), decline.code, last.at, now)
            return
        classification = await self.charge(plan, now)
        if classification is None:
            return
        code = plan.attempts[-1].decline_code
        self._decide(plan, classification, code, now, now)


# ---- the oracle ----------------------------------------------------------------------------


class OracleSimulation(_Runner):
    def __init__(
        self,
        model: RecoverabilityModel,
        seed: int,
        limits: NetworkLimits,
        budget: RetrySchedule = SMART_SCHEDULE,
    ) -> None:
        super().__init__(model, seed, limits)
        assert budget.span is not None
        assert budget.allowed_hours is not None
        self.max_attempts = budget.max_attempts
        self.span = budget.span
        self.gap = budget.gap_after(1)
        self.hours = budget.allowed_hours

    async def run(
        self, population: Sequence[SimPayment], progress: Progress | None
    ) -> list[PaymentResult]:
        results = []
        for number, payment in enumerate(population, 1):
            results.append(await self._payment(payment))
            if progress is not None and number % 1000 == 0:
                progress(f"{ORACLE}: {number} of {len(population)} payments")
        return results

    async def _payment(self, payment: SimPayment) -> PaymentResult:
        plan = self.new_plan(payment)
        classification = self.record_failure(plan)
        deadline = min(payment.first_failed_at + self.span, payment.horizon_end)
        slots = self._slots(payment)
        failed_at = payment.first_failed_at
        paid_elsewhere = payment.paid_elsewhere_at
        while True:
            if classification.stop_plan or classification.decline_class is DeclineClass.HARD:
                plan.status = PlanStatus.EXHAUSTED
                break
            if classification.decline_class is DeclineClass.CUSTOMER_ACTION:
                # Wait for the customer's new payment method, as the application does.
                fix = payment.fix_at
                if plan.method_index > 0:  # the new method needs the customer too: give up
                    plan.status = PlanStatus.EXHAUSTED
                    break
                if paid_elsewhere is not None and (fix is None or paid_elsewhere <= fix):
                    plan.status = PlanStatus.PAID_ANOTHER_WAY
                    break
                if fix is None:
                    break  # still waiting at the horizon
                plan.methods.append(Method(payment.new_card, payment.new_network))
                plan.method_index = len(plan.methods) - 1
                at: datetime | None = fix  # as the application: at once
            else:
                at = self._choose(plan, failed_at, deadline, slots)
                if at is None:
                    plan.status = PlanStatus.EXHAUSTED
                    break
                if paid_elsewhere is not None and paid_elsewhere <= at:
                    plan.status = PlanStatus.PAID_ANOTHER_WAY
                    break
            assert at is not None
            method = plan.methods[plan.method_index]
            if (
                check_attempt(
                    method.payment_method_id, method.network, at, plan.card_history(at), self.limits
                )
                is not None
            ):
                plan.guard_reschedules += 1  # the oracle chose a time the rules forbid: a bug
                plan.status = PlanStatus.EXHAUSTED
                break
            declined = await self.charge(plan, at)
            if declined is None:
                break
            classification, failed_at = declined, at
        return plan.result()

    def _slots(self, payment: SimPayment) -> list[tuple[datetime, float]]:
        """Every hourly slot in the allowed hours within the span, with the model's probability
        on the failed card."""
        start = payment.first_failed_at
        end = min(start + self.span, payment.horizon_end)
        return [
            (at, self.probability(payment, at, False))
            for at in self._hours(start, end, payment.zone)
        ]

    def _hours(self, start: datetime, end: datetime, zone: ZoneInfo) -> list[datetime]:
        """The top of every local hour in (start, end] inside the allowed hours."""
        out = []
        hour = datetime.fromtimestamp(math.floor(start.timestamp() / 3600) * 3600, start.tzinfo)
        while hour <= end:
            offset = hour.astimezone(zone).utcoffset() or timedelta(0)
            candidate = hour + (-offset) % HOUR
            local = candidate.astimezone(zone)
            if start < candidate <= end and local.minute == 0 and self.hours.contains(local.hour):
                out.append(candidate)
            hour += HOUR
        return out

    def _choose(
        self,
        plan: _Plan,
        failed_at: datetime,
        deadline: datetime,
        slots: list[tuple[datetime, float]],
    ) -> datetime | None:
        """The next attempt: the earliest of the greedily chosen most probable slots."""
        left = self.max_attempts - plan.attempts_made
        if left <= 0 or failed_at >= deadline:
            return None
        method = plan.methods[plan.method_index]
        earliest = earliest_allowed(
            method.payment_method_id,
            method.network,
            failed_at + self.gap,
            plan.card_history(failed_at),
            self.limits,
        )
        if earliest is None or earliest > deadline:
            return None
        payment = plan.payment
        new_method = plan.method_index > 0
        if new_method:
            first = next_allowed(earliest, payment.zone, self.hours)
            return first if first <= deadline else None
        candidates = [(at, p) for at, p in slots if at >= earliest and p > 0]
        if self.hours.contains(earliest.astimezone(payment.zone).hour):
            p = self.probability(payment, earliest, False)
            if p > 0:
                candidates.append((earliest, p))
        candidates.sort(key=lambda c: (-c[1], c[0]))
        chosen: list[datetime] = []
        for at, _ in candidates:
            if all(abs(at - other) >= self.gap for other in chosen):
                chosen.append(at)
                if len(chosen) == left:
                    break
        return min(chosen) if chosen else None


# ---- running it ----------------------------------------------------------------------------


async def run_simulation(
    model: RecoverabilityModel,
    *,
    seed: int = 1,
    payments: int | None = None,
    strategies: Sequence[str] = STRATEGIES,
    limits: NetworkLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> SimulationReport:
    """Simulate ``payments`` (default: the model's) failed payments under each strategy."""
    count = model.population.payments if payments is None else payments
    if count < 1:
        raise ValueError("payments must be at least 1")
    population = generate_population(model, seed, count)
    results: list[StrategyResult] = []
    for strategy in strategies:
        began = time.perf_counter()
        if strategy == ORACLE:
            runner: ScheduleSimulation | OracleSimulation = OracleSimulation(model, seed, limits)
        elif strategy in SCHEDULES:
            runner = ScheduleSimulation(model, seed, limits, SCHEDULES[strategy])
        else:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        outcome = await runner.run(population, progress)
        results.append(summarize(strategy, DESCRIPTIONS[strategy], outcome))
        if progress is not None:
            progress(f"{strategy}: done in {time.perf_counter() - began:.1f} s")
    return SimulationReport(model=model, seed=seed, payments=count, results=tuple(results))


def simulate(
    model: RecoverabilityModel,
    *,
    seed: int = 1,
    payments: int | None = None,
    strategies: Sequence[str] = STRATEGIES,
    limits: NetworkLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
) -> SimulationReport:
    """:func:`run_simulation` from synchronous code."""
    return asyncio.run(
        run_simulation(
            model,
            seed=seed,
            payments=payments,
            strategies=strategies,
            limits=limits,
            progress=progress,
        )
    )
