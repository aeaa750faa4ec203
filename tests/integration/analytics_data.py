"""Random payment-retry and refund rows written straight into the raw tables, late changes to
them, and the recovery figures computed from the raw tables in Python: the independent
answer the roll-ups must agree with exactly.

The rows go in with plain SQL (not through the service) so that every shape the tables allow
appears: attempts in every outcome, outcomes changed after they were final, times moved
across local midnights, plans without a first failure, refunds approved more often than
needed. The generator is seeded: a failure names its seed and repeats.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from repository.database import Connection
from service.domain.analytics import Figures, GroupBy, bucket_floor

# A week around the start of US daylight saving time (2026-03-08), in zones whose midnights
# fall on whole, half and three-quarter hours of UTC.
ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham")
WINDOW_START = datetime(2026, 3, 4, tzinfo=UTC)
WINDOW_DAYS = 8
GATEWAYS = ("sandbox", "stripe", "adyen")
CURRENCIES = ("USD", "EUR", "JPY")
CLASSES = ("HARD", "SOFT", "CUSTOMER_ACTION")
PLAN_STATUSES = ("ACTIVE", "PAUSED", "RECOVERED", "EXHAUSTED", "CANCELED")
OUTCOMES = ("OPEN", "SUCCEEDED", "DECLINED", "REQUIRES_ACTION", "NOT_ATTEMPTED", "UNKNOWN")
REACHED = frozenset({"SUCCEEDED", "DECLINED", "REQUIRES_ACTION"})
REFUND_STATUSES = (
    "PENDING_APPROVAL",
    "APPROVED",
    "PROCESSING",
    "SUCCEEDED",
    "FAILED",
    "REJECTED",
    "CANCELED",
    "REQUIRES_ACTION",
)
MICRO = timedelta(microseconds=1)


class Generator:
    """Writes random rows with ``conn``; ``rng`` decides everything."""

    def __init__(self, conn: Connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.serial = 0

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}_{self.serial}_{self.rng.getrandbits(32):08x}"

    def instant(self) -> datetime:
        """Anywhere in the window, or (often) right at a local midnight of one of the zones."""
        if self.rng.random() < 0.35:
            zone = ZoneInfo(self.rng.choice(ZONES))
            day = WINDOW_START.date() + timedelta(days=self.rng.randrange(1, WINDOW_DAYS))
            midnight = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
            return midnight + self.rng.choice((timedelta(0), -MICRO, MICRO, -timedelta(seconds=1)))
        offset = self.rng.randrange(WINDOW_DAYS * 86_400 * 1_000_000)
        return WINDOW_START + timedelta(microseconds=offset)

    def later(self, start: datetime) -> datetime:
        """A moment after ``start``: seconds, minutes, hours or days (sometimes before it)."""
        scale = self.rng.choice((1, 60, 3600, 86_400))
        return start + timedelta(seconds=self.rng.uniform(-0.05, 6) * scale)

    async def payments(self, count: int) -> list[str]:
        ids = [self.name("pay") for _ in range(count)]
        await self.conn.executemany(
            """INSERT INTO payment (payment_id, gateway, gateway_transaction_id, customer_id,
                                    currency, captured_amount, captured_at)
               VALUES ($1, $2, $1, 'cus_1', $3, 1000000000, $4)""",
            [
                (pid, self.rng.choice(GATEWAYS), self.rng.choice(CURRENCIES), WINDOW_START)
                for pid in ids
            ],
        )
        return ids

    async def plans(self, count: int) -> list[uuid.UUID]:
        plan_rows, attempt_rows = [], []
        for _ in range(count):
            plan_id = self.new_id()
            first = self.instant()
            status = self.rng.choice(PLAN_STATUSES)
            plan_rows.append(
                (
                    plan_id,
                    self.name("inv"),
                    self.rng.choice(CURRENCIES),
                    self.rng.randrange(1, 100_000),
                    self.rng.choice(GATEWAYS),
                    status,
                    first,
                    self.later(first) if status != "ACTIVE" else first,
                )
            )
            failures = self.rng.choice((0, 1, 1, 1, 2))
            kinds = ["FAILURE"] * failures + ["SCHEDULED"] * self.rng.randrange(5)
            for number, kind in enumerate(kinds, start=1):
                outcome = "DECLINED" if kind == "FAILURE" else self.rng.choice(OUTCOMES)
                attempt_rows.append(
                    (
                        self.new_id(),
                        plan_id,
                        number,
                        kind if kind == "FAILURE" else self.rng.choice(("SCHEDULED", "RETRY_NOW")),
                        self.instant() if self.rng.random() < 0.5 else self.later(first),
                        outcome,
                        self.rng.choice(CLASSES) if outcome == "DECLINED" else "",
                        self.rng.choice((*CLASSES, "")),
                    )
                )
        await self.conn.executemany(
            """INSERT INTO retry_plan (plan_id, payment_id, customer_id, currency, amount, gateway,
                                       schedule_code, time_zone, status, first_failed_at,
                                       updated_at)
               VALUES ($1, $2, 'cus_1', $3, $4, $5, 'payment-fixed', 'UTC', $6, $7, $8)""",
            plan_rows,
        )
        await self.conn.executemany(
            """INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source,
                                            attempted_at, payment_method_id, network, outcome,
                                            decline_class, retry_of_class, idempotency_key,
                                            local_hour, day_of_month, days_since_failure)
               VALUES ($1, $2, $3, $4, $5, 'pm_1', 'VISA', $6, $7, $8, $9, 0, 1, 0)""",
            [(*row, str(row[0])) for row in attempt_rows],
        )
        return [row[0] for row in plan_rows]

    async def refunds(self, payment_ids: list[str], count: int) -> list[uuid.UUID]:
        refund_rows, approval_rows = [], []
        for _ in range(count):
            refund_id = self.new_id()
            created = self.instant()
            required = self.rng.choice((0, 0, 1, 2))
            refund_rows.append(
                (
                    refund_id,
                    self.rng.choice(payment_ids),
                    self.rng.choice(CURRENCIES),
                    self.rng.randrange(1, 50_000),
                    self.rng.choice(REFUND_STATUSES),
                    required,
                    created,
                )
            )
            for index in range(self.rng.randrange(4)):
                approval_rows.append((refund_id, f"approver{index}", self.later(created)))
        await self.conn.executemany(
            """INSERT INTO refund_event (refund_id, payment_id, customer_id, currency, amount,
                                         status, requested_by, required_approvals, created_at)
               VALUES ($1, $2, 'cus_1', $3, $4, $5, 'someone', $6, $7)""",
            refund_rows,
        )
        await self.conn.executemany(
            "INSERT INTO refund_approval (refund_id, approver, approved_at) VALUES ($1, $2, $3)",
            approval_rows,
        )
        return [row[0] for row in refund_rows]

    async def late_changes(self) -> None:
        """Changes to rows already folded, several rows per statement: outcomes resolved and
        reversed, times moved across midnights, plans ending, refunds moving on, approvals
        added and withdrawn, rows deleted."""
        rng, conn = self.rng, self.conn
        attempts = [
            r["attempt_id"] for r in await conn.fetch("SELECT attempt_id FROM payment_attempt")
        ]
        plans = [r["plan_id"] for r in await conn.fetch("SELECT plan_id FROM retry_plan")]
        refunds = [r["refund_id"] for r in await conn.fetch("SELECT refund_id FROM refund_event")]

        def some(ids: list[uuid.UUID], share: float) -> list[uuid.UUID]:
            return [i for i in ids if rng.random() < share]

        for outcome in OUTCOMES:
            await conn.execute(
                "UPDATE payment_attempt SET outcome = $2 WHERE attempt_id = ANY($1::uuid[])",
                some(attempts, 0.05),
                outcome,
            )
        moved = some(attempts, 0.1)
        await conn.execute(
            """UPDATE payment_attempt a
                  SET attempted_at = a.attempted_at + u.shift,
                      retry_of_class = CASE WHEN u.flip THEN 'SOFT' ELSE a.retry_of_class END
                 FROM unnest($1::uuid[], $2::interval[], $3::bool[]) AS u(attempt_id, shift, flip)
                WHERE a.attempt_id = u.attempt_id""",
            moved,
            [timedelta(minutes=rng.randrange(-1440, 1440)) for _ in moved],
            [rng.random() < 0.5 for _ in moved],
        )
        await conn.execute(
            "UPDATE payment_attempt SET decline_class = 'HARD' WHERE attempt_id = ANY($1::uuid[]) "
            "AND source = 'FAILURE'",
            some(attempts, 0.2),
        )
        await conn.execute(
            "DELETE FROM payment_attempt WHERE attempt_id = ANY($1::uuid[])", some(attempts, 0.03)
        )
        recovered = some(plans, 0.15)
        await conn.execute(
            """UPDATE retry_plan p SET status = 'RECOVERED', updated_at = p.first_failed_at + u.took
                 FROM unnest($1::uuid[], $2::interval[]) AS u(plan_id, took)
                WHERE p.plan_id = u.plan_id""",
            recovered,
            [timedelta(seconds=rng.uniform(0, 600_000)) for _ in recovered],
        )
        await conn.execute(
            "UPDATE retry_plan SET status = 'EXHAUSTED', updated_at = now() "
            "WHERE plan_id = ANY($1::uuid[]) AND status IN ('ACTIVE', 'PAUSED')",
            some(plans, 0.1),
        )
        await conn.execute(
            """UPDATE retry_plan
                  SET first_failed_at = first_failed_at - interval '13 hours 30 minutes',
                      amount = amount + 7
                WHERE plan_id = ANY($1::uuid[])""",
            some(plans, 0.1),
        )
        # Leases and attempt counts: logged as no change at all.
        await conn.execute(
            "UPDATE retry_plan SET lease_owner = 'w', attempt_count = attempt_count + 1 "
            "WHERE plan_id = ANY($1::uuid[])",
            some(plans, 0.5),
        )
        for status in REFUND_STATUSES:
            await conn.execute(
                "UPDATE refund_event SET status = $2 WHERE refund_id = ANY($1::uuid[])",
                some(refunds, 0.05),
                status,
            )
        await conn.execute(
            """UPDATE refund_event SET created_at = created_at + interval '5 hours 45 minutes',
                                       amount = amount * 2
                WHERE refund_id = ANY($1::uuid[])""",
            some(refunds, 0.1),
        )
        await conn.execute(
            """INSERT INTO refund_approval (refund_id, approver, approved_at)
               SELECT refund_id, 'late-approver', created_at + interval '3 days'
                 FROM refund_event WHERE refund_id = ANY($1::uuid[])""",
            some(refunds, 0.1),
        )
        await conn.execute(
            "DELETE FROM refund_approval "
            "WHERE refund_id = ANY($1::uuid[]) AND approver = 'approver0'",
            some(refunds, 0.1),
        )
        gone = some(refunds, 0.03)
        await conn.execute("DELETE FROM refund_approval WHERE refund_id = ANY($1::uuid[])", gone)
        await conn.execute("DELETE FROM refund_event WHERE refund_id = ANY($1::uuid[])", gone)


# -- the figures from the raw tables, in Python ---------------------------------------------


@dataclass(frozen=True)
class Raw:
    plans: list[dict[str, object]]
    attempts: list[dict[str, object]]
    refunds: list[dict[str, object]]
    approvals: list[dict[str, object]]
    gateways: dict[str, str]  # payment -> gateway


async def read_raw(conn: Connection) -> Raw:
    async def rows(sql: str) -> list[dict[str, object]]:
        return [dict(r) for r in await conn.fetch(sql)]

    payments = await conn.fetch("SELECT payment_id, gateway FROM payment")
    return Raw(
        plans=await rows("SELECT * FROM retry_plan"),
        attempts=await rows("SELECT * FROM payment_attempt"),
        refunds=await rows("SELECT * FROM refund_event"),
        approvals=await rows("SELECT * FROM refund_approval"),
        gateways={r["payment_id"]: r["gateway"] for r in payments},
    )


def seconds(start: datetime, end: datetime) -> int:
    return max((end - start) // timedelta(seconds=1), 0)


def expected(
    raw: Raw, zone_name: str, first: date, last: date, group_by: GroupBy, currency: str
) -> tuple[list[tuple[str, Figures]], Figures]:
    """The groups and total GetRecoveryMetrics must report, by the definitions in
    analytics.proto, from the raw rows alone."""
    zone = ZoneInfo(zone_name)
    groups: dict[str, Figures] = {}
    refund_part = Figures()

    def day_of(at: object) -> date | None:
        assert isinstance(at, datetime)
        day = at.astimezone(zone).date()
        return day if first <= day <= last else None

    def key(day: date, gateway: object, decline_class: object, code: object) -> str:
        return str(
            {
                GroupBy.DAY: day.isoformat(),
                GroupBy.GATEWAY: gateway,
                GroupBy.DECLINE_CLASS: decline_class,
                GroupBy.CURRENCY: code,
            }[group_by]
        )

    def group(name: str) -> Figures:
        return groups.setdefault(name, Figures())

    def refund_group(name: str) -> Figures:
        return refund_part if group_by is GroupBy.DECLINE_CLASS else group(name)

    plans = {p["plan_id"]: p for p in raw.plans}
    first_failure: dict[object, dict[str, object]] = {}
    counted: Counter[object] = Counter()
    for a in sorted(raw.attempts, key=lambda a: int(str(a["attempt_number"]))):
        if a["source"] == "FAILURE":
            first_failure.setdefault(a["plan_id"], a)
        elif a["outcome"] in REACHED:
            counted[a["plan_id"]] += 1
            plan = plans[a["plan_id"]]
            day = day_of(a["attempted_at"])
            if day is None or (currency and plan["currency"] != currency):
                continue
            one = group(key(day, plan["gateway"], a["retry_of_class"], plan["currency"]))
            one.retry_attempts += 1
            one.retry_successes += a["outcome"] == "SUCCEEDED"
    for plan in raw.plans:
        day = day_of(plan["first_failed_at"])
        if day is None or (currency and plan["currency"] != currency):
            continue
        failure = first_failure.get(plan["plan_id"])
        decline_class = failure["decline_class"] if failure else ""
        one = group(key(day, plan["gateway"], decline_class, plan["currency"]))
        status = plan["status"]
        if status == "RECOVERED":
            one.plans_recovered += 1
            one.amount_recovered[str(plan["currency"])] += int(str(plan["amount"]))
            one.recovery_retries += counted[plan["plan_id"]]
            elapsed = seconds(plan["first_failed_at"], plan["updated_at"])  # type: ignore[arg-type]
            one.time_to_recover[bucket_floor(elapsed)] += 1
        elif status == "EXHAUSTED":
            one.plans_exhausted += 1
        elif status == "CANCELED":
            one.plans_canceled += 1
        else:
            one.plans_open += 1
    approvals: dict[object, list[datetime]] = {}
    for a in raw.approvals:
        approvals.setdefault(a["refund_id"], []).append(a["approved_at"])  # type: ignore[arg-type]
    for r in raw.refunds:
        day = day_of(r["created_at"])
        if day is None or (currency and r["currency"] != currency):
            continue
        code, status, amount = str(r["currency"]), str(r["status"]), int(str(r["amount"]))
        one = refund_group(key(day, raw.gateways[str(r["payment_id"])], "", code))
        one.refund_count[status, code] += 1
        one.refund_amount[status, code] += amount
        if status == "PENDING_APPROVAL":
            one.pending_count[code] += 1
            one.pending_amount[code] += amount
        required = int(str(r["required_approvals"]))
        times = sorted(approvals.get(r["refund_id"], []))
        if required > 0 and len(times) >= required:
            elapsed = seconds(r["created_at"], times[required - 1])  # type: ignore[arg-type]
            one.approval_lead_time[bucket_floor(elapsed)] += 1
    if group_by is GroupBy.DAY:
        day = first
        while day <= last:
            group(day.isoformat())
            day += timedelta(days=1)
    total = Figures()
    listed = []
    for name in sorted(groups):
        total.merge(groups[name])
        if group_by is GroupBy.DAY or not groups[name].empty:
            listed.append((name, groups[name]))
    total.merge(refund_part)
    return listed, total
