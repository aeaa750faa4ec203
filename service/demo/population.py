"""The demo's population: customers, their invoices over the last days, which of them fail and
how the failures play out, and which payments get refunds. Pure and deterministic: the same
seed, customer index and anchor give the same customer, field for field, so a second run sends
the same requests and the service answers them from its idempotency records.

Each customer draws from a random stream of its own (seed and index), so ``--customers 200``
after ``--customers 40`` keeps the first 40 as they were and adds 160.

Amounts are integer minor units, from prices in major units times ``10 ** exponent`` of the
currency (ISO 4217: USD, EUR, GBP 2, JPY 0); tax is rounded half up to a minor unit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypeVar

from service.domain.money import currency_exponent

T = TypeVar("T")

# Failed payments fall in the last FAILURE_WINDOW_DAYS: the seeded schedules retry for 14
# (payment-fixed) and 21 days (payment-smart) after the first failure, and the service can
# only attempt now, so an older failure would be exhausted the moment it is recorded.
FAILURE_WINDOW_DAYS: Final = 19
# Failures older than this go on payment-smart, whose 21-day span still has room.
FIXED_SCHEDULE_MAX_AGE_DAYS: Final = 12
# About this share of all payments fail (concentrated in the failure window).
FAILURE_SHARE: Final = 0.12
REFUND_SHARE: Final = 0.15
BILLING_CYCLE: Final = timedelta(days=30)

# Small refunds stay at or below these (minor units); the demo sets them as the auto-approval
# thresholds of currencies that have none, so small refunds run without an approver.
SMALL_REFUND_MAX: Final[dict[str, int]] = {"USD": 1000, "EUR": 1000, "GBP": 800, "JPY": 1500}
CURRENCIES: Final = tuple(SMALL_REFUND_MAX)


@dataclass(frozen=True, slots=True)
class Region:
    currency: str
    time_zone: str
    country: str
    tax_basis_points: int  # VAT or sales tax on the subscription


# (region, weight): where customers are; a currency's regions share its weight.
REGIONS: Final[tuple[tuple[Region, int], ...]] = (
    (Region("USD", "America/New_York", "US", 0), 20),
    (Region("USD", "America/Chicago", "US", 625), 15),
    (Region("USD", "America/Los_Angeles", "US", 0), 15),
    (Region("EUR", "Europe/Berlin", "DE", 1900), 12),
    (Region("EUR", "Europe/Paris", "FR", 2000), 8),
    (Region("EUR", "Europe/Madrid", "ES", 2100), 5),
    (Region("GBP", "Europe/London", "GB", 2000), 15),
    (Region("JPY", "Asia/Tokyo", "JP", 1000), 10),
)

# Monthly prices in major units (yen for JPY): starter, pro, business, and one extra seat.
PRICES: Final[dict[str, dict[str, int]]] = {
    "USD": {"starter": 19, "pro": 49, "business": 199, "seat": 9},
    "EUR": {"starter": 17, "pro": 45, "business": 179, "seat": 8},
    "GBP": {"starter": 15, "pro": 39, "business": 159, "seat": 7},
    "JPY": {"starter": 2200, "pro": 5500, "business": 22000, "seat": 1000},
}
TIERS: Final = (("starter", 50), ("pro", 35), ("business", 15))
NETWORKS: Final = (("VISA", 60), ("MASTERCARD", 35), ("AMEX", 5))

# How a payment's refunds go at the sandbox gateway (payment metadata sandbox_refund_outcome).
REFUND_OUTCOMES: Final = (
    ("succeed", 82),
    ("pending_then_succeed", 7),
    ("fail_then_succeed:1", 7),
    ("fail", 3),
    ("requires_action", 1),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of failed payment: the decline the billing system reports, how the sandbox
    answers the retries (``charge_outcome``, ``{k}`` filled with the retries to recovery),
    and what the demo does about it."""

    name: str
    weight: int
    decline_code: str
    charge_outcome: str
    visa_response_code: str = ""
    mc_advice_code: str = ""
    networks: frozenset[str] | None = None  # the card networks it happens on; None: any
    wallet: bool | None = None  # needs a second card on file (True), none (False), either
    recovers_after: tuple[int, ...] = ()  # retries until the money comes in (drawn)
    retries: int = 0  # RetryNow calls the demo makes at most (when not recovering)
    fixed_schedule: bool | None = None  # payment-fixed (True), payment-smart (False), either
    adds_card: bool = False  # the customer adds a new card (AddPaymentMethod), then a retry
    pays_another_way: bool = False  # the customer pays on the hosted page (RecordPayment)


