"""Proves that the ledger, the refunds and the payments agree."""

from __future__ import annotations

from dataclasses import dataclass

from repository import ledger
from repository.database import Database


@dataclass(frozen=True, slots=True)
class Issue:
    check: str
    entity_id: str
    currency: str
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class Totals:
    currency: str
    captured: int
    refunded: int
    pending: int
    ledger_debits: int
    ledger_credits: int


@dataclass(frozen=True, slots=True)
class Report:
    totals: list[Totals]
    issues: list[Issue]

    @property
    def balanced(self) -> bool:
        return not self.issues


async def reconcile(db: Database) -> Report:
    """Checks, in one repeatable-read snapshot: every journal balances; every payment's
    refunded and pending amounts equal its settled and in-progress refunds, its items, and
    its ledger entries; ledger debits equal credits per currency."""
    async with (
        db.connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        totals = [Totals(**dict(r)) for r in await ledger.totals(conn)]
        issues = [
            Issue("journal balances", r["entity_id"], r["currency"], r["expected"], r["actual"])
            for r in await ledger.unbalanced_journals(conn)
        ]
        issues += [
            Issue(r["check_name"], r["payment_id"], r["currency"], r["expected"], r["actual"])
            for r in await ledger.payment_mismatches(conn)
        ]
    issues += [
        Issue(
            "ledger balances per currency",
            t.currency,
            t.currency,
            t.ledger_debits,
            t.ledger_credits,
        )
        for t in totals
        if t.ledger_debits != t.ledger_credits
    ]
    return Report(totals, issues)
