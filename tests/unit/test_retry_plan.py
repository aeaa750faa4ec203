"""Retry plans: ``decide`` case by case (schedule, wallet, network rules, timing, the words and
data of every decision) and the plan's status transitions, every pair of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.domain.decline_codes import CardNetwork, Classification, Decline, classify
from service.domain.network_rules import PastAttempt
from service.domain.retry_plan import (
    OPEN_PLAN_STATUSES,
    Action,
    Decision,
    Method,
    PlanState,
    PlanStatus,
    check_plan_transition,
    decide,
    plan_sources_of,
)
from service.domain.retry_schedule import RetrySchedule, Timing, WalletPolicy
from service.domain.retry_timing import AllowedHours, Rate, SuccessStats
from service.errors import FailedPrecondition, IllegalTransition

VISA, MC, OTHER = CardNetwork.VISA, CardNetwork.MASTERCARD, CardNetwork.OTHER
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
TOKYO = ZoneInfo("Asia/Tokyo")
UTC_ZONE = ZoneInfo("UTC")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday; 11:00 in Berlin, 05:00 in New York

CARD_A = Method("pm_a", VISA)
CARD_B = Method("pm_b", MC)
CARD_C = Method("pm_c", OTHER)

SOFT = Decline("insufficient_funds", VISA, "51")
SOFT_MC = Decline("do_not_honor", MC)
HARD = Decline("stolen_card", VISA)
CUSTOMER = Decline("expired_card", VISA)
CATEGORY_1 = Decline("generic_decline", VISA, "04")


def schedule(
    intervals: Sequence[timedelta] = (DAY,),
    *,
    max_attempts: int = 8,
    hours: AllowedHours | None = None,
    span_days: int | None = None,
    wallet: WalletPolicy = WalletPolicy.AFTER_HARD_DECLINE,
    timing: Timing = Timing.FIXED,
) -> RetrySchedule:
    return RetrySchedule(
        "test-schedule",
        tuple(intervals),
        max_attempts,
        timing=timing,
        allowed_hours=hours,
        max_span_days=span_days,
        wallet=wallet,
    )


def plan_state(
    *,
    attempts_made: int = 1,
    first_failed_at: datetime = T0,
    methods: Sequence[Method] = (CARD_A,),
    index: int = 0,
    zone: ZoneInfo = BERLIN,
) -> PlanState:
    return PlanState(attempts_made, first_failed_at, tuple(methods), index, zone)


def declined(at: datetime, decline: Decline, card: Method = CARD_A) -> PastAttempt:
    return PastAttempt(at, card.payment_method_id, card.network, False, classify(decline))


@dataclass(frozen=True)
class Case:
    """One call of ``decide``: the decline happened at ``failed_at`` and is already in the
    history (as the application stores the attempt before deciding)."""

    decline: Decline = SOFT
    schedule: RetrySchedule = field(default_factory=schedule)
    state: PlanState = field(default_factory=plan_state)
    failed_at: datetime = T0
    now: datetime | None = None  # failed_at when None
    earlier: tuple[PastAttempt, ...] = ()
    stats: SuccessStats | None = None  # for the decline's class

    def classification(self) -> Classification:
        return classify(self.decline)

    def run(self) -> Decision:
        card = self.state.methods[self.state.method_index]
        history = [*self.earlier, declined(self.failed_at, self.decline, card)]
        return decide(
            schedule=self.schedule,
            state=self.state,
            last=self.classification(),
            decline_code=self.decline.code,
            failed_at=self.failed_at,
            history=history,
            stats={} if self.stats is None else {self.classification().decline_class: self.stats},
            now=self.now or self.failed_at,
        )


def local_hour(at: datetime, zone: ZoneInfo) -> int:
    return at.astimezone(zone).hour


def explained(decision: Decision, case: Case, *codes: str) -> None:
    """Every decision says why in words naming the decline's codes; a retry also in data."""
    assert decision.reason.strip()
    for code in codes or (case.decline.code,):
        assert code in decision.reason, (code, decision.reason)
    if decision.action is Action.RETRY:
        assert decision.data["decline_class"] == case.classification().decline_class.value
        assert decision.data["attempts_made"] == case.state.attempts_made
        assert decision.at is not None
        assert decision.at.utcoffset() == timedelta(0)
    else:
        assert decision.at is None