VISA: Final = frozenset({"VISA"})
MASTERCARD: Final = frozenset({"MASTERCARD"})

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario(
        "insufficient_funds",
        22,
        "insufficient_funds",
        "decline_then_succeed:{k}:insufficient_funds",
        recovers_after=(1, 1, 2, 2, 3),
    ),
    Scenario(
        "insufficient_funds (Visa 51)",
        10,
        "insufficient_funds",
        "decline_then_succeed:{k}:insufficient_funds",
        visa_response_code="51",
        networks=VISA,
        recovers_after=(1, 2, 3),
    ),
    Scenario(
        "insufficient_funds, never recovers",
        6,
        "insufficient_funds",
        "decline:insufficient_funds",
        retries=4,
        fixed_schedule=True,
    ),
    Scenario(
        "do_not_honor",
        10,
        "do_not_honor",
        "decline_then_succeed:{k}:do_not_honor",
        recovers_after=(1, 2),
    ),
    Scenario(
        "do_not_honor, never recovers",
        5,
        "do_not_honor",
        "decline:do_not_honor",
        retries=4,
        fixed_schedule=True,
    ),
    Scenario(
        "processing_error",
        4,
        "processing_error",
        "decline_then_succeed:{k}:processing_error",
        recovers_after=(1,),
    ),
    Scenario(
        "mastercard:24 (retry after 1 hour)",
        4,
        "insufficient_funds",
        "decline_then_succeed:{k}:insufficient_funds",
        mc_advice_code="24",
        networks=MASTERCARD,
        recovers_after=(1,),
    ),
    Scenario(
        "expired_card, card on file",
        8,
        "expired_card",
        "decline_then_succeed:{k}:expired_card",
        wallet=True,
        recovers_after=(1,),
    ),
    Scenario(
        "expired_card, new card added",
        7,
        "expired_card",
        "decline_then_succeed:{k}:expired_card",
        wallet=False,
        recovers_after=(1,),
        adds_card=True,
    ),
    Scenario("expired_card, waiting", 4, "expired_card", "succeed", wallet=False),
    Scenario(
        "authentication_required, paid on the payment page",
        4,
        "authentication_required",
        "requires_action",
        wallet=False,
        pays_another_way=True,
    ),
    Scenario(
        "authentication_required, waiting",
        3,
        "authentication_required",
        "requires_action",
        wallet=False,
    ),
    Scenario(
        "mastercard:03 hard decline",
        5,
        "do_not_honor",
        "mastercard:03:do_not_honor",
        mc_advice_code="03",
        networks=MASTERCARD,
        wallet=False,
    ),
    Scenario(
        "stolen_card (Visa 43), card on file",
        3,
        "stolen_card",
        "decline_then_succeed:{k}:stolen_card",
        visa_response_code="43",
        networks=VISA,
        wallet=True,
        recovers_after=(1,),
    ),
    Scenario("lost_card hard decline", 3, "lost_card", "decline:lost_card", wallet=False),
)


@dataclass(frozen=True, slots=True)
class Card:
    payment_method_id: str
    network: str


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    description: str
    amount: int
    tax: int
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    scenario: Scenario
    charge_outcome: str
    schedule_code: str
    retries: int  # RetryNow calls at most
    new_card: Card | None  # added with AddPaymentMethod
    paid_at: datetime | None  # paid another way (RecordPayment of the invoice) at this time


@dataclass(frozen=True, slots=True)
class Refund:
    kind: str  # "small" (by amount, under the auto-approval threshold), "partial", "items", "full"
    amount: int | None  # minor units; None for "items" and "full"
    item_ids: tuple[str, ...]
    reason: str
    requester: float  # which requester asks: a fraction of the list of requesters
    fate: str  # if it needs people: "leave" pending, "approve", "reject" or "cancel"


@dataclass(frozen=True, slots=True)
class Invoice:
    number: int
    payment_id: str
    billing_event_id: str
    gateway_transaction_id: str
    at: datetime
    items: tuple[Item, ...]
    refund_outcome: str
    failure: Failure | None
    refund: Refund | None

    @property
    def total(self) -> int:
        return sum(i.amount + i.tax for i in self.items)


