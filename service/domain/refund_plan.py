"""Which items, net and tax, a refund reverses: full, by amount, or by line items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.domain.allocation import allocate
from service.domain.money import Money
from service.errors import InsufficientRefundable, InvalidArgument


@dataclass(frozen=True, slots=True)
class ItemBalance:
    """What is left to refund of one billing event item."""

    item_id: str
    net_left: int
    tax_left: int

    @property
    def gross_left(self) -> int:
        return self.net_left + self.tax_left


@dataclass(frozen=True, slots=True)
class ItemRefund:
    item_id: str
    net: int
    tax: int

    @property
    def gross(self) -> int:
        return self.net + self.tax


@dataclass(frozen=True, slots=True)
class LineRequest:
    item_id: str
    gross: int | None  # None: everything left of the item


def _split_item(balance: ItemBalance, gross: int) -> ItemRefund:
    net, tax = allocate(gross, [balance.net_left, balance.tax_left])
    return ItemRefund(balance.item_id, net, tax)


def plan_full(balances: Sequence[ItemBalance]) -> list[ItemRefund]:
    plan = [ItemRefund(b.item_id, b.net_left, b.tax_left) for b in balances if b.gross_left]
    if not plan:
        raise InsufficientRefundable("the payment has nothing left to refund")
    return plan


def plan_amount(balances: Sequence[ItemBalance], amount: Money) -> list[ItemRefund]:
    """Spread ``amount`` over every item's remaining net and tax, pro rata."""
    left = sum(b.gross_left for b in balances)
    if amount.minor_units > left:
        raise InsufficientRefundable(
            f"amount {amount} exceeds the refundable {Money(amount.currency, left)}",
            refundable=left,
        )
    buckets = [w for b in balances for w in (b.net_left, b.tax_left)]
    parts = allocate(amount.minor_units, buckets)
    plan = [ItemRefund(b.item_id, parts[2 * i], parts[2 * i + 1]) for i, b in enumerate(balances)]
    return [p for p in plan if p.gross]


def plan_items(
    balances: Sequence[ItemBalance], lines: Sequence[LineRequest], currency: str
) -> list[ItemRefund]:
    by_id = {b.item_id: b for b in balances}
    seen: set[str] = set()
    plan: list[ItemRefund] = []
    for index, line in enumerate(lines):
        field = f"items[{index}]"
        if line.item_id in seen:
            raise InvalidArgument(f"{field}.item_id", f"{line.item_id!r} is listed twice")
        seen.add(line.item_id)
        balance = by_id.get(line.item_id)
        if balance is None:
            raise InvalidArgument(f"{field}.item_id", f"the payment has no item {line.item_id!r}")
        gross = balance.gross_left if line.gross is None else line.gross
        if gross > balance.gross_left:
            raise InsufficientRefundable(
                f"{field}: {Money(currency, gross)} exceeds what is left of item "
                f"{line.item_id!r}: {Money(currency, balance.gross_left)}",
                refundable=balance.gross_left,
            )
        if gross == 0:
            raise InsufficientRefundable(f"{field}: item {line.item_id!r} is already refunded")
        plan.append(_split_item(balance, gross))
    return plan
