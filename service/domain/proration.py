"""What a cancelled subscription gets back of its last paid period, in integer minor units.

A policy comes with the cancellation: NONE refunds nothing, FULL everything of the payment that
is not refunded yet, PRORATED the unused part of each item's service period. The unused part of
an item is ``(period end - cancel time) / (period end - period start)``, clamped to [0, 1] (a
cancellation before the period starts leaves all of it unused, one after its end none), and it
applies to what is *left* of the item: a customer who already got part of the item back gets
the same share of the rest, never more than was paid.

Rounding: the exact unused value of the whole payment is a rational number; its floor is the
refund (the customer never gets more than the unused time is worth, and loses less than one
minor unit), allocated over the items by the largest-remainder method with the exact values as
weights, so the parts sum to the refund and no item gets more than the ceiling of its exact
share (which never exceeds what is left of it). Each item's part is then split between net and
tax pro rata to what is left of each, exactly as ``refund_plan.plan_items`` splits a line-item
refund, so the refund service plans the same lines from the same per-item amounts.

Items without a service period are one-off charges (a setup fee, a device): PRORATED leaves them
alone, FULL refunds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from service.domain.allocation import allocate
from service.domain.refund_plan import ItemRefund

_MICROSECOND = timedelta(microseconds=1)


class CancellationPolicy(StrEnum):
    NONE = "NONE"
    PRORATED = "PRORATED"
    FULL = "FULL"


@dataclass(frozen=True, slots=True)
class PaidItem:
    """One billing event item of the paid period: what is left of it, and its service period."""

    item_id: str
    net_left: int
    tax_left: int
    period_start: datetime | None = None
    period_end: datetime | None = None

    def __post_init__(self) -> None:
        if self.net_left < 0 or self.tax_left < 0:
            raise ValueError("what is left of an item cannot be negative")
        if (self.period_start is None) != (self.period_end is None):
            raise ValueError("a service period needs both its start and its end")
        if self.period_start and self.period_end and self.period_end < self.period_start:
            raise ValueError("a service period cannot end before it starts")

    @property
    def gross_left(self) -> int:
        return self.net_left + self.tax_left

    @property
    def has_period(self) -> bool:
        return self.period_start is not None


def unused_fraction(item: PaidItem, cancel_at: datetime) -> Fraction:
    """The share of ``item``'s service period after ``cancel_at``, exact, in [0, 1]; zero for an
    item without a period (nothing of a one-off charge goes unused by time)."""
    if item.period_start is None or item.period_end is None:
        return Fraction(0)
    if cancel_at <= item.period_start:
        return Fraction(1)
    if cancel_at >= item.period_end:
        return Fraction(0)
    unused = (item.period_end - cancel_at) // _MICROSECOND
    length = (item.period_end - item.period_start) // _MICROSECOND
    return Fraction(unused, length)


def split_net_tax(item: PaidItem, gross: int) -> ItemRefund:
    """``gross`` of the item split between net and tax pro rata to what is left of each (the
    split ``refund_plan.plan_items`` makes for a line-item refund of the same amount)."""
    net, tax = allocate(gross, [item.net_left, item.tax_left])
    return ItemRefund(item.item_id, net, tax)


def prorated(items: Sequence[PaidItem], cancel_at: datetime) -> list[ItemRefund]:
    """The unused part of every item with a service period, allocated by largest remainder."""
    exact = [item.gross_left * unused_fraction(item, cancel_at) for item in items]
    total = math.floor(sum(exact, Fraction(0)))
    if total == 0:
        return []
    scale = math.lcm(*(value.denominator for value in exact))
    weights = [value.numerator * (scale // value.denominator) for value in exact]
    parts = allocate(total, weights)
    return [split_net_tax(item, part) for item, part in zip(items, parts, strict=True) if part]


def cancellation_refund(
    items: Sequence[PaidItem], policy: CancellationPolicy, cancel_at: datetime
) -> list[ItemRefund]:
    """The refund lines (item, net, tax) for a cancellation at ``cancel_at`` by ``policy``;
    empty when nothing is to be refunded."""
    if policy is CancellationPolicy.NONE:
        return []
    if policy is CancellationPolicy.FULL:
        return [ItemRefund(i.item_id, i.net_left, i.tax_left) for i in items if i.gross_left]
    return prorated(items, cancel_at)
