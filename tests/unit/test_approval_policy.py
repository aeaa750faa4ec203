"""The approval policy: auto-approval, approver tiers, the refund window, four eyes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.approval_policy import (
    MAX_REQUIRED_APPROVALS,
    ApprovalTier,
    RefundPolicy,
    check_approver,
)
from service.domain.money import Money
from service.errors import FailedPrecondition, InvalidArgument, PermissionDenied

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
RECENT = NOW - timedelta(days=10)
OLD = NOW - timedelta(days=400)


def usd(minor_units: int) -> Money:
    return Money("USD", minor_units)


def tier(currency: str, min_amount: int, approvals: int) -> ApprovalTier:
    return ApprovalTier(Money(currency, min_amount), approvals)


POLICY = RefundPolicy(
    auto_approve={"USD": 5000, "JPY": 1000},
    tiers=(
        tier("USD", 10_000, 2),
        tier("USD", 100_000, 3),
        tier("EUR", 50_000, 4),
    ),
    refund_window=timedelta(days=90),
)


# --- auto-approval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (usd(1), True),
        (usd(4999), True),
        (usd(5000), True),  # at the threshold
        (usd(5001), False),  # above it
        (usd(1_000_000), False),
        (Money("JPY", 1000), True),
        (Money("JPY", 1001), False),
        (Money("EUR", 1), False),  # no threshold for EUR: never auto
        (Money("KWD", 1), False),
    ],
)
def test_auto_approval_threshold(amount: Money, expected: bool) -> None:
    assert POLICY.is_auto_approved(amount, RECENT, NOW) is expected


def test_outside_window_is_never_auto_approved() -> None:
    assert not POLICY.is_auto_approved(usd(1), OLD, NOW)
    assert not POLICY.is_auto_approved(usd(1), NOW - timedelta(days=90, seconds=1), NOW)


def test_window_boundary_is_inclusive() -> None:
    at_edge = NOW - timedelta(days=90)
    assert POLICY.within_window(at_edge, NOW)
    assert POLICY.is_auto_approved(usd(1), at_edge, NOW)
    assert not POLICY.within_window(at_edge - timedelta(microseconds=1), NOW)


def test_default_policy_auto_approves_nothing() -> None:
    policy = RefundPolicy()
    assert policy.refund_window == timedelta(days=180)
    assert not policy.is_auto_approved(usd(1), RECENT, NOW)
    assert policy.required_approvals(usd(10**12)) == 1


def test_zero_threshold_auto_approves_no_positive_amount() -> None:
    policy = RefundPolicy(auto_approve={"USD": 0})
    assert not policy.is_auto_approved(usd(1), RECENT, NOW)


@given(
    threshold=st.integers(min_value=0, max_value=10**9),
    amount=st.integers(min_value=1, max_value=10**9),
    age_days=st.integers(min_value=0, max_value=400),
)
def test_auto_approval_property(threshold: int, amount: int, age_days: int) -> None:
    policy = RefundPolicy(auto_approve={"USD": threshold}, refund_window=timedelta(days=180))
    captured = NOW - timedelta(days=age_days)
    expected = amount <= threshold and age_days <= 180
    assert policy.is_auto_approved(usd(amount), captured, NOW) is expected
    assert not policy.is_auto_approved(Money("EUR", amount), captured, NOW)


# --- tiers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (usd(1), 1),  # below every tier
        (usd(9_999), 1),
        (usd(10_000), 2),  # at the tier's minimum
        (usd(99_999), 2),
        (usd(100_000), 3),  # highest matching tier wins
        (usd(10**12), 3),
        (Money("EUR", 49_999), 1),
        (Money("EUR", 50_000), 4),
        (Money("JPY", 10**9), 1),  # tiers are per currency
        (Money("KWD", 100_000), 1),
    ],
)
def test_required_approvals_by_tier(amount: Money, expected: int) -> None:
    assert POLICY.required_approvals(amount) == expected


def test_tier_order_does_not_matter() -> None:
    reordered = RefundPolicy(tiers=tuple(reversed(POLICY.tiers)))
    for minor_units in (1, 10_000, 50_000, 100_000, 500_000):
        assert reordered.required_approvals(usd(minor_units)) == POLICY.required_approvals(
            usd(minor_units)
        )


@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=1, max_value=10**7))
def test_required_approvals_never_decrease_with_amount(a: int, b: int) -> None:
    low, high = sorted((a, b))
    policy = RefundPolicy(tiers=(tier("USD", 1000, 2), tier("USD", 100_000, 5)))
    assert policy.required_approvals(usd(low)) <= policy.required_approvals(usd(high))
    assert 1 <= policy.required_approvals(usd(low)) <= MAX_REQUIRED_APPROVALS


# --- validation ------------------------------------------------------------------------------


def _field_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return exc.value.field


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(auto_approve={"USD": -1})
    assert _field_of(exc) == "policy.auto_approval_thresholds.max_amount.minor_units"


@pytest.mark.parametrize("code", ["usd", "ABC", "XAU", ""])
def test_threshold_currency_must_be_iso(code: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(auto_approve={code: 100})
    assert _field_of(exc) == "policy.auto_approval_thresholds.max_amount.currency_code"


@pytest.mark.parametrize("code", ["usd", "ABC", "XAU"])
def test_tier_currency_must_be_iso(code: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(tiers=(tier("USD", 100, 2), tier(code, 100, 2)))
    assert _field_of(exc) == "policy.approval_tiers[1].min_amount.currency_code"


@pytest.mark.parametrize("min_amount", [0, -1])
def test_tier_min_amount_must_be_positive(min_amount: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(tiers=(tier("USD", min_amount, 2),))
    assert _field_of(exc) == "policy.approval_tiers[0].min_amount.minor_units"


@pytest.mark.parametrize("approvals", [0, -1, MAX_REQUIRED_APPROVALS + 1, 11])
def test_required_approvals_out_of_range(approvals: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(tiers=(tier("USD", 100, 2), tier("USD", 200, approvals)))
    assert _field_of(exc) == "policy.approval_tiers[1].required_approvals"


@pytest.mark.parametrize("approvals", [1, MAX_REQUIRED_APPROVALS])
def test_required_approvals_at_the_limits(approvals: int) -> None:
    policy = RefundPolicy(tiers=(tier("USD", 100, approvals),))
    assert policy.required_approvals(usd(100)) == approvals


def test_duplicate_tier_is_refused() -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(tiers=(tier("USD", 100, 2), tier("EUR", 100, 2), tier("USD", 100, 3)))
    assert _field_of(exc) == "policy.approval_tiers[2].min_amount"


def test_same_minimum_in_different_currencies_is_fine() -> None:
    policy = RefundPolicy(tiers=(tier("USD", 100, 2), tier("EUR", 100, 3)))
    assert policy.required_approvals(usd(100)) == 2
    assert policy.required_approvals(Money("EUR", 100)) == 3


@pytest.mark.parametrize("window", [timedelta(0), timedelta(seconds=-1), timedelta(days=-30)])
def test_non_positive_window_is_refused(window: timedelta) -> None:
    with pytest.raises(InvalidArgument) as exc:
        RefundPolicy(refund_window=window)
    assert _field_of(exc) == "policy.refund_window"


# --- check_approver --------------------------------------------------------------------------


def _check(
    *,
    approver: str = "bob",
    requester: str = "alice",
    previous: tuple[str, ...] = (),
    is_admin: bool = False,
    captured_at: datetime = RECENT,
) -> None:
    check_approver(
        approver=approver,
        requester=requester,
        previous_approvers=previous,
        is_admin=is_admin,
        captured_at=captured_at,
        now=NOW,
        policy=POLICY,
    )


def test_distinct_approver_inside_window_may_approve() -> None:
    _check()
    _check(previous=("carol",))


@pytest.mark.parametrize("is_admin", [False, True])
def test_requester_cannot_approve(is_admin: bool) -> None:
    with pytest.raises(PermissionDenied, match="four eyes"):
        _check(approver="alice", requester="alice", is_admin=is_admin)


@pytest.mark.parametrize("is_admin", [False, True])
def test_same_approver_twice_is_refused(is_admin: bool) -> None:
    with pytest.raises(FailedPrecondition) as exc:
        _check(approver="bob", previous=("carol", "bob"), is_admin=is_admin)
    assert "bob" in exc.value.message
    assert not isinstance(exc.value, PermissionDenied)


def test_previous_approvers_may_be_a_one_shot_iterable() -> None:
    with pytest.raises(FailedPrecondition):
        check_approver(
            approver="bob",
            requester="alice",
            previous_approvers=iter(["bob"]),
            is_admin=False,
            captured_at=RECENT,
            now=NOW,
            policy=POLICY,
        )


def test_outside_window_non_admin_is_denied() -> None:
    with pytest.raises(PermissionDenied, match="refund window"):
        _check(captured_at=OLD)


def test_outside_window_admin_is_allowed() -> None:
    _check(captured_at=OLD, is_admin=True)


def test_four_eyes_is_checked_before_the_window() -> None:
    with pytest.raises(PermissionDenied, match="four eyes"):
        _check(approver="alice", requester="alice", captured_at=OLD, is_admin=True)
