"""Cancellation refunds: the unused part of the last paid period by policy, in minor units."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.proration import (
    CancellationPolicy,
    PaidItem,
    cancellation_refund,
    prorated,
    split_net_tax,
    unused_fraction,
)
from service.domain.refund_plan import ItemBalance, ItemRefund, LineRequest, plan_items

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)  # November: 30 days
P = CancellationPolicy


def plan_item(item_id: str = "plan", net: int = 9000, tax: int = 900) -> PaidItem:
    return PaidItem(item_id, net, tax, NOV_1, DEC_1)


# --- the unused share of a period --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cancel_at", "share"),
    [
        (NOV_1 - timedelta(days=3), Fraction(1)),  # before the period: all of it unused
        (NOV_1, Fraction(1)),
        (NOV_1 + timedelta(days=10), Fraction(2, 3)),
        (NOV_1 + timedelta(days=29, hours=12), Fraction(1, 60)),
        (DEC_1, Fraction(0)),
        (DEC_1 + timedelta(days=1), Fraction(0)),
    ],
)
def test_unused_fraction_of_a_period(cancel_at: datetime, share: Fraction) -> None:
    assert unused_fraction(plan_item(), cancel_at) == share


def test_an_item_without_a_period_has_nothing_unused() -> None:
    assert unused_fraction(PaidItem("setup", 500, 0), NOV_1) == 0


def test_a_zero_length_period_is_unused_only_before_it() -> None:
    instant = PaidItem("x", 100, 0, NOV_1, NOV_1)
    assert unused_fraction(instant, NOV_1 - timedelta(seconds=1)) == 1
    assert unused_fraction(instant, NOV_1) == 1
    assert unused_fraction(instant, NOV_1 + timedelta(seconds=1)) == 0


def test_microseconds_count() -> None:
    cancel = NOV_1 + timedelta(microseconds=1)
    whole = (DEC_1 - NOV_1) // timedelta(microseconds=1)
    assert unused_fraction(plan_item(), cancel) == Fraction(whole - 1, whole)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"net_left": -1, "tax_left": 0},
        {"net_left": 0, "tax_left": -1},
        {"net_left": 1, "tax_left": 0, "period_start": NOV_1},
        {"net_left": 1, "tax_left": 0, "period_end": DEC_1},
        {"net_left": 1, "tax_left": 0, "period_start": DEC_1, "period_end": NOV_1},
    ],
)
def test_paid_item_refuses_impossible_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"item|period"):
        PaidItem("x", **kwargs)  # type: ignore[arg-type]


# --- policies --------------------------------------------------------------------------------


def test_none_refunds_nothing() -> None:
    assert cancellation_refund([plan_item()], P.NONE, NOV_1) == []


def test_full_refunds_everything_left_including_one_off_items() -> None:
    items = [plan_item(), PaidItem("setup", 500, 50), PaidItem("done", 0, 0, NOV_1, DEC_1)]
    assert cancellation_refund(items, P.FULL, DEC_1 + timedelta(days=5)) == [
        ItemRefund("plan", 9000, 900),
        ItemRefund("setup", 500, 50),
    ]


def test_prorated_ten_days_into_a_thirty_day_month() -> None:
    # README's example: 90.00 + 9.00 tax for November, cancelled on the 11th: 20/30 unused.
    items = [plan_item(), PaidItem("seats", 5000, 500)]  # seats: a one-off charge
    assert cancellation_refund(items, P.PRORATED, NOV_1 + timedelta(days=10)) == [
        ItemRefund("plan", 6000, 600)
    ]


def test_prorated_rounds_the_total_down_and_allocates_the_remainder() -> None:
    # Three items of 1.00 each, a third of the period unused: 3 x 33.33.. = exactly 100.
    items = [PaidItem(name, 100, 0, NOV_1, DEC_1) for name in "abc"]
    lines = prorated(items, NOV_1 + timedelta(days=20))
    assert sum(line.gross for line in lines) == 100
    assert sorted(line.gross for line in lines) == [33, 33, 34]
    # Two of them: 66.66.. rounds down to 66, one minor unit short of the exact value.
    lines = prorated(items[:2], NOV_1 + timedelta(days=20))
    assert [line.gross for line in lines] == [33, 33]


def test_prorated_applies_to_what_is_left_of_an_item() -> None:
    # 50.00 of the 99.00 were refunded already; 2/3 of the remaining 49.00 is unused.
    item = PaidItem("plan", 4455, 445, NOV_1, DEC_1)
    lines = prorated([item], NOV_1 + timedelta(days=10))
    assert sum(line.gross for line in lines) == math.floor(Fraction(4900 * 2, 3))


def test_prorated_items_with_their_own_periods() -> None:
    yearly = PaidItem("support", 12_000, 0, NOV_1, NOV_1 + timedelta(days=360))
    monthly = plan_item()
    lines = prorated([yearly, monthly], NOV_1 + timedelta(days=15))
    assert lines == [ItemRefund("support", 11_500, 0), ItemRefund("plan", 4500, 450)]


def test_nothing_when_the_period_is_over_or_fully_refunded() -> None:
    assert prorated([plan_item()], DEC_1) == []
    assert prorated([plan_item(net=0, tax=0)], NOV_1) == []
    assert cancellation_refund([plan_item(net=0, tax=0)], P.FULL, NOV_1) == []


def test_split_net_tax_is_the_refund_plans_split() -> None:
    item = plan_item(net=9001, tax=899)
    gross = 3333
    [planned] = plan_items(
        [ItemBalance(item.item_id, item.net_left, item.tax_left)],
        [LineRequest("plan", gross)],
        "USD",
    )
    assert split_net_tax(item, gross) == planned


# --- properties ------------------------------------------------------------------------------

START = datetime(2026, 1, 1, tzinfo=UTC)
offsets = st.integers(min_value=0, max_value=400 * 86_400 * 10**6)  # microseconds, ~400 days


@st.composite
def paid_items(draw: st.DrawFn) -> list[PaidItem]:
    items = []
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        net = draw(st.integers(min_value=0, max_value=10**12))
        tax = draw(st.integers(min_value=0, max_value=10**11))
        if draw(st.booleans()):
            start = START + timedelta(microseconds=draw(offsets))
            end = start + timedelta(microseconds=draw(offsets))
            items.append(PaidItem(f"i{index}", net, tax, start, end))
        else:
            items.append(PaidItem(f"i{index}", net, tax))
    return items


cancel_times = offsets.map(lambda us: START + timedelta(microseconds=us))


@given(paid_items(), cancel_times)
def test_prorated_is_the_floor_of_the_exact_unused_value(
    items: list[PaidItem], cancel_at: datetime
) -> None:
    exact = sum((i.gross_left * unused_fraction(i, cancel_at) for i in items), Fraction(0))
    lines = prorated(items, cancel_at)
    assert sum(line.gross for line in lines) == math.floor(exact)


@given(paid_items(), cancel_times)
def test_prorated_never_exceeds_what_is_left_nor_an_items_share_by_a_unit(
    items: list[PaidItem], cancel_at: datetime
) -> None:
    by_id = {i.item_id: i for i in items}
    for line in prorated(items, cancel_at):
        item = by_id[line.item_id]
        assert item.has_period
        assert 0 <= line.net <= item.net_left
        assert 0 <= line.tax <= item.tax_left
        assert line.gross > 0
        assert line.gross <= math.ceil(item.gross_left * unused_fraction(item, cancel_at))
        assert line == split_net_tax(item, line.gross)


@given(paid_items(), cancel_times, cancel_times)
def test_cancelling_later_never_refunds_more(
    items: list[PaidItem], first: datetime, second: datetime
) -> None:
    early, late = sorted((first, second))
    total_early = sum(line.gross for line in prorated(items, early))
    total_late = sum(line.gross for line in prorated(items, late))
    assert total_late <= total_early


@given(paid_items())
def test_cancelling_before_every_period_refunds_every_periodic_item_in_full(
    items: list[PaidItem],
) -> None:
    lines = prorated(items, START - timedelta(days=1))
    assert lines == [
        ItemRefund(i.item_id, i.net_left, i.tax_left)
        for i in items
        if i.has_period and i.gross_left
    ]


@given(paid_items(), cancel_times)
def test_full_is_everything_left_and_none_is_nothing(
    items: list[PaidItem], cancel_at: datetime
) -> None:
    full = cancellation_refund(items, P.FULL, cancel_at)
    assert sum(line.gross for line in full) == sum(i.gross_left for i in items)
    assert all(line.gross for line in full)
    assert cancellation_refund(items, P.NONE, cancel_at) == []
    prorated_total = sum(line.gross for line in cancellation_refund(items, P.PRORATED, cancel_at))
    assert prorated_total <= sum(line.gross for line in full)
