"""Recovery metrics: the figures of one group, how groups merge, and percentiles from
mergeable histograms. No I/O: the roll-ups (and the raw tables, for checks) supply the counts.

Durations are kept as histograms so that days and groups merge by adding counts. A bucket is
named by its lower bound in whole seconds (``bucket_floor``): exact below 64 s, above that the
value rounded down to its 6 most significant bits, i.e. 32 buckets per doubling, each bucket's
lower bound less than 1/32 (3.1 %) below any duration in it. A percentile is the nearest-rank
one (the value at rank ceil(p * n) of the n durations sorted ascending) reported as its
bucket's lower bound: exactly ``bucket_floor`` of the percentile of the raw durations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

EXACT_BELOW = 64
SIGNIFICANT_BITS = 6


class GroupBy(StrEnum):
    DAY = "DAY"
    GATEWAY = "GATEWAY"
    DECLINE_CLASS = "DECLINE_CLASS"
    CURRENCY = "CURRENCY"


class Metric(StrEnum):
    TIME_TO_RECOVER = "TIME_TO_RECOVER"
    APPROVAL_LEAD_TIME = "APPROVAL_LEAD_TIME"


def bucket_floor(seconds: int) -> int:
    """The histogram bucket of a duration in whole seconds: its lower bound (the SQL function
    ``analytics_bucket`` is the same rule)."""
    if seconds < EXACT_BELOW:
        return max(seconds, 0)
    shift = seconds.bit_length() - SIGNIFICANT_BITS
    return (seconds >> shift) << shift


def nearest_rank(histogram: Mapping[int, int], percent: int) -> int | None:
    """The ``percent``-th percentile of the durations counted in ``histogram`` (bucket ->
    count), nearest-rank; None when it counts nothing."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, -(-total * percent // 100))  # ceil(total * percent / 100)
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket
    raise AssertionError("unreachable: the ranks add up to the total")


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass
class Figures:
    """What GetRecoveryMetrics reports for one group (or for all of them). Counts and amounts
    are exact integers; amounts are per currency (minor units), never summed across them."""

    # Retry attempts (source other than FAILURE) that reached the issuer, on their day.
    retry_attempts: int = 0
    retry_successes: int = 0
    # Plans (failed payments) on the day of their first failure, by where they ended.
    plans_recovered: int = 0
    plans_exhausted: int = 0
    plans_open: int = 0
    plans_canceled: int = 0
    amount_recovered: Counter[str] = field(default_factory=Counter)
    recovery_retries: int = 0  # counted retries of the recovered plans
    time_to_recover: Counter[int] = field(default_factory=Counter)  # bucket -> plans
    # Refunds on the day they were requested: (status, currency) -> count / amount.
    refund_count: Counter[tuple[str, str]] = field(default_factory=Counter)
    refund_amount: Counter[tuple[str, str]] = field(default_factory=Counter)
    approval_lead_time: Counter[int] = field(default_factory=Counter)  # bucket -> refunds
    pending_count: Counter[str] = field(default_factory=Counter)  # currency -> refunds
    pending_amount: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Figures) -> None:
        self.retry_attempts += other.retry_attempts
        self.retry_successes += other.retry_successes
        self.plans_recovered += other.plans_recovered
        self.plans_exhausted += other.plans_exhausted
        self.plans_open += other.plans_open
        self.plans_canceled += other.plans_canceled
        self.recovery_retries += other.recovery_retries
        self.amount_recovered.update(other.amount_recovered)
        self.time_to_recover.update(other.time_to_recover)
        self.refund_count.update(other.refund_count)
        self.refund_amount.update(other.refund_amount)
        self.approval_lead_time.update(other.approval_lead_time)
        self.pending_count.update(other.pending_count)
        self.pending_amount.update(other.pending_amount)

    @property
    def empty(self) -> bool:
        return self == Figures()

    @property
    def payment_success_rate(self) -> float:
        return _ratio(self.retry_successes, self.retry_attempts)

    @property
    def recovery_rate(self) -> float:
        """Recovered / (recovered + exhausted + open): canceled plans are left out (someone
        stopped them; the retries neither won nor lost)."""
        decided = self.plans_recovered + self.plans_exhausted + self.plans_open
        return _ratio(self.plans_recovered, decided)

    @property
    def attempts_per_recovery(self) -> float:
        return _ratio(self.recovery_retries, self.plans_recovered)

    @property
    def approvals_measured(self) -> int:
        return sum(self.approval_lead_time.values())


@dataclass(frozen=True)
class RecoveryMetrics:
    """The answer: the local days covered, one entry per group (every day of the range when
    grouped by day), everything together, and the time every change committed before is
    included."""

    time_zone: str
    first_day: date
    last_day: date
    group_by: GroupBy
    groups: list[tuple[str, Figures]]
    total: Figures
    rolled_up_at: datetime | None  # None: the zone has not been folded yet
