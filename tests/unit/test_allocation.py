"""Largest-remainder allocation: the parts always sum to the whole and never over-refund."""

from __future__ import annotations

import math
from fractions import Fraction

import iso4217
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.allocation import allocate

weights_st = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=20)


@st.composite
def total_and_weights(draw: st.DrawFn) -> tuple[int, list[int]]:
    weights = draw(weights_st.filter(lambda ws: sum(ws) > 0))
    total = draw(st.integers(min_value=0, max_value=sum(weights)))
    return total, weights


@st.composite
def any_total_and_weights(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Also totals above the sum of weights (allocating more than is left)."""
    weights = draw(weights_st.filter(lambda ws: sum(ws) > 0))
    total = draw(st.integers(min_value=0, max_value=10 * sum(weights) + 10))
    return total, weights


@given(any_total_and_weights())
def test_parts_sum_to_total(case: tuple[int, list[int]]) -> None:
    total, weights = case
    parts = allocate(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total


@given(any_total_and_weights())
def test_no_part_is_negative(case: tuple[int, list[int]]) -> None:
    total, weights = case
    assert all(part >= 0 for part in allocate(total, weights))


@given(total_and_weights())
def test_no_part_exceeds_its_weight_when_total_fits(case: tuple[int, list[int]]) -> None:
    total, weights = case
    parts = allocate(total, weights)
    assert all(part <= weight for part, weight in zip(parts, weights, strict=True))


@given(any_total_and_weights())
def test_each_part_within_one_of_exact_share(case: tuple[int, list[int]]) -> None:
    total, weights = case
    weight_sum = sum(weights)
    for part, weight in zip(allocate(total, weights), weights, strict=True):
        exact = Fraction(total * weight, weight_sum)
        assert abs(part - exact) < 1
        # Largest remainder: a part is its floor or its floor plus one.
        assert part in (math.floor(exact), math.ceil(exact))


@given(any_total_and_weights())
def test_zero_weight_gets_nothing(case: tuple[int, list[int]]) -> None:
    total, weights = case
    for part, weight in zip(allocate(total, weights), weights, strict=True):
        if weight == 0:
            assert part == 0


@given(any_total_and_weights())
def test_deterministic(case: tuple[int, list[int]]) -> None:
    total, weights = case
    assert allocate(total, weights) == allocate(total, list(weights))
    assert allocate(total, tuple(weights)) == allocate(total, weights)


@given(total_and_weights())
def test_larger_weight_never_gets_less(case: tuple[int, list[int]]) -> None:
    total, weights = case
    parts = allocate(total, weights)
    for i in range(len(weights)):
        for j in range(len(weights)):
            if weights[i] > weights[j]:
                assert parts[i] >= parts[j]


@given(total_and_weights(), st.integers(min_value=1, max_value=1000))
def test_scaling_weights_changes_nothing(case: tuple[int, list[int]], factor: int) -> None:
    total, weights = case
    assert allocate(total, [w * factor for w in weights]) == allocate(total, weights)


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),
        (101, [1, 1, 1], [34, 34, 33]),
        (2, [1, 1, 1], [1, 1, 0]),
        (1, [1, 1, 1], [1, 0, 0]),
        (100, [1, 3], [25, 75]),
        (10, [3, 7], [3, 7]),
        (5, [1000, 1], [5, 0]),
        (1, [1, 2], [0, 1]),  # remainders 1/3 and 2/3: the larger wins
        (7, [2, 2, 3], [2, 2, 3]),
        (10, [0, 5, 0, 5], [0, 5, 0, 5]),
        (3, [0, 1, 1], [0, 2, 1]),
        (0, [5, 5], [0, 0]),
        (1000, [1000], [1000]),
        (1, [10**12, 10**12], [1, 0]),
        # Refund 1000 of an item of 10000 net + 1900 tax.
        (1000, [10000, 1900], [840, 160]),
    ],
)
def test_examples(total: int, weights: list[int], expected: list[int]) -> None:
    assert allocate(total, weights) == expected


def test_empty_weights_and_zero_total() -> None:
    assert allocate(0, []) == []


def test_all_zero_weights_with_zero_total() -> None:
    assert allocate(0, [0, 0, 0]) == [0, 0, 0]


@pytest.mark.parametrize("weights", [[], [0], [0, 0]])
def test_non_zero_total_over_zero_weights_raises(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="zero weights"):
        allocate(1, weights)


def test_negative_total_raises() -> None:
    with pytest.raises(ValueError, match="total"):
        allocate(-1, [1, 2])


@pytest.mark.parametrize("weights", [[-1], [1, -1], [5, 0, -3]])
def test_negative_weight_raises(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="weights"):
        allocate(1, weights)


ISO_EXPONENTS = sorted({c.exponent for c in iso4217.Currency if isinstance(c.exponent, int)})


@st.composite
def refund_over_items(draw: st.DrawFn) -> tuple[int, list[int], int]:
    """(exponent, item net and tax buckets, refund amount) in minor units of a currency."""
    exponent = draw(st.sampled_from(ISO_EXPONENTS))
    scale = 10**exponent
    count = draw(st.integers(min_value=1, max_value=8))
    buckets: list[int] = []
    for _ in range(count):
        net = draw(st.integers(min_value=0, max_value=100_000 * scale))
        rate_bp = draw(st.integers(min_value=0, max_value=3000))  # tax up to 30%
        buckets += [net, net * rate_bp // 10_000]
    left = sum(buckets)
    amount = draw(st.integers(min_value=0, max_value=left))
    return exponent, buckets, amount


def test_iso_exponents_cover_zero_to_four() -> None:
    assert {0, 2, 3, 4} <= set(ISO_EXPONENTS)


@given(refund_over_items())
def test_allocation_over_items_and_taxes_sums_exactly_in_every_exponent(
    case: tuple[int, list[int], int],
) -> None:
    _exponent, buckets, amount = case
    if sum(buckets) == 0:
        assert allocate(0, buckets) == [0] * len(buckets)
        return
    parts = allocate(amount, buckets)
    assert sum(parts) == amount
    assert all(0 <= part <= bucket for part, bucket in zip(parts, buckets, strict=True))