# ---- a soft decline on a fixed schedule ----------------------------------------------------


@dataclass(frozen=True)
class FixedCase:
    name: str
    zone: ZoneInfo
    hours: AllowedHours | None
    failed_at: datetime
    intervals: tuple[timedelta, ...]
    attempts_made: int
    expected: datetime  # worked out by hand from the zone's offsets


FIXED_CASES = [
    FixedCase(
        "inside the hours: failed_at + gap as is",
        BERLIN,
        AllowedHours(9, 17),
        T0,  # 11:00 CET
        (DAY,),
        1,
        T0 + DAY,
    ),
    FixedCase(
        "after the hours: the next morning",
        BERLIN,
        AllowedHours(9, 17),
        datetime(2026, 11, 2, 20, 0, tzinfo=UTC),  # 21:00 CET; +1 day is 21:00 again
        (DAY,),
        1,
        datetime(2026, 11, 4, 8, 0, tzinfo=UTC),  # 09:00 CET
    ),
    FixedCase(
        "a window across midnight",
        NEW_YORK,
        AllowedHours(22, 6),
        datetime(2026, 11, 2, 15, 0, tzinfo=UTC),  # 10:00 EST; +6 h is 16:00 EST
        (6 * HOUR,),
        1,
        datetime(2026, 11, 3, 3, 0, tzinfo=UTC),  # 22:00 EST
    ),
    FixedCase(
        "the spring-forward hour does not exist: the next allowed hour",
        BERLIN,
        AllowedHours(2, 4),
        datetime(2026, 3, 28, 0, 30, tzinfo=UTC),  # 01:30 CET; +1 day is 01:30 CET on the 29th
        (DAY,),
        1,
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST (02:00 was skipped)
    ),
    FixedCase(
        "a zone 45 minutes off the hour",
        KATHMANDU,
        AllowedHours(9, 10),
        datetime(2026, 11, 2, 0, 0, tzinfo=UTC),  # 05:45 local; +1 h is 06:45
        (HOUR,),
        1,
        datetime(2026, 11, 2, 3, 15, tzinfo=UTC),  # 09:00 local
    ),
    FixedCase("no hours: any time", TOKYO, None, T0, (90 * MINUTE,), 1, T0 + 90 * MINUTE),
    FixedCase(
        "the n-th interval after n attempts", UTC_ZONE, None, T0, (HOUR, DAY, 3 * DAY), 2, T0 + DAY
    ),
    FixedCase(
        "the last interval repeats", UTC_ZONE, None, T0, (HOUR, DAY, 3 * DAY), 6, T0 + 3 * DAY
    ),
]