@dataclass(frozen=True, slots=True)
class Customer:
    index: int
    customer_id: str
    subscription_id: str
    region: Region
    tier: str
    seats: int
    card: Card
    wallet: tuple[Card, ...]
    invoices: tuple[Invoice, ...]

    @property
    def currency(self) -> str:
        return self.region.currency


def tag_of(seed: int) -> str:
    """The part of every id that names the seed: runs with other seeds never collide."""
    return f"demo{seed}"


def marker_payment_id(seed: int) -> str:
    """The payment the demo records first (customer 0's oldest invoice never fails): it
    carries the anchor time, so a later run with the same seed rebuilds the same times."""
    return f"pay_{tag_of(seed)}_0000_01"


def minor(currency: str, major: int) -> int:
    exponent = currency_exponent(currency)
    assert exponent is not None, currency
    factor: int = 10**exponent
    return major * factor


def tax_of(amount: int, basis_points: int) -> int:
    return (amount * basis_points + 5000) // 10000


def failure_probability(days: int) -> float:
    """Per invoice in the failure window, so that about FAILURE_SHARE of all invoices fail."""
    return min(0.3, FAILURE_SHARE * days / min(days, FAILURE_WINDOW_DAYS))


def _weighted(rng: random.Random, choices: Sequence[tuple[T, int]]) -> T:
    values = [c for c, _ in choices]
    return rng.choices(values, weights=[w for _, w in choices])[0]


def _add_month(at: datetime) -> datetime:
    """The same day and time a month later (the 31st becomes the month's last day)."""
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    for day in (at.day, 30, 29, 28):
        try:
            return at.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("every month has 28 days")


def _card(rng: random.Random, payment_method_id: str) -> Card:
    return Card(payment_method_id, _weighted(rng, NETWORKS))


def _scenario(rng: random.Random, network: str, has_wallet: bool) -> Scenario:
    fitting = [
        (s, s.weight)
        for s in SCENARIOS
        if (s.networks is None or network in s.networks)
        and (s.wallet is None or s.wallet == has_wallet)
    ]
    return _weighted(rng, fitting)


def _failure(
    rng: random.Random,
    prefix: str,
    card: Card,
    has_wallet: bool,
    age: timedelta,
    at: datetime,
) -> Failure:
    scenario = _scenario(rng, card.network, has_wallet)
    retries, outcome = scenario.retries, scenario.charge_outcome
    if scenario.recovers_after:
        retries = rng.choice(scenario.recovers_after)
        outcome = outcome.format(k=retries)
    fixed = scenario.fixed_schedule
    if fixed is None:
        fixed = rng.random() < 0.5
    if age > timedelta(days=FIXED_SCHEDULE_MAX_AGE_DAYS):
        fixed = False
    new_card = _card(rng, f"pm_{prefix}_new") if scenario.adds_card else None
    paid_at = None
    if scenario.pays_another_way:
        paid_after = timedelta(minutes=rng.randint(60, 40 * 60))
        paid_at = at + min(paid_after, age - timedelta(minutes=10))
    return Failure(
        scenario=scenario,
        charge_outcome=outcome,
        schedule_code="payment-fixed" if fixed else "payment-smart",
        retries=retries,
        new_card=new_card,
        paid_at=paid_at,
    )


REFUND_KINDS: Final = (("small", 40), ("partial", 20), ("items", 15), ("full", 25))
REFUND_REASONS: Final[dict[str, tuple[str, ...]]] = {
    "small": ("service outage credit", "goodwill credit", "charged before the plan change"),
    "partial": ("downgraded mid-cycle", "billed for unused seats", "price match"),
    "items": ("removed the extra seats", "downgraded to the free plan"),
    "full": ("duplicate charge", "requested_by_customer", "cancelled within the 14-day window"),
}
REFUND_FATES: Final = (("leave", 50), ("approve", 30), ("reject", 15), ("cancel", 5))


