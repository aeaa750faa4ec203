"""Retry timing: allowed hours in the customer's zone (across midnight and DST), the smart slot
learned from attempt history with a prior, the fixed slot, and the reasons they give."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.domain.retry_schedule import RetrySchedule
from service.domain.retry_timing import (
    DEFAULT_PRIOR,
    MAX_DAYS_SINCE_FAILURE,
    PAYDAY_PRIOR,
    AllowedHours,
    ObservedAttempt,
    Rate,
    SlotChoice,
    SuccessPrior,
    SuccessStats,
    buckets,
    days_since_failure,
    fixed_slot,
    next_allowed,
    smart_slot,
    validate_time_zone,
)
from service.errors import InvalidArgument

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
KOLKATA = ZoneInfo("Asia/Kolkata")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
AUCKLAND = ZoneInfo("Pacific/Auckland")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
ZONES = [
    BERLIN,
    NEW_YORK,
    LOS_ANGELES,
    KOLKATA,
    KATHMANDU,
    AUCKLAND,
    LORD_HOWE,
    ZoneInfo("Pacific/Chatham"),
    ZoneInfo("UTC"),
]
# Instants near 2026 offset changes, so the properties see DST days often.
TRANSITIONS = [
    datetime(2026, 3, 8, 7, tzinfo=UTC),  # New York spring forward
    datetime(2026, 11, 1, 6, tzinfo=UTC),  # New York fall back
    datetime(2026, 3, 8, 10, tzinfo=UTC),  # Los Angeles spring forward
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # Berlin spring forward
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # Berlin fall back
    datetime(2026, 4, 4, 14, tzinfo=UTC),  # Auckland fall back
    datetime(2026, 9, 26, 14, tzinfo=UTC),  # Auckland spring forward
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # Lord Howe: half an hour forward
]
HOURS_FIELD = "schedule.allowed_hours"
QUARTER = timedelta(minutes=15)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(
    zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def allowed(at: datetime, zone: ZoneInfo, hours: AllowedHours | None) -> bool:
    return hours is None or hours.contains(at.astimezone(zone).hour)


instants = st.one_of(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    ),
    st.builds(
        lambda base, minutes, micros: base + timedelta(minutes=minutes, microseconds=micros),
        st.sampled_from(TRANSITIONS),
        st.integers(-36 * 60, 36 * 60),
        st.sampled_from([0, 0, 1, 999_999]),
    ),
)
hour_windows = st.tuples(st.integers(0, 23), st.integers(0, 24)).filter(lambda se: se[0] != se[1])
optional_hours = st.one_of(st.none(), hour_windows.map(lambda se: AllowedHours(*se)))


# ---- AllowedHours and time zones ---------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        (9, 21, [9, 12, 20], [8, 21, 23, 0]),
        (0, 24, list(range(24)), []),
        (22, 6, [22, 23, 0, 5], [6, 12, 21]),
        (23, 0, [23], [0, 22]),
    ],
)
def test_allowed_hours_contains(
    start: int, end: int, inside: list[int], outside: list[int]
) -> None:
    hours = AllowedHours(start, end)
    assert all(hours.contains(h) for h in inside)
    assert not any(hours.contains(h) for h in outside)
    assert str(hours) == f"{start}-{end}"


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (5, 5, "must differ"),
        (-1, 3, "start hour"),
        (24, 3, "start hour"),
        (3, 25, "end hour"),
        (3, -1, "end hour"),
        (True, 5, "whole numbers"),
    ],
)
def test_allowed_hours_validation_names_the_field(start: int, end: int, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        AllowedHours(start, end)
    assert caught.value.field == HOURS_FIELD
    assert message in caught.value.message


@pytest.mark.parametrize("name", ["Europe/Berlin", "UTC", "Asia/Kolkata", "America/New_York"])
def test_validate_time_zone_accepts_iana_names(name: str) -> None:
    assert validate_time_zone(name, "customer.time_zone") == ZoneInfo(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Mars/Olympus_Mons",
        "America",
        "europe/berlin",
        "Europe/Berlin ",
        "../etc/passwd",
        "/etc/localtime",
        "localtime",
        "posixrules",
        "Factory",
        "zone.tab",
        "Europe/Zürich",
        "x" * 100,
        "a\x00b",
    ],
)
def test_validate_time_zone_refuses_unknown_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_time_zone(name, "customer.time_zone")
    assert caught.value.field == "customer.time_zone"


# ---- next_allowed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "zone", "hours", "expected"),
    [
        # inside: unchanged (returned in UTC)
        (local(BERLIN, 2026, 5, 4, 12, 30), BERLIN, AllowedHours(9, 21), utc(2026, 5, 4, 10, 30)),
        # before the window: its start the same day; after it: the next day's start
        (local(BERLIN, 2026, 5, 4, 5, 10), BERLIN, AllowedHours(9, 21), utc(2026, 5, 4, 7)),
        (local(BERLIN, 2026, 5, 4, 22, 30), BERLIN, AllowedHours(9, 21), utc(2026, 5, 5, 7)),
        (local(BERLIN, 2026, 5, 4, 21, 0), BERLIN, AllowedHours(9, 21), utc(2026, 5, 5, 7)),
        # across midnight, 22 -> 6
        (local(BERLIN, 2026, 5, 4, 12, 0), BERLIN, AllowedHours(22, 6), utc(2026, 5, 4, 20)),
        (local(BERLIN, 2026, 5, 4, 23, 30), BERLIN, AllowedHours(22, 6), utc(2026, 5, 4, 21, 30)),
        (local(BERLIN, 2026, 5, 5, 3, 0), BERLIN, AllowedHours(22, 6), utc(2026, 5, 5, 1)),
        (local(BERLIN, 2026, 5, 5, 6, 0), BERLIN, AllowedHours(22, 6), utc(2026, 5, 5, 20)),
        # east of UTC, half an hour: 07:30 IST -> 09:00 IST
        (utc(2026, 5, 4, 2, 0), KOLKATA, AllowedHours(9, 17), utc(2026, 5, 4, 3, 30)),
        # three-quarters of an hour: 05:45 NPT -> 06:00 NPT
        (utc(2026, 5, 4, 0, 0), KATHMANDU, AllowedHours(6, 20), utc(2026, 5, 4, 0, 15)),
        # west of UTC: 07:00 PDT -> 09:00 PDT
        (utc(2026, 5, 4, 14, 0), LOS_ANGELES, AllowedHours(9, 17), utc(2026, 5, 4, 16)),
        # far east, the local date ahead of UTC: 12:00 NZST -> 18:00 NZST
        (utc(2026, 5, 4, 0, 0), AUCKLAND, AllowedHours(18, 22), utc(2026, 5, 4, 6)),
        # Auckland summer time (+13): 13:00 NZDT -> 08:00 NZDT next day
        (utc(2026, 1, 10, 0, 0), AUCKLAND, AllowedHours(8, 10), utc(2026, 1, 10, 19)),
    ],
)
def test_next_allowed(
    at: datetime, zone: ZoneInfo, hours: AllowedHours, expected: datetime
) -> None:
    result = next_allowed(at, zone, hours)
    assert result == expected
    assert result.tzinfo is UTC


def test_any_hour_when_no_window() -> None:
    at = local(KOLKATA, 2026, 5, 4, 3, 17) + timedelta(seconds=5, microseconds=7)
    result = next_allowed(at, KOLKATA, None)
    assert result == at
    assert result.tzinfo is UTC


def test_spring_forward_gap_skips_to_the_next_day() -> None:
    # New York, 2026-03-08: 02:00-03:00 does not exist (01:59:59 EST -> 03:00:00 EDT).
    at = utc(2026, 3, 8, 6, 30)  # 01:30 EST
    result = next_allowed(at, NEW_YORK, AllowedHours(2, 3))
    assert result == local(NEW_YORK, 2026, 3, 9, 2, 0) == utc(2026, 3, 9, 6)


def test_spring_forward_gap_starts_a_wider_window_at_the_jump() -> None:
    at = utc(2026, 3, 8, 6, 30)  # 01:30 EST; 02:00 never comes, 03:00 EDT does
    assert next_allowed(at, NEW_YORK, AllowedHours(2, 5)) == utc(2026, 3, 8, 7)


@pytest.mark.parametrize(
    "at",
    [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first one o'clock
        utc(2026, 11, 1, 6, 10),  # 01:10 EST, the second one
        local(NEW_YORK, 2026, 11, 1, 1, 59, fold=1),
    ],
)
def test_fall_back_hour_is_allowed_both_times(at: datetime) -> None:
    # (compared in UTC: aware datetimes in a repeated hour never equal another zone's, PEP 495)
    assert next_allowed(at, NEW_YORK, AllowedHours(1, 2)) == at.astimezone(UTC)


def test_fall_back_window_opens_at_the_first_of_the_repeated_hours() -> None:
    assert next_allowed(utc(2026, 11, 1, 4, 50), NEW_YORK, AllowedHours(1, 2)) == utc(
        2026, 11, 1, 5
    )
    # after the second one o'clock the next is tomorrow's (EST)
    assert next_allowed(utc(2026, 11, 1, 7, 10), NEW_YORK, AllowedHours(1, 2)) == utc(
        2026, 11, 2, 6
    )
    # a window after the repeated hour waits through both of them
    assert next_allowed(utc(2026, 11, 1, 5, 30), NEW_YORK, AllowedHours(2, 3)) == utc(
        2026, 11, 1, 7
    )


def test_a_jump_that_lands_mid_hour_opens_the_window() -> None:
    # Lord Howe Island moves half an hour: 02:00 +10:30 becomes 02:30 +11:00.
    at = utc(2026, 10, 3, 15, 0)  # 01:30 local
    result = next_allowed(at, LORD_HOWE, AllowedHours(2, 3))
    assert result == utc(2026, 10, 3, 15, 30)
    assert result.astimezone(LORD_HOWE).strftime("%H:%M") == "02:30"


def test_a_skipped_day_is_crossed() -> None:
    # Samoa skipped 2011-12-30 entirely.
    apia = ZoneInfo("Pacific/Apia")
    at = local(apia, 2011, 12, 29, 23, 30)
    assert next_allowed(at, apia, AllowedHours(9, 10)) == local(apia, 2011, 12, 31, 9, 0)


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_allowed(datetime(2026, 5, 4, 12), BERLIN, AllowedHours(9, 17))


@given(at=instants, zone=st.sampled_from(ZONES), window=hour_windows)
@example(at=utc(2026, 3, 8, 6, 30), zone=NEW_YORK, window=(2, 3))
@example(at=utc(2026, 11, 1, 5, 59, 59), zone=NEW_YORK, window=(1, 2))
@example(at=utc(2026, 10, 3, 15, 29, 59), zone=LORD_HOWE, window=(2, 3))
def test_next_allowed_is_the_first_allowed_instant(
    at: datetime, zone: ZoneInfo, window: tuple[int, int]
) -> None:
    hours = AllowedHours(*window)
    result = next_allowed(at, zone, hours)
    assert result.tzinfo is UTC
    assert result >= at
    assert allowed(result, zone, hours)
    assert result - at < timedelta(days=2)
    assert next_allowed(result, zone, hours) == result
    if result > at:
        assert not allowed(at, zone, hours)
        assert not allowed(result - timedelta(seconds=1), zone, hours)
        # no earlier allowed instant: walk back in quarter hours through the previous day
        step = result - QUARTER
        while step > at and result - step <= timedelta(days=1):
            assert not allowed(step, zone, hours), step
            step -= QUARTER


# ---- stats and priors ----------------------------------------------------------------------


def test_rate_validation() -> None:
    assert Rate(3, 10).observed == pytest.approx(0.3)
    assert Rate(0, 0).observed is None
    assert Rate(1, 2) + Rate(2, 3) == Rate(3, 5)
    with pytest.raises(ValueError, match="successes"):
        Rate(5, 3)
    with pytest.raises(ValueError, match="successes"):
        Rate(-1, 3)


@pytest.mark.parametrize(
    ("by_hour", "by_day", "by_since"),
    [
        ({24: Rate(1, 1)}, {}, {}),
        ({}, {0: Rate(1, 1)}, {}),
        ({}, {32: Rate(1, 1)}, {}),
        ({}, {}, {MAX_DAYS_SINCE_FAILURE + 1: Rate(1, 1)}),
    ],
)
def test_stats_keys_are_checked(
    by_hour: dict[int, Rate], by_day: dict[int, Rate], by_since: dict[int, Rate]
) -> None:
    with pytest.raises(ValueError, match="keys"):
        SuccessStats(by_hour, by_day, by_since, Rate(1, 1))


def test_stats_are_a_frozen_copy() -> None:
    by_hour = {14: Rate(5, 10)}
    stats = SuccessStats(by_hour, {}, {}, Rate(5, 10))
    by_hour[3] = Rate(10, 10)
    assert dict(stats.by_hour) == {14: Rate(5, 10)}
    with pytest.raises(TypeError):
        stats.by_hour[3] = Rate(1, 1)  # type: ignore[index]


def test_empty_stats() -> None:
    empty = SuccessStats.empty()
    assert empty.overall == Rate(0, 0)
    assert not empty.by_hour
    assert not empty.by_day_of_month
    assert not empty.by_days_since_failure


def test_buckets_and_stats_from_attempts_agree() -> None:
    failed = utc(2026, 5, 30, 22, 0)
    attempts = [
        # 2026-06-01 00:30 Berlin: hour 0 on the 1st, 2 days and 30 minutes after failure
        ObservedAttempt(utc(2026, 5, 31, 22, 30), failed, BERLIN, succeeded=True),
        # the same instant in New York is 18:30 on 31 May
        ObservedAttempt(utc(2026, 5, 31, 22, 30), failed, NEW_YORK, succeeded=False),
        ObservedAttempt(utc(2026, 9, 1, 12, 0), failed, BERLIN, succeeded=False),
    ]
    assert buckets(attempts[0].attempted_at, failed, BERLIN) == (0, 1, 1)
    assert buckets(attempts[1].attempted_at, failed, NEW_YORK) == (18, 31, 1)
    assert buckets(attempts[2].attempted_at, failed, BERLIN) == (14, 1, MAX_DAYS_SINCE_FAILURE)
    stats = SuccessStats.from_attempts(attempts)
    assert stats.overall == Rate(1, 3)
    assert dict(stats.by_hour) == {0: Rate(1, 1), 18: Rate(0, 1), 14: Rate(0, 1)}
    assert dict(stats.by_day_of_month) == {1: Rate(1, 2), 31: Rate(0, 1)}
    assert dict(stats.by_days_since_failure) == {1: Rate(1, 2), 60: Rate(0, 1)}


@pytest.mark.parametrize(
    ("elapsed", "days"),
    [
        (timedelta(hours=-5), 0),
        (timedelta(hours=23, minutes=59), 0),
        (timedelta(days=1), 1),
        (timedelta(days=3, hours=12), 3),
        (timedelta(days=400), MAX_DAYS_SINCE_FAILURE),
    ],
)
def test_days_since_failure(elapsed: timedelta, days: int) -> None:
    failed = utc(2026, 5, 1, 8)
    assert days_since_failure(failed + elapsed, failed) == days


def prior_with(**changes: object) -> SuccessPrior:
    values: dict[str, object] = {
        "strength": 20.0,
        "hour_weights": (1.0,) * 24,
        "day_of_month_weights": (1.0,) * 31,
        "days_since_failure_weights": (1.0,) * 61,
        "base_rate": 0.2,
    }
    values.update(changes)
    return SuccessPrior(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strength": 0.0}, "strength"),
        ({"strength": float("inf")}, "strength"),
        ({"base_rate": 0.0}, "base_rate"),
        ({"base_rate": 1.0}, "base_rate"),
        ({"hour_weights": (1.0,) * 23}, "hour_weights"),
        ({"day_of_month_weights": (1.0,) * 30 + (0.0,)}, "day_of_month_weights"),
        ({"days_since_failure_weights": (1.0,) * 60 + (float("nan"),)}, "days_since"),
    ],
)
def test_prior_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prior_with(**changes)


@pytest.mark.parametrize("prior", [DEFAULT_PRIOR, PAYDAY_PRIOR])
def test_priors_encode_sane_defaults(prior: SuccessPrior) -> None:
    hours = prior.hour_weights
    assert sum(hours) / 24 == pytest.approx(1.0, abs=1e-3)
    assert sum(prior.day_of_month_weights) / 31 == pytest.approx(1.0, abs=1e-3)
    best_hour = max(range(24), key=lambda h: hours[h])
    assert 9 <= best_hour < 17
    assert max(hours[0:6]) < min(hours[9:17])  # business hours beat the night
    days = prior.day_of_month_weights
    mid_month = days[9]  # the 10th
    for payday in (1, 15, 30, 31):
        assert days[payday - 1] > mid_month
    since = prior.days_since_failure_weights
    assert since[2] > since[14] > since[45]  # early days slightly better


def test_payday_prior_has_the_stronger_payday_effect() -> None:
    def lift(prior: SuccessPrior) -> float:
        return prior.day_of_month_weights[0] / prior.day_of_month_weights[9]

    assert lift(PAYDAY_PRIOR) > lift(DEFAULT_PRIOR) > 1.0
    assert lift(PAYDAY_PRIOR) >= 1.5


# ---- smart_slot ----------------------------------------------------------------------------

EARLIEST = utc(2026, 5, 28, 3, 17)  # Thursday 05:17 in Berlin
FIRST_FAILED = utc(2026, 5, 27, 9, 0)


def favouring(hour: int, day: int) -> SuccessStats:
    """Plenty of history: 10% success everywhere except at ``hour`` and on ``day``."""
    by_hour = {h: Rate(10, 100) for h in range(24)} | {hour: Rate(60, 100)}
    by_day = {d: Rate(8, 80) for d in range(1, 32)} | {day: Rate(48, 80)}
    by_since = {d: Rate(40, 400) for d in range(0, 15)}
    return SuccessStats(by_hour, by_day, by_since, Rate(290, 2400))


def smart(
    stats: SuccessStats,
    *,
    earliest: datetime = EARLIEST,
    days: float = 7,
    zone: ZoneInfo = BERLIN,
    hours: AllowedHours | None = None,
    prior: SuccessPrior = DEFAULT_PRIOR,
    first_failed_at: datetime = FIRST_FAILED,
) -> SlotChoice:
    choice = smart_slot(
        earliest=earliest,
        latest=earliest + timedelta(days=days),
        first_failed_at=first_failed_at,
        zone=zone,
        hours=hours,
        stats=stats,
        prior=prior,
    )
    assert choice is not None
    return choice


def test_strong_history_picks_the_favoured_hour_and_day() -> None:
    choice = smart(favouring(14, 1), hours=AllowedHours(8, 21))
    assert choice.at == local(BERLIN, 2026, 6, 1, 14, 0) == utc(2026, 6, 1, 12)
    assert choice.at.tzinfo is UTC
    assert choice.data["hour"] == 14
    assert choice.data["day_of_month"] == 1
    assert choice.data["days_since_failure"] == 5
    assert choice.data["hour_attempts"] == 100
    assert choice.data["payday"] is True
    assert 0.5 < choice.score <= 1.0


def test_reason_and_data_name_the_factors() -> None:
    choice = smart(favouring(14, 1), hours=AllowedHours(8, 21))
    reason = choice.reason
    assert reason.startswith("smart (default prior): 14:00 local Europe/Berlin on 2026-06-01")
    for said in (
        "the 1st (payday)",
        "day 5 after failure",
        "hour 14: observed 60% (100 attempts)",
        "1st of month: observed 60% (80 attempts)",
        "over 2400 attempts",
        "candidates",
        "allowed hours 8-21",
        "earliest 2026-05-28 08:00 would be",
    ):
        assert said in reason, said
    data = choice.data
    assert json.loads(json.dumps(data)) == data
    assert data["mode"] == "smart"
    assert data["zone"] == "Europe/Berlin"
    assert data["allowed_hours"] == [8, 21]
    assert data["prior"] == {
        "name": "default",
        "strength": DEFAULT_PRIOR.strength,
        "base_rate": 0.2,
    }
    # the observed 60% (100 attempts), pulled toward the prior by its strength
    hour_rate = data["hour_rate"]
    assert isinstance(hour_rate, float)
    assert 0.25 < hour_rate < 0.6
    assert data["score"] == pytest.approx(choice.score, abs=1e-4)
    assert isinstance(data["candidates"], int)
    assert data["candidates"] > 80
    factors = data["factors"]
    assert isinstance(factors, dict)
    assert set(factors) == {"hour", "day_of_month", "days_since_failure"}
    earliest = data["earliest_candidate"]
    assert isinstance(earliest, dict)
    assert earliest["at"] == "2026-05-28T06:00:00+00:00"
    assert earliest["score"] < data["score"]


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK, KOLKATA, AUCKLAND, LOS_ANGELES])
@pytest.mark.parametrize("earliest", [utc(2026, 5, 12, 0, 0), utc(2026, 5, 12, 13, 45)])
def test_empty_history_picks_a_business_hour(zone: ZoneInfo, earliest: datetime) -> None:
    choice = smart(SuccessStats.empty(), earliest=earliest, days=3, zone=zone)
    assert 9 <= choice.at.astimezone(zone).hour < 17
    assert "no history" in choice.reason
    assert choice.data["overall_attempts"] == 0


def test_empty_history_on_insufficient_funds_waits_for_payday() -> None:
    failed = utc(2026, 6, 8, 10)
    choice = smart(
        SuccessStats.empty(),
        earliest=utc(2026, 6, 9, 10),
        days=10,
        prior=PAYDAY_PRIOR,
        first_failed_at=failed,
    )
    local_at = choice.at.astimezone(BERLIN)
    assert local_at.day == 15
    assert 9 <= local_at.hour < 17
    assert "smart (payday prior)" in choice.reason
    assert "the 15th (payday)" in choice.reason


def test_thin_history_leaves_the_prior_in_charge() -> None:
    # Three successes at 03:00 local (on days outside the window): too little to believe in the
    # night, so the choice is the prior's.
    three = {20: Rate(1, 1), 21: Rate(1, 1), 22: Rate(1, 1)}
    thin = SuccessStats({3: Rate(3, 3)}, three, three, Rate(3, 3))
    earliest = utc(2026, 6, 9, 22)
    failed = earliest - timedelta(hours=12)
    choice = smart(thin, earliest=earliest, days=3, first_failed_at=failed)
    prior_only = smart(SuccessStats.empty(), earliest=earliest, days=3, first_failed_at=failed)
    assert choice.at == prior_only.at
    assert 9 <= choice.at.astimezone(BERLIN).hour < 17
    # even inside a window that offers 03:00, a business hour wins
    choice = smart(
        thin, earliest=earliest, days=3, first_failed_at=failed, hours=AllowedHours(2, 10)
    )
    assert choice.at.astimezone(BERLIN).hour == 9


def test_thin_history_is_said_to_be_mostly_prior() -> None:
    thin = SuccessStats({h: Rate(1, 3) for h in range(24)}, {}, {}, Rate(24, 72))
    choice = smart(thin, days=2)
    assert "(3 attempts), mostly prior" in choice.reason


def test_plenty_of_history_overrules_the_prior() -> None:
    # The same pattern as the thin case, observed a thousand times.
    night = SuccessStats(
        {h: Rate(50, 1000) for h in range(24)} | {3: Rate(700, 1000)}, {}, {}, Rate(1850, 24000)
    )
    choice = smart(night, days=3)
    assert choice.at.astimezone(BERLIN).hour == 3


@given(
    earliest=instants,
    minutes=st.integers(0, 10 * 24 * 60),
    zone=st.sampled_from(ZONES),
    hours=optional_hours,
    favoured=st.integers(0, 23),
    payday=st.booleans(),
)
def test_smart_slot_respects_the_window_and_the_allowed_hours(
    earliest: datetime,
    minutes: int,
    zone: ZoneInfo,
    hours: AllowedHours | None,
    favoured: int,
    payday: bool,
) -> None:
    latest = earliest + timedelta(minutes=minutes)
    first_fit = next_allowed(earliest, zone, hours)
    choice = smart_slot(
        earliest=earliest,
        latest=latest,
        first_failed_at=earliest - timedelta(days=2),
        zone=zone,
        hours=hours,
        stats=favouring(favoured, 1),
        prior=PAYDAY_PRIOR if payday else DEFAULT_PRIOR,
    )
    if first_fit > latest:
        assert choice is None
        return
    assert choice is not None
    assert earliest <= choice.at <= latest
    assert allowed(choice.at, zone, hours)
    assert choice.at.tzinfo is UTC
    at_local = choice.at.astimezone(zone)
    assert choice.at == first_fit or at_local.minute == 0 or zone is LORD_HOWE
    assert 0.0 < choice.score <= 1.0
    earliest_candidate = choice.data["earliest_candidate"]
    assert isinstance(earliest_candidate, dict)
    assert earliest_candidate["score"] <= choice.data["score"]


def test_none_when_the_window_has_no_allowed_hour() -> None:
    earliest = local(BERLIN, 2026, 5, 4, 10, 0)
    assert (
        smart_slot(
            earliest=earliest,
            latest=local(BERLIN, 2026, 5, 4, 17, 59),
            first_failed_at=earliest,
            zone=BERLIN,
            hours=AllowedHours(18, 22),
            stats=SuccessStats.empty(),
        )
        is None
    )
    # the window's last instant counts
    choice = smart_slot(
        earliest=earliest,
        latest=local(BERLIN, 2026, 5, 4, 18, 0),
        first_failed_at=earliest,
        zone=BERLIN,
        hours=AllowedHours(18, 22),
        stats=SuccessStats.empty(),
    )
    assert choice is not None
    assert choice.at == local(BERLIN, 2026, 5, 4, 18, 0)


def test_none_when_the_window_is_empty() -> None:
    assert (
        smart_slot(
            earliest=EARLIEST,
            latest=EARLIEST - timedelta(seconds=1),
            first_failed_at=FIRST_FAILED,
            zone=BERLIN,
            hours=None,
            stats=SuccessStats.empty(),
        )
        is None
    )


def test_a_window_of_one_instant_is_that_instant() -> None:
    at = local(BERLIN, 2026, 5, 4, 10, 37)
    choice = smart_slot(
        earliest=at,
        latest=at,
        first_failed_at=FIRST_FAILED,
        zone=BERLIN,
        hours=None,
        stats=SuccessStats.empty(),
    )
    assert choice is not None
    assert choice.at == at
    assert choice.data["candidates"] == 1
    assert "would be" not in choice.reason


def test_ties_go_to_the_earliest() -> None:
    flat = prior_with()
    choice = smart(SuccessStats.empty(), prior=flat, hours=AllowedHours(9, 17))
    assert choice.at == next_allowed(EARLIEST, BERLIN, AllowedHours(9, 17))
    assert choice.score == pytest.approx(0.2)


def test_smart_slot_is_deterministic() -> None:
    stats = favouring(16, 15)
    shuffled = SuccessStats(
        dict(reversed(list(stats.by_hour.items()))),
        dict(reversed(list(stats.by_day_of_month.items()))),
        dict(reversed(list(stats.by_days_since_failure.items()))),
        stats.overall,
    )
    choices = [smart(s, days=30, zone=AUCKLAND) for s in (stats, stats, shuffled)]
    assert choices[0] == choices[1] == choices[2]


@pytest.mark.parametrize(
    "earliest",
    [
        utc(2026, 3, 26, 0, 30),  # over the Berlin spring forward: 03:00 CEST starts an hour
        utc(2026, 10, 22, 0, 30),  # over the fall back: 02:00 CET starts an hour again
        utc(2026, 5, 5, 0, 30),
    ],
)
def test_candidates_are_real_hours_across_dst(earliest: datetime) -> None:
    # A week is 168 elapsed hours whatever the clocks do: each hour start, plus the earliest.
    choice = smart(SuccessStats.empty(), earliest=earliest, days=7)
    assert choice.data["candidates"] == 169


def test_smart_slot_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="first_failed_at"):
        smart_slot(
            earliest=EARLIEST,
            latest=EARLIEST + timedelta(days=1),
            first_failed_at=datetime(2026, 5, 27),
            zone=BERLIN,
            hours=None,
            stats=SuccessStats.empty(),
        )


def test_smart_slot_is_fast() -> None:
    stats = favouring(14, 1)
    calls = 50
    started = time.perf_counter()
    for _ in range(calls):
        smart(stats, zone=NEW_YORK)  # 7 days: 168 candidates
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 0.01  # typically ~0.3 ms; this only catches a pathological regression


# ---- fixed_slot ----------------------------------------------------------------------------

SCHEDULE = RetrySchedule.of_seconds("dunning-std", [3600, 86400, 3 * 86400], max_attempts=5)


def test_fixed_slot_moves_into_allowed_hours_and_says_so() -> None:
    choice = fixed_slot(
        earliest=local(BERLIN, 2026, 3, 7, 3, 0),
        zone=BERLIN,
        hours=AllowedHours(9, 21),
        schedule=SCHEDULE,
        attempts_made=2,
    )
    assert choice.at == utc(2026, 3, 7, 8)
    assert choice.reason == (
        "fixed schedule dunning-std: attempt 3 of 5 after interval 2 of 3 (1 day); "
        "moved from 03:00 to 09:00 local, allowed hours 9-21 Europe/Berlin"
    )
    assert choice.data["moved"] is True
    assert choice.data["schedule"] == "dunning-std"
    assert json.loads(json.dumps(choice.data)) == choice.data


def test_fixed_slot_moved_to_the_next_day_names_the_dates() -> None:
    choice = fixed_slot(
        earliest=local(BERLIN, 2026, 3, 7, 22, 30), zone=BERLIN, hours=AllowedHours(9, 21)
    )
    assert choice.at == local(BERLIN, 2026, 3, 8, 9, 0)
    assert choice.reason == (
        "fixed schedule: next slot; moved from 2026-03-07 22:30 to 2026-03-08 09:00 local, "
        "allowed hours 9-21 Europe/Berlin"
    )


@pytest.mark.parametrize(
    ("hours", "said"),
    [
        (AllowedHours(9, 21), "at 14:30 local America/Los_Angeles, inside allowed hours 9-21"),
        (None, "at 14:30 local America/Los_Angeles, any hour allowed"),
    ],
)
def test_fixed_slot_inside_the_hours_keeps_the_time(hours: AllowedHours | None, said: str) -> None:
    earliest = local(LOS_ANGELES, 2026, 7, 1, 14, 30)
    choice = fixed_slot(
        earliest=earliest, zone=LOS_ANGELES, hours=hours, schedule=SCHEDULE, attempts_made=7
    )
    assert choice.at == earliest
    assert choice.at.tzinfo is UTC
    assert choice.reason == (
        f"fixed schedule dunning-std: attempt 8 of 5 after interval 3 of 3 (3 days); {said}"
    )
    assert choice.data["moved"] is False


@pytest.mark.parametrize(
    ("schedule", "attempts_made", "head"),
    [
        (SCHEDULE, 0, "fixed schedule dunning-std: attempt 1 of 5 after interval 1 of 3 (1 hour)"),
        (SCHEDULE, None, "fixed schedule dunning-std: next slot"),
        (
            RetrySchedule.of_seconds("quick", [5400 + 30], 3),
            1,
            "fixed schedule quick: attempt 2 of 3 after interval 1 of 1 (1 hour 30 minutes 30 "
            "seconds)",
        ),
        (RetrySchedule("once", (), 1), 0, "fixed schedule once: attempt 1 of 1, no interval"),
    ],
)
def test_fixed_slot_describes_the_interval(
    schedule: RetrySchedule, attempts_made: int | None, head: str
) -> None:
    choice = fixed_slot(
        earliest=utc(2026, 7, 1, 12),
        zone=BERLIN,
        hours=None,
        schedule=schedule,
        attempts_made=attempts_made,
    )
    assert choice.reason.startswith(head + "; ")


def test_fixed_slot_score_uses_history_when_given() -> None:
    earliest = local(BERLIN, 2026, 6, 1, 14, 0)
    prior_only = fixed_slot(earliest=earliest, zone=BERLIN, hours=None)
    learned = fixed_slot(
        earliest=earliest,
        zone=BERLIN,
        hours=None,
        stats=favouring(14, 1),
        first_failed_at=FIRST_FAILED,
    )
    assert prior_only.at == learned.at == earliest
    assert prior_only.data["score_basis"] == "prior"
    assert learned.data["score_basis"] == "history"
    assert learned.score > prior_only.score
    assert learned.data["days_since_failure"] == 5


def test_fixed_slot_across_the_spring_forward_gap() -> None:
    # 02:30 New York on 2026-03-08 does not exist; a window of 2-3 waits a day.
    choice = fixed_slot(earliest=utc(2026, 3, 8, 6, 45), zone=NEW_YORK, hours=AllowedHours(2, 3))
    assert choice.at == utc(2026, 3, 9, 6)
    assert "moved from 2026-03-08 01:45 to 2026-03-09 02:00 local" in choice.reason
