"""RetrySchedule: a validated, frozen policy value, and the pure decision it makes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.errors import InvalidArgument

CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_ATTEMPTS_LIMIT = 100
MAX_INTERVAL = timedelta(days=90)
DEFAULT_REFUND_SCHEDULE = "refund-default"


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
        if not self.intervals:
            return failed_at
        interval = self.intervals[min(max(attempts_made, 1), len(self.intervals)) - 1]
        return failed_at + interval
