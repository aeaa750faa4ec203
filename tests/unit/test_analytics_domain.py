"""The analytics figures' pure rules: duration buckets, percentiles from merged histograms,
and the rates."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from service.domain.analytics import Figures, bucket_floor, nearest_rank

seconds = st.integers(min_value=0, max_value=10**10)


@given(seconds)
def test_a_bucket_is_exact_below_64_s_and_then_less_than_a_32nd_below(value: int) -> None:
    floor = bucket_floor(value)
    if value < 64:
        assert floor == value
    else:
        assert floor <= value
        assert (value - floor) * 32 < value
    assert bucket_floor(floor) == floor


@given(seconds, seconds)
def test_buckets_keep_the_order_of_durations(a: int, b: int) -> None:
    if a <= b:
        assert bucket_floor(a) <= bucket_floor(b)


def test_there_are_32_buckets_per_doubling() -> None:
    for power in (6, 10, 20, 30):
        start = 1 << power
        assert len({bucket_floor(v) for v in range(start, 2 * start, max(1, start >> 8))}) == 32
    assert bucket_floor(-5) == 0


@given(st.lists(seconds, min_size=1, max_size=200), st.sampled_from([1, 50, 90, 99, 100]))
def test_a_percentile_of_merged_histograms_is_the_bucket_of_the_raw_percentile(
    values: list[int], percent: int
) -> None:
    """Split the durations into groups (as days or gateways would), histogram each, merge:
    the nearest-rank percentile is bucket_floor of the raw one."""
    histograms = [Counter(bucket_floor(v) for v in values[i::3]) for i in range(3)]
    merged: Counter[int] = Counter()
    for histogram in histograms:
        merged.update(histogram)
    rank = math.ceil(len(values) * percent / 100)
    assert nearest_rank(merged, percent) == bucket_floor(sorted(values)[rank - 1])


def test_no_durations_have_no_percentile() -> None:
    assert nearest_rank(Counter(), 50) is None
    assert nearest_rank(Counter({128: 0}), 90) is None


def test_rates_are_zero_without_a_denominator_and_merge_adds_everything() -> None:
    assert Figures().payment_success_rate == 0.0
    assert Figures().recovery_rate == 0.0
    assert Figures().attempts_per_recovery == 0.0
    a = Figures(retry_attempts=4, retry_successes=1, plans_recovered=1, plans_open=2)
    a.amount_recovered["USD"] = 500
    a.refund_count["SUCCEEDED", "EUR"] = 2
    b = Figures(retry_attempts=4, retry_successes=3, plans_recovered=1, plans_canceled=5)
    b.amount_recovered["USD"] = 250
    b.amount_recovered["JPY"] = 7
    b.recovery_retries = 6
    a.merge(b)
    assert a.payment_success_rate == 0.5
    assert a.recovery_rate == 0.5  # 2 recovered of 4: the 5 canceled are left out
    assert a.attempts_per_recovery == 3.0
    assert a.amount_recovered == Counter({"USD": 750, "JPY": 7})
    assert a.refund_count == Counter({("SUCCEEDED", "EUR"): 2})
    assert not a.empty
    assert Figures().empty
