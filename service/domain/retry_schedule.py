"""RetrySchedule: a validated, frozen policy value, and the pure decision it makes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from service.errors import InvalidArgument

if TYPE_CHECKING:  # retry_timing explains schedules in words, so it imports this module
    from service.domain.retry_timing import AllowedHours

CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_ATTEMPTS_LIMIT = 100
MAX_INTERVAL = timedelta(days=90)
DEFAULT_REFUND_SCHEDULE = "refund-default"
DEFAULT_PAYMENT_SCHEDULE = "payment-fixed"
MAX_SPAN_DAYS = 120


class Timing(StrEnum):
    FIXED = "FIXED"
    SMART = "SMART"


class WalletPolicy(StrEnum):
    NEVER = "NEVER"
    AFTER_HARD_DECLINE = "AFTER_HARD_DECLINE"
    ROTATE = "ROTATE"


def validate_code(code: str, field: str) -> str:
    if not CODE_PATTERN.fullmatch(code):
        raise InvalidArgument(
            field, "must be 1-63 lower-case letters, digits, '-' or '_', starting alphanumeric"
        )
    return code


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    code: str
    intervals: tuple[timedelta, ...]
    max_attempts: int
    description: str = ""
    # Payment retries only: refund retries use the intervals as they are.
    timing: Timing = Timing.FIXED
    allowed_hours: AllowedHours | None = None
    max_span_days: int | None = None
    wallet: WalletPolicy = WalletPolicy.AFTER_HARD_DECLINE

    def __post_init__(self) -> None:
        validate_code(self.code, "schedule.code")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(
                "schedule.max_attempts", f"must be between 1 and {MAX_ATTEMPTS_LIMIT}"
            )
        if self.max_attempts > 1 and not self.intervals:
            raise InvalidArgument("schedule.intervals", "needed when max_attempts is above 1")
        for index, interval in enumerate(self.intervals):
            if not timedelta(seconds=1) <= interval <= MAX_INTERVAL:
                raise InvalidArgument(
                    f"schedule.intervals[{index}]", "must be between 1 second and 90 days"
                )
        if len(self.description) > 500:
            raise InvalidArgument("schedule.description", "at most 500 characters")
        if self.max_span_days is not None and not 1 <= self.max_span_days <= MAX_SPAN_DAYS:
            raise InvalidArgument(
                "schedule.max_span_days", f"must be between 1 and {MAX_SPAN_DAYS} days"
            )
        if self.timing is Timing.SMART and not self.intervals:
            raise InvalidArgument(
                "schedule.intervals", "a smart schedule needs the minimum gap between attempts"
            )

    @property
    def span(self) -> timedelta | None:
        return timedelta(days=self.max_span_days) if self.max_span_days else None

    def gap_after(self, attempts_made: int) -> timedelta:
        """The interval before the next attempt once ``attempts_made`` attempts were made."""
        if not self.intervals:
            return timedelta(0)
        return self.intervals[min(max(attempts_made, 1), len(self.intervals)) - 1]

    @classmethod
    def of_seconds(
        cls, code: str, seconds: Sequence[int], max_attempts: int, description: str = ""
    ) -> RetrySchedule:
        return cls(code, tuple(timedelta(seconds=s) for s in seconds), max_attempts, description)

    def remaining_after(self, attempts_made: int) -> int:
        return max(self.max_attempts - attempts_made, 0)

    def next_retry(self, attempts_made: int, failed_at: datetime) -> datetime | None:
        """When to try again after ``attempts_made`` attempts, the last failing at
        ``failed_at``; None when the schedule has no attempt left."""
        if attempts_made >= self.max_attempts:
            return None
        return failed_at + self.gap_after(attempts_made)