def _refund(rng: random.Random, invoice_items: tuple[Item, ...], currency: str) -> Refund:
    kind = _weighted(rng, REFUND_KINDS)
    percent = rng.randint(5, 25) if kind == "small" else rng.randint(40, 70)
    reason = rng.choice(REFUND_REASONS[kind])
    fate = _weighted(rng, REFUND_FATES)
    requester = rng.random()
    total = sum(i.amount + i.tax for i in invoice_items)
    amount: int | None = None
    item_ids: tuple[str, ...] = ()
    if kind == "small":
        amount = max(1, min(SMALL_REFUND_MAX[currency], total * percent // 100))
    elif kind == "partial":
        amount = max(1, total * percent // 100)
    elif kind == "items":
        item_ids = (invoice_items[-1].item_id,)  # the seats when billed, else the plan
    return Refund(kind, amount, item_ids, reason, requester, fate)


def _items(
    rng: random.Random, kind: str, customer: tuple[Region, str, int], at: datetime
) -> tuple[Item, ...]:
    region, tier, seats = customer
    prices = PRICES[region.currency]
    if kind == "seats":
        count = rng.choice((1, 2, 3, 5))
        amount = minor(region.currency, prices["seat"] * count)
        return (
            Item(
                "seats",
                f"{count} seats added mid-cycle",
                amount,
                tax_of(amount, region.tax_basis_points),
            ),
        )
    end = _add_month(at)
    amount = minor(region.currency, prices[tier])
    items = [
        Item(
            f"{tier}-plan",
            f"{tier.capitalize()} plan, {at:%B %Y}",
            amount,
            tax_of(amount, region.tax_basis_points),
            at,
            end,
        )
    ]
    if seats:
        amount = minor(region.currency, prices["seat"] * seats)
        items.append(
            Item(
                "seats",
                f"{seats} extra seats",
                amount,
                tax_of(amount, region.tax_basis_points),
                at,
                end,
            )
        )
    return tuple(items)


def customer(seed: int, index: int, days: int, anchor: datetime) -> Customer:
    """Customer ``index`` of the population of ``seed``: invoices over the ``days`` before
    ``anchor``. The random draws never depend on ``anchor`` (only the times do)."""
    rng = random.Random(f"refund-retry demo/{seed}/{index}")
    prefix = f"{tag_of(seed)}_{index:04d}"
    region = _weighted(rng, REGIONS)
    tier = _weighted(rng, TIERS)
    seats = 0 if tier == "starter" else rng.choice((0, 0, 0, 2, 5, 10))
    card = _card(rng, f"pm_{prefix}_1")
    wallet = (_card(rng, f"pm_{prefix}_2"),) if rng.random() < 0.3 else ()
    window = timedelta(days=days)
    age = timedelta(minutes=rng.randint(60, min(days, 30) * 24 * 60 - 1))
    charges: list[tuple[timedelta, str]] = []
    while age < window:
        charges.append((age, "renewal"))
        age += BILLING_CYCLE
    if rng.random() < 0.2:
        charges.append((timedelta(minutes=rng.randint(60, days * 24 * 60 - 1)), "seats"))
    charges.sort(key=lambda c: c[0], reverse=True)  # oldest first
    p_fail = failure_probability(days)
    invoices = []
    for number, (age, kind) in enumerate(charges, start=1):
        at = anchor - age
        items = _items(rng, kind, (region, tier, seats), at)
        refund_outcome = _weighted(rng, REFUND_OUTCOMES)
        fails = (
            rng.random() < p_fail
            and age <= timedelta(days=FAILURE_WINDOW_DAYS)
            and (index, number) != (0, 1)
        )
        failure = _failure(rng, prefix, card, bool(wallet), age, at) if fails else None
        refund = None
        if rng.random() < REFUND_SHARE and failure is None:
            refund = _refund(rng, items, region.currency)
        name = f"{prefix}_{number:02d}"
        invoices.append(
            Invoice(
                number=number,
                payment_id=f"pay_{name}",
                billing_event_id=f"be_{name}",
                gateway_transaction_id=f"sbpi_{name}",
                at=at,
                items=items,
                refund_outcome=refund_outcome,
                failure=failure,
                refund=refund,
            )
        )
    return Customer(
        index=index,
        customer_id=f"cus_{prefix}",
        subscription_id=f"sub_{prefix}",
        region=region,
        tier=tier,
        seats=seats,
        card=card,
        wallet=wallet,
        invoices=tuple(invoices),
    )


def population(seed: int, customers: int, days: int, anchor: datetime) -> list[Customer]:
    return [customer(seed, index, days, anchor) for index in range(customers)]
