"""The refund approval policy: a frozen, validated value and the pure decisions it makes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.domain.money import Money, validate_currency
from service.errors import FailedPrecondition, InvalidArgument, PermissionDenied

MAX_REQUIRED_APPROVALS = 10


@dataclass(frozen=True, slots=True)
class ApprovalTier:
    min_amount: Money
    required_approvals: int


@dataclass(frozen=True, slots=True)
class RefundPolicy:
    """Refunds up to ``auto_approve[currency]`` are approved by policy inside the window;
    others need approvers: the tiers whose ``min_amount`` the refund reaches each ask for a
    number of approvers and the largest number applies (one below every tier). Outside
    ``refund_window`` after capture only an admin may approve."""

    auto_approve: dict[str, int] = field(default_factory=dict)
    tiers: tuple[ApprovalTier, ...] = ()
    refund_window: timedelta = timedelta(days=180)
    version: int = 0
    updated_by: str = ""
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        for currency, threshold in self.auto_approve.items():
            validate_currency(currency, "policy.auto_approval_thresholds.max_amount.currency_code")
            if threshold < 0:
                raise InvalidArgument(
                    "policy.auto_approval_thresholds.max_amount.minor_units", "must not be negative"
                )
        seen: set[tuple[str, int]] = set()
        for index, tier in enumerate(self.tiers):
            name = f"policy.approval_tiers[{index}]"
            validate_currency(tier.min_amount.currency, f"{name}.min_amount.currency_code")
            if tier.min_amount.minor_units <= 0:
                raise InvalidArgument(f"{name}.min_amount.minor_units", "must be greater than zero")
            if not 1 <= tier.required_approvals <= MAX_REQUIRED_APPROVALS:
                raise InvalidArgument(
                    f"{name}.required_approvals",
                    f"must be between 1 and {MAX_REQUIRED_APPROVALS}",
                )
            key = (tier.min_amount.currency, tier.min_amount.minor_units)
            if key in seen:
                raise InvalidArgument(f"{name}.min_amount", "duplicates another tier")
            seen.add(key)
        if self.refund_window <= timedelta(0):
            raise InvalidArgument("policy.refund_window", "must be positive")

    def within_window(self, captured_at: datetime, now: datetime) -> bool:
        return now - captured_at <= self.refund_window

    def is_auto_approved(self, amount: Money, captured_at: datetime, now: datetime) -> bool:
        threshold = self.auto_approve.get(amount.currency)
        return (
            threshold is not None
            and amount.minor_units <= threshold
            and self.within_window(captured_at, now)
        )

    def required_approvals(self, amount: Money) -> int:
        matching = [
            tier.required_approvals
            for tier in self.tiers
            if tier.min_amount.currency == amount.currency
            and amount.minor_units >= tier.min_amount.minor_units
        ]
        return max(matching, default=1)


def check_approver(
    *,
    approver: str,
    requester: str,
    previous_approvers: Iterable[str],
    is_admin: bool,
    captured_at: datetime,
    now: datetime,
    policy: RefundPolicy,
) -> None:
    """Raise unless ``approver`` may approve now (four eyes, distinct
    approvers, the refund window)."""
    if approver == requester:
        raise PermissionDenied("the requester of a refund cannot approve it (four eyes)")
    if approver in set(previous_approvers):
        raise FailedPrecondition(f"{approver} has already approved this refund")
    if not policy.within_window(captured_at, now) and not is_admin:
        raise PermissionDenied(
            "the payment was captured outside the refund window: only an admin may approve"
        )
