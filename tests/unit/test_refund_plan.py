"""Refund plans: which items, net and tax, a full, amount or line-item refund reverses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.money import Money
from service.domain.refund_plan import (
    ItemBalance,
    ItemRefund,
    LineRequest,
    plan_amount,
    plan_full,
    plan_items,
)
from service.errors import FailedPrecondition, InsufficientRefundable, InvalidArgument

BALANCES = [
    ItemBalance("seat", net_left=10_000, tax_left=1_900),
    ItemBalance("addon", net_left=2_000, tax_left=0),
    ItemBalance("done", net_left=0, tax_left=0),
]


def _ids(plan: list[ItemRefund]) -> list[str]:
    return [p.item_id for p in plan]


def test_gross() -> None:
    assert ItemBalance("a", 100, 19).gross_left == 119
    assert ItemRefund("a", 100, 19).gross == 119


# --- plan_full -------------------------------------------------------------------------------


def test_plan_full_returns_everything_left() -> None:
    assert plan_full(BALANCES) == [
        ItemRefund("seat", 10_000, 1_900),
        ItemRefund("addon", 2_000, 0),
    ]


def test_plan_full_keeps_tax_only_items() -> None:
    assert plan_full([ItemBalance("t", 0, 50)]) == [ItemRefund("t", 0, 50)]


@pytest.mark.parametrize(
    "balances", [[], [ItemBalance("done", 0, 0)], [ItemBalance("a", 0, 0), ItemBalance("b", 0, 0)]]
)
def test_plan_full_with_nothing_left_raises(balances: list[ItemBalance]) -> None:
    with pytest.raises(InsufficientRefundable) as exc:
        plan_full(balances)
    assert isinstance(exc.value, FailedPrecondition)


# --- plan_amount -----------------------------------------------------------------------------


def test_plan_amount_full_amount_equals_plan_full() -> None:
    total = sum(b.gross_left for b in BALANCES)
    assert plan_amount(BALANCES, Money("USD", total)) == plan_full(BALANCES)


def test_plan_amount_example() -> None:
    # 1190 of 13900: 10000 / 1900 / 2000 pro rata.
    plan = plan_amount(BALANCES, Money("USD", 1_390))
    assert plan == [ItemRefund("seat", 1_000, 190), ItemRefund("addon", 200, 0)]


def test_plan_amount_drops_items_that_get_nothing() -> None:
    plan = plan_amount([ItemBalance("a", 1, 0), ItemBalance("b", 1000, 0)], Money("USD", 1))
    assert plan == [ItemRefund("b", 1, 0)]
    assert all(p.gross > 0 for p in plan)


def test_plan_amount_over_amount_raises() -> None:
    total = sum(b.gross_left for b in BALANCES)
    with pytest.raises(InsufficientRefundable) as exc:
        plan_amount(BALANCES, Money("USD", total + 1))
    assert exc.value.context["refundable"] == total
    assert "139.00 USD" in exc.value.message
    assert "139.01 USD" in exc.value.message


def test_plan_amount_with_nothing_left_raises() -> None:
    with pytest.raises(InsufficientRefundable):
        plan_amount([ItemBalance("done", 0, 0)], Money("JPY", 1))


balance_st = st.builds(
    ItemBalance,
    item_id=st.text(alphabet="abcdefghij", min_size=1, max_size=4),
    net_left=st.integers(min_value=0, max_value=10**9),
    tax_left=st.integers(min_value=0, max_value=10**8),
)
balances_st = st.lists(balance_st, min_size=1, max_size=10, unique_by=lambda b: b.item_id)


@st.composite
def balances_and_amount(draw: st.DrawFn) -> tuple[list[ItemBalance], int]:
    balances = draw(balances_st.filter(lambda bs: sum(b.gross_left for b in bs) > 0))
    amount = draw(st.integers(min_value=1, max_value=sum(b.gross_left for b in balances)))
    return balances, amount


@given(balances_and_amount(), st.sampled_from(["USD", "JPY", "KWD", "CLF"]))
def test_plan_amount_properties(case: tuple[list[ItemBalance], int], currency: str) -> None:
    balances, amount = case
    plan = plan_amount(balances, Money(currency, amount))
    assert sum(p.gross for p in plan) == amount
    by_id = {b.item_id: b for b in balances}
    assert len(set(_ids(plan))) == len(plan)
    for refund in plan:
        balance = by_id[refund.item_id]
        assert 0 <= refund.net <= balance.net_left
        assert 0 <= refund.tax <= balance.tax_left
        assert refund.gross > 0
    # The plan follows the order of the balances.
    order = [b.item_id for b in balances]
    assert _ids(plan) == [i for i in order if i in set(_ids(plan))]


@given(balances_and_amount())
def test_plan_amount_is_deterministic(case: tuple[list[ItemBalance], int]) -> None:
    balances, amount = case
    assert plan_amount(balances, Money("USD", amount)) == plan_amount(
        list(balances), Money("USD", amount)
    )


@given(balances_st, st.integers(min_value=1, max_value=10**6))
def test_plan_amount_over_refundable_raises(balances: list[ItemBalance], extra: int) -> None:
    left = sum(b.gross_left for b in balances)
    with pytest.raises(InsufficientRefundable):
        plan_amount(balances, Money("USD", left + extra))


# --- plan_items ------------------------------------------------------------------------------


def test_plan_items_defaults_to_whole_item() -> None:
    plan = plan_items(BALANCES, [LineRequest("seat", None)], "USD")
    assert plan == [ItemRefund("seat", 10_000, 1_900)]


def test_plan_items_partial_gross_is_split_pro_rata() -> None:
    plan = plan_items(BALANCES, [LineRequest("seat", 1_190)], "USD")
    assert plan == [ItemRefund("seat", 1_000, 190)]


def test_plan_items_keeps_request_order() -> None:
    plan = plan_items(BALANCES, [LineRequest("addon", 500), LineRequest("seat", None)], "USD")
    assert plan == [ItemRefund("addon", 500, 0), ItemRefund("seat", 10_000, 1_900)]


@given(
    net=st.integers(min_value=0, max_value=10**9),
    tax=st.integers(min_value=0, max_value=10**8),
    data=st.data(),
)
def test_plan_items_partial_split_sums_exactly(net: int, tax: int, data: st.DataObject) -> None:
    if net + tax == 0:
        return
    gross = data.draw(st.integers(min_value=1, max_value=net + tax), label="gross")
    [refund] = plan_items([ItemBalance("i", net, tax)], [LineRequest("i", gross)], "USD")
    assert refund.item_id == "i"
    assert refund.gross == gross
    assert 0 <= refund.net <= net
    assert 0 <= refund.tax <= tax
    # Pro rata: within one minor unit of the exact tax share.
    assert abs(refund.tax * (net + tax) - gross * tax) < net + tax


def test_plan_items_duplicate_item_raises() -> None:
    with pytest.raises(InvalidArgument) as exc:
        plan_items(
            BALANCES,
            [LineRequest("seat", 10), LineRequest("addon", 10), LineRequest("seat", 20)],
            "USD",
        )
    assert exc.value.field == "items[2].item_id"
    assert "seat" in exc.value.message


def test_plan_items_unknown_item_raises() -> None:
    with pytest.raises(InvalidArgument) as exc:
        plan_items(BALANCES, [LineRequest("seat", 10), LineRequest("ghost", 10)], "USD")
    assert exc.value.field == "items[1].item_id"
    assert "ghost" in exc.value.message


def test_plan_items_over_item_raises() -> None:
    with pytest.raises(InsufficientRefundable) as exc:
        plan_items(BALANCES, [LineRequest("addon", 2_001)], "USD")
    assert exc.value.context["refundable"] == 2_000
    assert "items[0]" in exc.value.message
    assert "20.01 USD" in exc.value.message
    assert "20.00 USD" in exc.value.message


def test_plan_items_over_item_formats_in_the_currency() -> None:
    with pytest.raises(InsufficientRefundable) as exc:
        plan_items([ItemBalance("a", 1_000, 0)], [LineRequest("a", 1_001)], "JPY")
    assert "1001 JPY" in exc.value.message


@pytest.mark.parametrize("gross", [None, 1])
def test_plan_items_already_refunded_item_raises(gross: int | None) -> None:
    with pytest.raises(InsufficientRefundable):
        plan_items(BALANCES, [LineRequest("done", gross)], "USD")


def test_plan_items_whole_item_after_partial_refunds() -> None:
    plan = plan_items([ItemBalance("a", 333, 67)], [LineRequest("a", None)], "EUR")
    assert plan == [ItemRefund("a", 333, 67)]
