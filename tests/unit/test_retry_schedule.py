"""RetrySchedule: when the next attempt is due, and what a valid schedule is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.retry_schedule import (
    DEFAULT_REFUND_SCHEDULE,
    MAX_ATTEMPTS_LIMIT,
    MAX_INTERVAL,
    RetrySchedule,
    validate_code,
)
from service.errors import InvalidArgument

FAILED_AT = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
HOUR = 3600
DAY = 86400

SCHEDULE = RetrySchedule.of_seconds("refund-default", [HOUR, 6 * HOUR, DAY], max_attempts=5)


@pytest.mark.parametrize(
    ("attempts_made", "delay"),
    [
        (1, timedelta(hours=1)),  # intervals[0]
        (2, timedelta(hours=6)),  # intervals[1]
        (3, timedelta(days=1)),  # intervals[2]
        (4, timedelta(days=1)),  # the last interval repeats
    ],
)
def test_next_retry_uses_interval_n_minus_one(attempts_made: int, delay: timedelta) -> None:
    assert SCHEDULE.next_retry(attempts_made, FAILED_AT) == FAILED_AT + delay


@pytest.mark.parametrize("attempts_made", [5, 6, 100])
def test_no_retry_when_attempts_exhausted(attempts_made: int) -> None:
    assert SCHEDULE.next_retry(attempts_made, FAILED_AT) is None


def test_next_retry_before_any_attempt_uses_the_first_interval() -> None:
    assert SCHEDULE.next_retry(0, FAILED_AT) == FAILED_AT + timedelta(hours=1)


def test_single_attempt_schedule_never_retries() -> None:
    schedule = RetrySchedule("once", (), max_attempts=1)
    assert schedule.next_retry(1, FAILED_AT) is None
    assert schedule.remaining_after(0) == 1
    assert schedule.remaining_after(1) == 0


def test_next_retry_keeps_the_time_zone() -> None:
    result = SCHEDULE.next_retry(1, FAILED_AT)
    assert result is not None
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("attempts_made", "remaining"), [(0, 5), (1, 4), (4, 1), (5, 0), (6, 0), (1000, 0)]
)
def test_remaining_after(attempts_made: int, remaining: int) -> None:
    assert SCHEDULE.remaining_after(attempts_made) == remaining


@given(
    intervals=st.lists(st.integers(min_value=1, max_value=90 * DAY), min_size=1, max_size=10),
    max_attempts=st.integers(min_value=1, max_value=MAX_ATTEMPTS_LIMIT),
    attempts_made=st.integers(min_value=1, max_value=MAX_ATTEMPTS_LIMIT + 5),
)
def test_next_retry_property(intervals: list[int], max_attempts: int, attempts_made: int) -> None:
    schedule = RetrySchedule.of_seconds("prop", intervals, max_attempts)
    result = schedule.next_retry(attempts_made, FAILED_AT)
    assert schedule.remaining_after(attempts_made) == max(max_attempts - attempts_made, 0)
    if attempts_made >= max_attempts:
        assert result is None
        assert schedule.remaining_after(attempts_made) == 0
    else:
        expected = intervals[min(attempts_made, len(intervals)) - 1]
        assert result == FAILED_AT + timedelta(seconds=expected)
        assert result > FAILED_AT
        assert schedule.remaining_after(attempts_made) > 0


def test_of_seconds_builds_timedeltas() -> None:
    schedule = RetrySchedule.of_seconds("a", [1, 60], 3, "desc")
    assert schedule == RetrySchedule("a", (timedelta(seconds=1), timedelta(minutes=1)), 3, "desc")


def test_schedule_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SCHEDULE.max_attempts = 7  # type: ignore[misc]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [DEFAULT_REFUND_SCHEDULE, "a", "0", "card-soft_1", "x" * 63, "9lives", "a-", "a_"],
)
def test_valid_codes(code: str) -> None:
    assert validate_code(code, "schedule.code") == code
    assert RetrySchedule.of_seconds(code, [60], 2).code == code


@pytest.mark.parametrize(
    "code",
    [
        "",
        "-a",
        "_a",
        "Refund",
        "refund default",
        "refund.default",
        "réfund",
        "x" * 64,
        " a",
        "a ",
        "a/b",
    ],
)
def test_bad_codes_are_refused(code: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RetrySchedule.of_seconds(code, [60], 2)
    assert exc.value.field == "schedule.code"


@pytest.mark.parametrize("code", ["refund-default\n", "a\n"])
def test_code_with_trailing_newline_is_refused(code: str) -> None:
    # A trailing newline is not one of "lower-case letters, digits, '-' or '_'".
    with pytest.raises(InvalidArgument) as exc:
        validate_code(code, "schedule.code")
    assert exc.value.field == "schedule.code"


def test_validate_code_names_the_callers_field() -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_code("BAD", "retry_plan.schedule_code")
    assert exc.value.field == "retry_plan.schedule_code"


@pytest.mark.parametrize("max_attempts", [0, -1, MAX_ATTEMPTS_LIMIT + 1, 101])
def test_max_attempts_out_of_range(max_attempts: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RetrySchedule.of_seconds("s", [60], max_attempts)
    assert exc.value.field == "schedule.max_attempts"


@pytest.mark.parametrize("max_attempts", [1, MAX_ATTEMPTS_LIMIT])
def test_max_attempts_at_the_limits(max_attempts: int) -> None:
    assert RetrySchedule.of_seconds("s", [60], max_attempts).max_attempts == max_attempts


def test_intervals_needed_when_more_than_one_attempt() -> None:
    with pytest.raises(InvalidArgument) as exc:
        RetrySchedule("s", (), max_attempts=2)
    assert exc.value.field == "schedule.intervals"


@pytest.mark.parametrize(
    ("intervals", "field"),
    [
        ((timedelta(0),), "schedule.intervals[0]"),
        ((timedelta(milliseconds=999),), "schedule.intervals[0]"),
        ((timedelta(seconds=-60),), "schedule.intervals[0]"),
        ((timedelta(hours=1), MAX_INTERVAL + timedelta(seconds=1)), "schedule.intervals[1]"),
        ((timedelta(hours=1), timedelta(hours=2), timedelta(days=365)), "schedule.intervals[2]"),
    ],
)
def test_interval_out_of_range(intervals: tuple[timedelta, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RetrySchedule("s", intervals, max_attempts=3)
    assert exc.value.field == field


def test_interval_limits_are_inclusive() -> None:
    schedule = RetrySchedule("s", (timedelta(seconds=1), MAX_INTERVAL), max_attempts=3)
    assert schedule.next_retry(2, FAILED_AT) == FAILED_AT + timedelta(days=90)


def test_description_length() -> None:
    assert RetrySchedule.of_seconds("s", [60], 2, "d" * 500).description == "d" * 500
    with pytest.raises(InvalidArgument) as exc:
        RetrySchedule.of_seconds("s", [60], 2, "d" * 501)
    assert exc.value.field == "schedule.description"
