"""The results of a simulation per strategy: recovery rate, revenue recovered (integer minor units
per currency: money is never a float), attempts, attempts per recovery, network-rule violations
(found by the independent checker) and the median days to recovery; as an aligned table or JSON.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from service.domain.decline_codes import CardNetwork, DeclineClass
from service.domain.money import Money
from service.simulation.checker import RULE_IDS, SimAttempt, count_violations
from service.simulation.model import DeclineChoice, RecoverabilityModel

DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SimPayment:
    """One failed payment of the population: the same for every strategy."""

    index: int
    payment_id: str
    customer_id: str
    amount: Money
    zone: ZoneInfo
    network: CardNetwork
    decline: DeclineChoice
    decline_class: DeclineClass  # of the first failure, by the real classify
    first_failed_at: datetime
    fix_at: datetime | None  # the customer adds a new payment method (None: never)
    new_network: CardNetwork  # the new method's network
    paid_elsewhere_at: datetime | None  # the customer pays another way (None: never)
    horizon_end: datetime  # nothing after this counts

    @property
    def card(self) -> str:
        return f"pm_sim_{self.index}_1"

    @property
    def new_card(self) -> str:
        return f"pm_sim_{self.index}_2"


class Outcome(StrEnum):
    RECOVERED = "RECOVERED"  # a retry succeeded
    PAID_ANOTHER_WAY = "PAID_ANOTHER_WAY"  # the plan was canceled: the customer paid otherwise
    EXHAUSTED = "EXHAUSTED"  # the engine stopped (rules, schedule, hard decline)
    OPEN = "OPEN"  # still waiting or scheduled at the horizon


@dataclass(frozen=True, slots=True)
class PaymentResult:
    payment: SimPayment
    outcome: Outcome
    attempts: tuple[SimAttempt, ...]  # the original failure first
    recovered_at: datetime | None = None
    recovered_with_new_method: bool = False
    guard_reschedules: int = 0  # the job's pre-attempt check moved or stopped an attempt

    @property
    def retries(self) -> int:
        return sum(1 for a in self.attempts if a.source != "FAILURE")


@dataclass(frozen=True, slots=True)
class StrategyResult:
    strategy: str
    description: str
    payments: int
    recovered: int
    recovered_with_new_method: int
    paid_another_way: int
    exhausted: int
    still_open: int
    attempts: int  # retries: the original failures are not counted
    guard_reschedules: int
    violations: Mapping[str, int]  # rule id -> attempts that broke it (independent checker)
    revenue_failed: Mapping[str, int]  # currency -> minor units
    revenue_recovered: Mapping[str, int]  # currency -> minor units
    median_days_to_recovery: float | None
    by_class: Mapping[str, tuple[int, int]]  # first decline's class -> (payments, recovered)

    @property
    def recovery_rate(self) -> float:
        return self.recovered / self.payments if self.payments else 0.0

    @property
    def attempts_per_recovery(self) -> float | None:
        return self.attempts / self.recovered if self.recovered else None

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def to_json(self) -> dict[str, Any]:
        per_recovery = self.attempts_per_recovery
        return {
            "strategy": self.strategy,
            "description": self.description,
            "payments": self.payments,
            "recovered": self.recovered,
            "recovery_rate": round(self.recovery_rate, 6),
            "recovered_with_new_method": self.recovered_with_new_method,
            "paid_another_way": self.paid_another_way,
            "exhausted": self.exhausted,
            "still_open": self.still_open,
            "attempts": self.attempts,
            "attempts_per_recovery": None if per_recovery is None else round(per_recovery, 4),
            "guard_reschedules": self.guard_reschedules,
            "violations": dict(self.violations),
            "total_violations": self.total_violations,
            "revenue_failed_minor_units": dict(self.revenue_failed),
            "revenue_recovered_minor_units": dict(self.revenue_recovered),
            "median_days_to_recovery": self.median_days_to_recovery,
            "by_decline_class": {
                name: {"payments": total, "recovered": recovered}
                for name, (total, recovered) in self.by_class.items()
            },
        }


def summarize(strategy: str, description: str, results: Sequence[PaymentResult]) -> StrategyResult:
    failed: Counter[str] = Counter()
    recovered_money: Counter[str] = Counter()
    by_class: dict[str, list[int]] = {c.value: [0, 0] for c in DeclineClass}
    outcomes: Counter[Outcome] = Counter()
    days: list[float] = []
    for result in results:
        payment = result.payment
        failed[payment.amount.currency] += payment.amount.minor_units
        recovered_money[payment.amount.currency] += 0
        outcomes[result.outcome] += 1
        by_class[payment.decline_class.value][0] += 1
        if result.outcome is Outcome.RECOVERED:
            assert result.recovered_at is not None
            recovered_money[payment.amount.currency] += payment.amount.minor_units
            by_class[payment.decline_class.value][1] += 1
            days.append((result.recovered_at - payment.first_failed_at) / DAY)
    violations = count_violations(a for r in results for a in r.attempts)
    return StrategyResult(
        strategy=strategy,
        description=description,
        payments=len(results),
        recovered=outcomes[Outcome.RECOVERED],
        recovered_with_new_method=sum(
            1 for r in results if r.outcome is Outcome.RECOVERED and r.recovered_with_new_method
        ),
        paid_another_way=outcomes[Outcome.PAID_ANOTHER_WAY],
        exhausted=outcomes[Outcome.EXHAUSTED],
        still_open=outcomes[Outcome.OPEN],
        attempts=sum(r.retries for r in results),
        guard_reschedules=sum(r.guard_reschedules for r in results),
        violations=MappingProxyType({rule: violations[rule] for rule in RULE_IDS}),
        revenue_failed=MappingProxyType(dict(sorted(failed.items()))),
        revenue_recovered=MappingProxyType(dict(sorted(recovered_money.items()))),
        median_days_to_recovery=round(statistics.median(days), 2) if days else None,
        by_class=MappingProxyType({k: (v[0], v[1]) for k, v in by_class.items()}),
    )


@dataclass(frozen=True, slots=True)
class SimulationReport:
    model: RecoverabilityModel
    seed: int
    payments: int
    results: tuple[StrategyResult, ...]

    def result(self, strategy: str) -> StrategyResult:
        return next(r for r in self.results if r.strategy == strategy)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": {
                "name": self.model.name,
                "source": self.model.source,
                "description": self.model.description,
            },
            "seed": self.seed,
            "payments": self.payments,
            "money": "integer minor units per ISO 4217 currency",
            "strategies": [r.to_json() for r in self.results],
        }


def _money(amounts: Mapping[str, int]) -> str:
    return ", ".join(str(Money(currency, units)) for currency, units in amounts.items())


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def format_report(report: SimulationReport) -> str:
    """The report as aligned text tables."""
    first = report.results[0] if report.results else None
    lines = [
        f"model: {report.model.name} ({report.model.source}); seed {report.seed}; "
        f"{report.payments} failed payments",
    ]
    if first is not None:
        lines.append(f"failed revenue: {_money(first.revenue_failed)}")
    lines.append("")
    header = [
        "strategy",
        "recovered",
        "rate",
        "attempts",
        "att/recovery",
        "violations",
        "median days",
        "new method",
        "paid other way",
    ]
    rows = []
    for r in report.results:
        per = r.attempts_per_recovery
        rows.append(
            [
                r.strategy,
                str(r.recovered),
                f"{r.recovery_rate:.1%}",
                str(r.attempts),
                "-" if per is None else f"{per:.2f}",
                str(r.total_violations),
                "-" if r.median_days_to_recovery is None else f"{r.median_days_to_recovery:.1f}",
                str(r.recovered_with_new_method),
                str(r.paid_another_way),
            ]
        )
    lines += _table(header, rows, set(range(1, len(header))))
    lines.append("")
    currencies = list(first.revenue_failed) if first is not None else []
    money_header = ["revenue recovered", *currencies]
    money_rows = [
        [r.strategy, *(str(Money(c, r.revenue_recovered.get(c, 0))) for c in currencies)]
        for r in report.results
    ]
    lines += _table(money_header, money_rows, set(range(1, len(money_header))))
    lines.append("")
    classes = [c.value for c in DeclineClass]
    class_header = ["recovered by first decline", *classes]
    class_rows = []
    for r in report.results:
        cells = [r.strategy]
        for c in classes:
            total, recovered = r.by_class.get(c, (0, 0))
            share = f" ({recovered / total:.0%})" if total else ""
            cells.append(f"{recovered}/{total}{share}")
        class_rows.append(cells)
    lines += _table(class_header, class_rows, set(range(1, len(class_header))))
    broken = [r for r in report.results if r.total_violations]
    lines.append("")
    if broken:
        for r in broken:
            detail = ", ".join(f"{rule} {n}" for rule, n in r.violations.items() if n)
            lines.append(f"NETWORK-RULE VIOLATIONS in {r.strategy}: {detail}")
    else:
        lines.append(
            "network-rule violations (independent check of every attempt): none "
            f"({', '.join(RULE_IDS)})"
        )
    for r in report.results:
        lines.append(f"{r.strategy}: {r.description}")
    return "\n".join(lines) + "\n"