@pytest.mark.parametrize("fixed", FIXED_CASES, ids=[c.name for c in FIXED_CASES])
def test_a_soft_decline_on_a_fixed_schedule_retries_at_the_gap_moved_into_the_hours(
    fixed: FixedCase,
) -> None:
    case = Case(
        schedule=schedule(fixed.intervals, max_attempts=10, hours=fixed.hours),
        state=plan_state(
            attempts_made=fixed.attempts_made, first_failed_at=fixed.failed_at, zone=fixed.zone
        ),
        failed_at=fixed.failed_at,
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == fixed.expected
    assert decision.method_index == 0
    gap = case.schedule.gap_after(fixed.attempts_made)
    assert decision.at >= fixed.failed_at + gap
    if fixed.hours is not None:
        assert fixed.hours.contains(local_hour(decision.at, fixed.zone))
    assert decision.data["gap_seconds"] == int(gap.total_seconds())
    explained(decision, case)


def test_a_late_decision_is_never_in_the_past() -> None:
    # decided again long after the failure (a plan resumed): now, moved into the hours
    now = datetime(2026, 11, 10, 19, 30, tzinfo=UTC)  # 20:30 CET
    case = Case(schedule=schedule(hours=AllowedHours(9, 17)), now=now)
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == datetime(2026, 11, 11, 8, 0, tzinfo=UTC)  # 09:00 CET
    explained(decision, case)


# ---- the end of the schedule ----------------------------------------------------------------


@pytest.mark.parametrize("made", [5, 6, 40])
def test_attempts_exhausted_stop_the_plan(made: int) -> None:
    case = Case(schedule=schedule(max_attempts=5), state=plan_state(attempts_made=made))
    decision = case.run()
    assert decision.action is Action.STOP
    assert "schedule.max_attempts" in decision.rule_ids
    assert decision.data["attempts_made"] == made
    assert "5 attempts" in decision.reason
    explained(decision, case)


def test_one_attempt_left_is_still_a_retry() -> None:
    case = Case(schedule=schedule(max_attempts=5), state=plan_state(attempts_made=4))
    decision = case.run()
    assert decision.action is Action.RETRY
    assert "schedule.max_attempts" not in decision.rule_ids


@pytest.mark.parametrize("late", [timedelta(0), MINUTE, 30 * DAY])
def test_the_span_over_stops_the_plan(late: timedelta) -> None:
    failed_at = T0 + 3 * DAY + late
    case = Case(
        schedule=schedule(span_days=3), state=plan_state(attempts_made=2), failed_at=failed_at
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert "schedule.max_span_days" in decision.rule_ids
    explained(decision, case)


def test_a_next_slot_past_the_span_stops_the_plan() -> None:
    # failed on day 2 of a 3-day span; the 2-day interval would land on day 4
    case = Case(
        schedule=schedule((2 * DAY,), span_days=3),
        state=plan_state(attempts_made=2),
        failed_at=T0 + 2 * DAY,
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert "schedule.max_span_days" in decision.rule_ids
    explained(decision, case)


def test_a_slot_exactly_at_the_end_of_the_span_is_allowed() -> None:
    case = Case(
        schedule=schedule((DAY,), span_days=3),
        state=plan_state(attempts_made=2),
        failed_at=T0 + 2 * DAY,
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == T0 + 3 * DAY


# ---- hard declines, customer action and the wallet -----------------------------------------


def test_a_hard_decline_without_a_wallet_stops() -> None:
    case = Case(decline=HARD)
    decision = case.run()
    assert decision.action is Action.STOP
    assert "stripe.code.stolen_card" in decision.rule_ids
    explained(decision, case)


@pytest.mark.parametrize(
    ("decline", "code"),
    [(HARD, "stolen_card"), (CATEGORY_1, "04"), (Decline("do_not_honor", MC, "", "03"), "03")],
)
def test_a_hard_decline_with_a_wallet_retries_the_next_method_at_once(
    decline: Decline, code: str
) -> None:
    first = Method("pm_first", decline.network)
    case = Case(decline=decline, state=plan_state(methods=(first, CARD_C)))
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 1
    assert decision.at == T0  # at once: no interval on a new method
    assert decision.data["payment_method_id"] == CARD_C.payment_method_id
    assert decision.data["gap_seconds"] == 0
    explained(decision, case, code)


def test_the_switch_at_once_waits_for_the_allowed_hours() -> None:
    failed_at = datetime(2026, 11, 2, 22, 0, tzinfo=UTC)  # 23:00 CET
    case = Case(
        decline=HARD,
        schedule=schedule(hours=AllowedHours(8, 20)),
        state=plan_state(methods=(CARD_A, CARD_B), first_failed_at=failed_at),
        failed_at=failed_at,
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 1
    assert decision.at == datetime(2026, 11, 3, 7, 0, tzinfo=UTC)  # 08:00 CET
    explained(decision, case)


def test_a_hard_decline_with_wallet_policy_never_stops() -> None:
    case = Case(
        decline=HARD,
        schedule=schedule(wallet=WalletPolicy.NEVER),
        state=plan_state(methods=(CARD_A, CARD_B)),
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert decision.method_index == 0
    explained(decision, case)


def test_a_hard_decline_wraps_around_the_wallet() -> None:
    case = Case(
        decline=Decline("stolen_card", OTHER),
        state=plan_state(methods=(CARD_A, CARD_B, CARD_C), index=2),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 0


def test_customer_action_without_another_method_waits_for_one() -> None:
    case = Case(decline=CUSTOMER)
    decision = case.run()
    assert decision.action is Action.WAIT_FOR_PAYMENT_METHOD
    assert decision.method_index == 0
    explained(decision, case)


def test_customer_action_with_wallet_policy_never_waits_for_a_new_method() -> None:
    case = Case(
        decline=CUSTOMER,
        schedule=schedule(wallet=WalletPolicy.NEVER),
        state=plan_state(methods=(CARD_A, CARD_B)),
    )
    assert case.run().action is Action.WAIT_FOR_PAYMENT_METHOD


def test_customer_action_with_a_wallet_switches_at_once() -> None:
    case = Case(decline=CUSTOMER, state=plan_state(methods=(CARD_A, CARD_B)))
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 1
    assert decision.at == T0
    explained(decision, case)


def test_customer_action_with_only_a_dead_wallet_card_waits_for_a_new_method() -> None:
    """Fixed: a customer-action decline waits for a new payment method when the wallet has no
    other card, but when its only other card is dead by a network rule (here a Visa category-1
    decline yesterday) ``decide`` switches to it, finds it forbidden and STOPs: the plan is
    EXHAUSTED (and the dunning final action runs) although the customer could still fix it."""
    dead = Method("pm_dead", VISA)
    case = Case(
        decline=Decline("expired_card", MC),
        state=plan_state(attempts_made=2, methods=(dead, CARD_B), index=1),
        earlier=(declined(T0 - DAY, CATEGORY_1, dead),),
    )
    decision = case.run()
    assert decision.action is Action.WAIT_FOR_PAYMENT_METHOD, decision
    assert decision.method_index == 1


def test_a_switch_at_once_does_not_claim_the_interval() -> None:
    """Fixed (explainability): a retry on the next method runs at once (gap 0), but the reason
    says "attempt 2 of 8 after interval 1 of 1 (1 day)", which is not why this time."""
    case = Case(decline=HARD, state=plan_state(methods=(CARD_A, CARD_B)))
    decision = case.run()
    assert decision.at == T0
    assert decision.data["gap_seconds"] == 0
    assert "after interval" not in decision.reason, decision.reason


def test_rotate_moves_to_the_next_method_after_a_soft_decline() -> None:
    case = Case(
        schedule=schedule(wallet=WalletPolicy.ROTATE),
        state=plan_state(methods=(CARD_A, CARD_B, CARD_C), index=2),
        decline=Decline("insufficient_funds", OTHER),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 0
    assert "rotating to payment method pm_a" in decision.reason
    explained(decision, case)


def test_after_hard_decline_policy_stays_on_the_card_after_a_soft_decline() -> None:
    case = Case(state=plan_state(methods=(CARD_A, CARD_B)))
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 0
    assert decision.at == T0 + DAY


def test_rotate_does_not_return_to_a_card_before_its_interval() -> None:
    """Fixed: with ROTATE every rotation counts as a switch to a new method, which runs at once
    (gap 0), so two cards alternate with no interval at all: card A is declined at T0, card B
    is tried at once and declined, and card A is tried again at once -- its soft decline
    seconds ago ignored and the whole plan's attempts spent within minutes."""
    rotate = schedule((DAY,), wallet=WalletPolicy.ROTATE)
    on_a = Case(schedule=rotate, state=plan_state(methods=(CARD_A, CARD_B)))
    to_b = on_a.run()
    assert to_b.action is Action.RETRY
    assert to_b.method_index == 1
    assert to_b.at is not None
    # card B is declined (soft) when it is tried; the plan rotates back to card A
    on_b = Case(
        decline=SOFT_MC,
        schedule=rotate,
        state=plan_state(attempts_made=2, methods=(CARD_A, CARD_B), index=1),
        failed_at=to_b.at,
        earlier=(declined(T0, SOFT, CARD_A),),
    )
    back_to_a = on_b.run()
    assert back_to_a.action is Action.RETRY
    assert back_to_a.method_index == 0
    assert back_to_a.at is not None
    # card A's own soft decline at T0 asked for the schedule's 1-day interval
    assert back_to_a.at >= T0 + rotate.gap_after(2), back_to_a


# ---- network rules -------------------------------------------------------------------------

MAC_WAITS = {
    "24": HOUR,
    "25": 24 * HOUR,
    "26": 2 * DAY,
    "27": 4 * DAY,
    "28": 6 * DAY,
    "29": 8 * DAY,
    "30": 10 * DAY,
}


@pytest.mark.parametrize("mac", sorted(MAC_WAITS))
def test_a_mastercard_wait_holds_the_retry(mac: str) -> None:
    decline = Decline("do_not_honor", MC, "", mac)
    case = Case(
        decline=decline,
        schedule=schedule((30 * MINUTE,)),
        state=plan_state(methods=(CARD_B,)),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == T0 + MAC_WAITS[mac]
    assert f"mastercard.mac.{mac}" in decision.rule_ids
    assert "wait" in decision.reason
    explained(decision, case, mac)


@pytest.mark.parametrize("mac", sorted(MAC_WAITS))
def test_a_mastercard_wait_then_the_allowed_hours(mac: str) -> None:
    decline = Decline("do_not_honor", MC, "", mac)
    failed_at = datetime(2026, 11, 2, 21, 10, tzinfo=UTC)  # 22:10 CET
    hours = AllowedHours(10, 12)
    case = Case(
        decline=decline,
        schedule=schedule((MINUTE,), hours=hours),
        state=plan_state(methods=(CARD_B,), first_failed_at=failed_at),
        failed_at=failed_at,
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at is not None
    assert decision.at >= failed_at + MAC_WAITS[mac]
    assert hours.contains(local_hour(decision.at, BERLIN))
    assert decision.at < failed_at + MAC_WAITS[mac] + DAY


def test_a_mastercard_wait_longer_than_the_span_stops() -> None:
    case = Case(
        decline=Decline("do_not_honor", MC, "", "30"),
        schedule=schedule((HOUR,), span_days=5),
        state=plan_state(methods=(CARD_B,)),
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert "schedule.max_span_days" in decision.rule_ids


@pytest.mark.parametrize(
    "decline",
    [
        Decline("insufficient_funds", MC, "", "21"),
        Decline("generic_decline", VISA, "R0"),
        Decline("generic_decline", VISA, "R1"),
        Decline("generic_decline", VISA, "R3"),
        Decline("insufficient_funds", OTHER, "", "21"),
    ],
)
def test_a_stopped_recurring_payment_stops_the_plan_whatever_the_wallet(decline: Decline) -> None:
    first = Method("pm_first", decline.network)
    case = Case(
        decline=decline,
        schedule=schedule(wallet=WalletPolicy.ROTATE),
        state=plan_state(methods=(first, CARD_B, CARD_C)),
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert "stops" in decision.reason
    explained(decision, case, decline.mc_advice_code or decline.visa_response_code)


@pytest.mark.parametrize("code", ["04", "07", "12", "15", "41", "43", "46", "57", "14", "62"])
def test_visa_category_1_never_retries_that_card(code: str) -> None:
    decline = Decline("generic_decline", VISA, code)
    alone = Case(decline=decline)
    assert alone.run().action is Action.STOP
    with_wallet = Case(decline=decline, state=plan_state(methods=(CARD_A, CARD_B)))
    decision = with_wallet.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 1
    assert "visa.category1" in decision.rule_ids
    explained(decision, with_wallet, code)


def test_a_card_declined_for_good_earlier_is_skipped_when_switching() -> None:
    # card B had a Visa category-1 decline yesterday; card A is now declined hard
    card_b = Method("pm_b_visa", VISA)
    case = Case(
        decline=HARD,
        state=plan_state(attempts_made=2, methods=(CARD_A, card_b, CARD_C)),
        earlier=(declined(T0 - DAY, CATEGORY_1, card_b),),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 2
    # and with no third card the plan stops, naming the rule
    only_two = Case(
        decline=HARD,
        state=plan_state(attempts_made=2, methods=(CARD_A, card_b)),
        earlier=(declined(T0 - DAY, CATEGORY_1, card_b),),
    )
    stopped = only_two.run()
    assert stopped.action is Action.STOP
    assert "visa.category1" in stopped.rule_ids


def test_rotate_skips_a_card_declined_for_good_and_keeps_the_interval() -> None:
    card_b = Method("pm_b_visa", VISA)
    case = Case(
        schedule=schedule((DAY,), wallet=WalletPolicy.ROTATE),
        state=plan_state(attempts_made=2, methods=(CARD_A, card_b)),
        earlier=(declined(T0 - HOUR, CATEGORY_1, card_b),),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.method_index == 0
    assert decision.at == T0 + DAY


def visa_full_history(first: datetime, spread: timedelta) -> list[PastAttempt]:
    """The card's first decline at ``first`` and 14 more reattempts over ``spread``; the 15th
    reattempt is the failure being decided."""
    return [declined(first, SOFT)] + [
        declined(first + HOUR + spread * i / 14, SOFT) for i in range(14)
    ]


def test_the_visa_reattempt_limit_moves_the_retry_until_the_window_frees_up() -> None:
    first = T0 - 10 * DAY
    earlier = visa_full_history(first, 5 * DAY)
    oldest_reattempt = earlier[1].at
    case = Case(
        schedule=schedule((HOUR,), max_attempts=30),
        state=plan_state(attempts_made=16, first_failed_at=first),
        earlier=tuple(earlier),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == oldest_reattempt + 30 * DAY
    explained(decision, case)


def test_the_visa_reattempt_limit_in_the_hours() -> None:
    first = T0 - 10 * DAY
    earlier = visa_full_history(first, 5 * DAY)
    hours = AllowedHours(9, 11)
    case = Case(
        schedule=schedule((HOUR,), max_attempts=30, hours=hours),
        state=plan_state(attempts_made=16, first_failed_at=first),
        earlier=tuple(earlier),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at is not None
    assert decision.at >= earlier[1].at + 30 * DAY
    assert hours.contains(local_hour(decision.at, BERLIN))


def test_the_visa_reattempt_limit_past_the_span_stops() -> None:
    first = T0 - 10 * DAY
    case = Case(
        schedule=schedule((HOUR,), max_attempts=30, span_days=20),
        state=plan_state(attempts_made=16, first_failed_at=first),
        earlier=tuple(visa_full_history(first, 5 * DAY)),
    )
    decision = case.run()
    assert decision.action is Action.STOP
    assert "schedule.max_span_days" in decision.rule_ids


def test_a_time_moved_by_a_network_rule_names_the_rule() -> None:
    """Fixed (explainability): when ``earliest_allowed`` moves the time (here the Visa limit moves
    a 1-hour interval by about 25 days) the decision's reason and rule ids say nothing about
    it -- only "after interval 1 of 1 (1 hour)" -- so an operator cannot tell why this time."""
    first = T0 - 10 * DAY
    case = Case(
        schedule=schedule((HOUR,), max_attempts=30),
        state=plan_state(attempts_made=16, first_failed_at=first),
        earlier=tuple(visa_full_history(first, 5 * DAY)),
    )
    decision = case.run()
    assert decision.at is not None
    assert decision.at > T0 + 20 * DAY
    assert "visa.reattempt_limit" in decision.rule_ids, decision
    assert "Visa allows at most 15" in decision.reason


def test_the_daily_limit_moves_the_retry() -> None:
    history = tuple(declined(T0 - 10 * HOUR + i * 30 * MINUTE, SOFT_MC, CARD_B) for i in range(19))
    case = Case(
        decline=SOFT_MC,
        schedule=schedule((MINUTE,), max_attempts=40),
        state=plan_state(attempts_made=20, methods=(CARD_B,)),
        earlier=history,
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at == history[0].at + DAY


# ---- smart timing --------------------------------------------------------------------------


def stats_favouring(hour: int) -> SuccessStats:
    by_hour = {h: Rate(900, 1000) if h == hour else Rate(20, 1000) for h in range(24)}
    return SuccessStats(by_hour, {}, {}, Rate(900 + 23 * 20, 24_000))


@pytest.mark.parametrize(
    ("zone", "hour", "hours"),
    [
        (BERLIN, 14, None),
        (NEW_YORK, 3, None),
        (TOKYO, 19, AllowedHours(8, 22)),
        (KATHMANDU, 9, AllowedHours(9, 10)),
    ],
)
def test_smart_timing_picks_the_hour_the_stats_favour(
    zone: ZoneInfo, hour: int, hours: AllowedHours | None
) -> None:
    failed_at = datetime(2026, 11, 2, 10, 17, tzinfo=UTC)
    case = Case(
        schedule=schedule((2 * HOUR,), timing=Timing.SMART, hours=hours),
        state=plan_state(first_failed_at=failed_at, zone=zone),
        failed_at=failed_at,
        stats=stats_favouring(hour),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at is not None
    local = decision.at.astimezone(zone)
    assert (local.hour, local.minute) == (hour, 0)
    assert failed_at + 2 * HOUR <= decision.at <= failed_at + 2 * HOUR + 7 * DAY
    assert "smart" in decision.reason
    assert decision.data["slot"]
    explained(decision, case)


def test_smart_timing_respects_the_mastercard_wait_and_the_span() -> None:
    failed_at = datetime(2026, 11, 2, 10, 17, tzinfo=UTC)
    case = Case(
        decline=Decline("do_not_honor", MC, "", "26"),
        schedule=schedule((HOUR,), timing=Timing.SMART, span_days=4),
        state=plan_state(first_failed_at=failed_at, methods=(CARD_B,)),
        failed_at=failed_at,
        stats=stats_favouring(4),
    )
    decision = case.run()
    assert decision.action is Action.RETRY
    assert decision.at is not None
    assert failed_at + 2 * DAY <= decision.at <= failed_at + 4 * DAY
    assert decision.at.astimezone(BERLIN).hour == 4


# ---- plan transitions ----------------------------------------------------------------------

# From DESIGN.md: ACTIVE and PAUSED are open; RECOVERED, EXHAUSTED and CANCELED are final.
LEGAL = {
    (PlanStatus.ACTIVE, PlanStatus.PAUSED),
    (PlanStatus.ACTIVE, PlanStatus.RECOVERED),
    (PlanStatus.ACTIVE, PlanStatus.EXHAUSTED),
    (PlanStatus.ACTIVE, PlanStatus.CANCELED),
    (PlanStatus.PAUSED, PlanStatus.ACTIVE),
    (PlanStatus.PAUSED, PlanStatus.RECOVERED),
    (PlanStatus.PAUSED, PlanStatus.EXHAUSTED),
    (PlanStatus.PAUSED, PlanStatus.CANCELED),
}
PAIRS = [(a, b) for a in PlanStatus for b in PlanStatus]


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_a_legal_transition_passes(current: PlanStatus, target: PlanStatus) -> None:
    check_plan_transition(current, target)
    assert current in plan_sources_of(target)


@pytest.mark.parametrize(
    ("current", "target"), [pair for pair in PAIRS if pair not in LEGAL], ids=str
)
def test_every_illegal_transition_raises(current: PlanStatus, target: PlanStatus) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_plan_transition(current, target)
    assert isinstance(raised.value, FailedPrecondition)
    assert current.value in raised.value.message
    assert target.value in raised.value.message
    assert current not in plan_sources_of(target)


def test_only_open_plans_move() -> None:
    assert {a for a, _ in LEGAL} == OPEN_PLAN_STATUSES
