"""Retry plans: their states, and the decision taken after every failure.

``decide`` is a pure function of (schedule, plan state, the last decline, the cards' attempt
history, observed success rates, now). It returns what to do next, when, with which payment
method, and why in words and data, so an operator can always ask "why this time?". The card
networks' rules are checked here when the time is chosen, and again by the billing job right
before an attempt runs (``network_rules.check_attempt``): they are a guard, not a hint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from service.domain.decline_codes import CardNetwork, Classification, DeclineClass
from service.domain.network_rules import DEFAULT_LIMITS, CardRules, NetworkLimits, PastAttempt
from service.domain.retry_schedule import RetrySchedule, Timing, WalletPolicy
from service.domain.retry_timing import (
    DEFAULT_PRIOR,
    PAYDAY_PRIOR,
    SlotChoice,
    SuccessStats,
    fixed_slot,
    smart_slot,
)
from service.errors import IllegalTransition


class PlanStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    RECOVERED = "RECOVERED"
    EXHAUSTED = "EXHAUSTED"
    CANCELED = "CANCELED"


P = PlanStatus
PLAN_TRANSITIONS: dict[PlanStatus, frozenset[PlanStatus]] = {
    P.ACTIVE: frozenset({P.PAUSED, P.RECOVERED, P.EXHAUSTED, P.CANCELED}),
    P.PAUSED: frozenset({P.ACTIVE, P.RECOVERED, P.EXHAUSTED, P.CANCELED}),
    P.RECOVERED: frozenset(),
    P.EXHAUSTED: frozenset(),
    P.CANCELED: frozenset(),
}
OPEN_PLAN_STATUSES = frozenset({P.ACTIVE, P.PAUSED})


def check_plan_transition(current: PlanStatus, target: PlanStatus) -> None:
    if target not in PLAN_TRANSITIONS[current]:
        raise IllegalTransition("retry plan", current.value, target.value)


def plan_sources_of(target: PlanStatus) -> frozenset[PlanStatus]:
    return frozenset(s for s, targets in PLAN_TRANSITIONS.items() if target in targets)


class Action(StrEnum):
    RETRY = "RETRY"
    WAIT_FOR_PAYMENT_METHOD = "WAIT_FOR_PAYMENT_METHOD"
    STOP = "STOP"


@dataclass(frozen=True, slots=True)
class Method:
    payment_method_id: str
    network: CardNetwork


@dataclass(frozen=True, slots=True)
class PlanState:
    attempts_made: int  # the original failure included
    first_failed_at: datetime
    methods: tuple[Method, ...]
    method_index: int
    zone: ZoneInfo


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    at: datetime | None
    method_index: int
    reason: str
    rule_ids: tuple[str, ...] = ()
    data: dict[str, object] = field(default_factory=dict)


# Smart slots are searched at most this far past the earliest allowed time.
SMART_HORIZON = timedelta(days=7)
# How often the chosen time may be pushed by a rule before the engine gives up on the card.
_MAX_RULE_PUSHES = 5


def _stop(reason: str, state: PlanState, rules: Sequence[str], **data: object) -> Decision:
    return Decision(Action.STOP, None, state.method_index, reason, tuple(rules), dict(data))


def _slot(
    schedule: RetrySchedule,
    earliest: datetime,
    latest: datetime,
    state: PlanState,
    last: Classification,
    stats: Mapping[DeclineClass, SuccessStats],
    code: str,
    *,
    at_once: bool = False,
) -> SlotChoice | None:
    if at_once:  # another payment method, tried as soon as the allowed hours permit
        return fixed_slot(earliest=earliest, zone=state.zone, hours=schedule.allowed_hours)
    if schedule.timing is Timing.SMART:
        prior = PAYDAY_PRIOR if code == "insufficient_funds" else DEFAULT_PRIOR
        return smart_slot(
            earliest=earliest,
            latest=min(latest, earliest + SMART_HORIZON),
            first_failed_at=state.first_failed_at,
            zone=state.zone,
            hours=schedule.allowed_hours,
            stats=stats.get(last.decline_class) or SuccessStats.empty(),
            prior=prior,
        )
    return fixed_slot(
        earliest=earliest,
        zone=state.zone,
        hours=schedule.allowed_hours,
        schedule=schedule,
        attempts_made=state.attempts_made,
    )


def _next_method(state: PlanState, schedule: RetrySchedule, blocked: set[int]) -> int | None:
    if schedule.wallet is WalletPolicy.NEVER:
        return None
    for offset in range(1, len(state.methods)):
        index = (state.method_index + offset) % len(state.methods)
        if index not in blocked:
            return index
    return None


def decide(
    *,
    schedule: RetrySchedule,
    state: PlanState,
    last: Classification,
    decline_code: str,
    failed_at: datetime,
    history: Sequence[PastAttempt],
    stats: Mapping[DeclineClass, SuccessStats],
    now: datetime,
    limits: NetworkLimits = DEFAULT_LIMITS,
) -> Decision:
    """What to do after the failure ``last`` (at ``failed_at``) of attempt number
    ``state.attempts_made``."""
    rules: list[str] = list(last.rule_ids)
    reasons: list[str] = [last.reason]
    if last.stop_plan:
        return _stop(f"{last.reason}: the plan stops", state, rules)
    if state.attempts_made >= schedule.max_attempts:
        return _stop(
            f"{last.reason}; the schedule {schedule.code} allows {schedule.max_attempts} "
            f"attempts and {state.attempts_made} were made",
            state,
            [*rules, "schedule.max_attempts"],
            attempts_made=state.attempts_made,
        )
    span = schedule.span
    deadline = state.first_failed_at + span if span else None
    if deadline is not None and now >= deadline:
        return _stop(
            f"{last.reason}; the schedule's {schedule.max_span_days}-day span ended on "
            f"{deadline.isoformat()}",
            state,
            [*rules, "schedule.max_span_days"],
        )

    index = state.method_index
    blocked: set[int] = set()
    must_switch = last.decline_class is not DeclineClass.SOFT or last.never_retry_card
    if must_switch:
        blocked.add(index)
        switched_to = _next_method(state, schedule, blocked)
        if switched_to is None:
            if last.decline_class is DeclineClass.CUSTOMER_ACTION and not last.never_retry_card:
                return Decision(
                    Action.WAIT_FOR_PAYMENT_METHOD,
                    None,
                    index,
                    f"{last.reason}; the customer is notified and the payment is retried as "
                    "soon as they add a payment method",
                    tuple(rules),
                )
            return _stop(f"{last.reason}; no other payment method may be tried", state, rules)
        reasons.append(
            f"switching to payment method {state.methods[switched_to].payment_method_id}"
        )
        index = switched_to
    elif schedule.wallet is WalletPolicy.ROTATE and len(state.methods) > 1:
        index = (index + 1) % len(state.methods)
        reasons.append(f"rotating to payment method {state.methods[index].payment_method_id}")

    forced = must_switch  # a card that may not be retried: the next one is tried at once
    for _ in range(len(state.methods)):
        method = state.methods[index]
        switched = index != state.method_index
        gap = timedelta(0) if forced else schedule.gap_after(state.attempts_made)
        earliest = max(failed_at + gap, now)
        data: dict[str, object] = {
            "decline_class": last.decline_class.value,
            "attempts_made": state.attempts_made,
            "max_attempts": schedule.max_attempts,
            "payment_method_id": method.payment_method_id,
            "gap_seconds": int(gap.total_seconds()),
        }
        if not switched and last.earliest_retry_after is not None:
            wait_until = failed_at + last.earliest_retry_after
            if wait_until > earliest:
                earliest = wait_until
                reasons.append(f"the network asks to wait until {wait_until.isoformat()}")
        latest = deadline or earliest + SMART_HORIZON
        at = _choose_time(
            schedule,
            method,
            earliest,
            latest,
            state,
            last,
            stats,
            history,
            limits,
            decline_code,
            rules,
            reasons,
            data,
            at_once=forced,
        )
        if at is not None:
            if deadline is not None and at > deadline:
                return _stop(
                    "; ".join(
                        [
                            *reasons,
                            f"the next allowed time is after the schedule's "
                            f"{schedule.max_span_days}-day span",
                        ]
                    ),
                    state,
                    [*rules, "schedule.max_span_days"],
                    **data,
                )
            return Decision(Action.RETRY, at, index, "; ".join(reasons), tuple(rules), data)
        blocked.add(index)
        following = _next_method(
            PlanState(state.attempts_made, state.first_failed_at, state.methods, index, state.zone),
            schedule,
            blocked,
        )
        if following is None:
            if last.decline_class is DeclineClass.CUSTOMER_ACTION and not last.never_retry_card:
                return Decision(
                    Action.WAIT_FOR_PAYMENT_METHOD,
                    None,
                    state.method_index,
                    "; ".join(
                        [
                            *reasons,
                            "the customer is notified and the payment is retried as "
                            "soon as they add a payment method",
                        ]
                    ),
                    tuple(rules),
                    data,
                )
            return _stop("; ".join(reasons), state, rules, **data)
        index = following
        reasons.append(f"switching to payment method {state.methods[index].payment_method_id}")
    return _stop("; ".join(reasons), state, rules)


def _choose_time(
    schedule: RetrySchedule,
    method: Method,
    earliest: datetime,
    latest: datetime,
    state: PlanState,
    last: Classification,
    stats: Mapping[DeclineClass, SuccessStats],
    history: Sequence[PastAttempt],
    limits: NetworkLimits,
    decline_code: str,
    rules: list[str],
    reasons: list[str],
    data: dict[str, object],
    *,
    at_once: bool = False,
) -> datetime | None:
    """A time in [earliest, latest] that the schedule likes and the network rules allow, or
    None when the rules never allow this card again (rules and reasons say why)."""
    # The card's history is sorted once for every question asked about it below.
    card_rules = CardRules(method.payment_method_id, method.network, history, limits)
    allowed: datetime | None = earliest
    violation = card_rules.check(earliest)
    if violation is not None:
        # A rule decides the earliest time (or forbids the card): say which.
        rules.append(violation.rule_id)
        reasons.append(violation.message)
        allowed = violation.retry_at  # the rules' earliest allowed time, None: never
    if allowed is None:
        return None
    passed = allowed  # the rules allow it: a slot that is this same datetime needs no new check
    for _ in range(_MAX_RULE_PUSHES):
        slot = _slot(
            schedule,
            allowed,
            max(latest, allowed),
            state,
            last,
            stats,
            decline_code,
            at_once=at_once,
        )
        if slot is None:
            reasons.append("no allowed hour before the end of the window")
            return None
        violation = None if slot.at is passed else card_rules.check(slot.at)
        if violation is None:
            reasons.append(slot.reason)
            data["slot"] = slot.data
            data["score"] = round(slot.score, 4)
            return slot.at
        rules.append(violation.rule_id)
        reasons.append(violation.message)
        if violation.retry_at is None:
            return None
        allowed = max(violation.retry_at, slot.at)
    return None
