"""Recovery analytics: GetRecoveryMetrics, and the fold that keeps its daily roll-ups current.

**Why roll-ups, and how they stay exact.** A dashboard query must cost what the days it shows
cost, not what is stored. So the figures live in daily roll-ups per time zone
(``analytics_payment_day``, ``analytics_refund_day``, ``analytics_duration_day``: one row per
local day, gateway, decline class and currency, a handful of rows per day), and a query sums
the rows of its days.

Writers are not slowed down to keep them: statement-level triggers (migration 0007) only
append what each statement changed to change logs, and no writer ever updates a shared row
(a per-day counter updated by every attempt would queue every writer of the day on one row
lock until its commit). Every ``ANALYTICS_ROLLUP_SECONDS`` the fold, in one REPEATABLE READ
transaction under an advisory lock (one fold at a time across replicas):

1. deletes the attempt log rows its snapshot sees and adds them to the roll-ups: an attempt's
   figures need nothing but its own row (kept whole in the log, +1 as it is now, -1 as it
   was) and its plan's gateway and currency, which may not change (a guard trigger);
2. takes the plans and refunds logged as changed, recomputes their figures from the raw rows
   (a plan reads its first failure and its attempts, a refund its payment and approvals),
   and moves the roll-ups by the difference from what it counted before: the fact tables
   remember, per plan and refund, what the roll-ups hold for it;
3. backfills a zone newly configured from the raw attempts and the facts, and drops one no
   longer configured.

**Commit order.** A watermark on a time or sequence column (``updated_at > last``) would skip a
row whose transaction drew its value early and committed after the watermark moved past it
(``service/outbox/feed.py`` has the same problem with outbox positions and needs a horizon to
solve it). Consuming logs by deleting what one snapshot sees has no such gap: a row of a
transaction still running is invisible to the fold, stays in the log, and is folded by the
first fold after its commit; a row the fold deleted is added in the same transaction. Every
change is folded exactly once, whatever the order of commits. The current day is folded the
same way as the others, so its figures are at most one interval old.

The first fold after the migration (or after ``reset``) builds the facts from the raw tables
instead of the logs, so rows written before the migration count too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from google.protobuf.duration_pb2 import Duration

from refundretry.v1 import analytics_pb2, money_pb2, refund_pb2
from repository import analytics as repo
from repository.database import Connection, Database
from service import convert
from service.domain.analytics import (
    Figures,
    GroupBy,
    Metric,
    RecoveryMetrics,
    nearest_rank,
)
from service.domain.money import validate_currency
from service.domain.refund_states import RefundStatus
from service.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_DAYS = 366
FOLD_CHUNK = 5000  # plan or refund ids recomputed per statement
_MICROSECOND = timedelta(microseconds=1)
# Refund figures are not split by decline class: with that grouping they are only in the total.
_REFUND_GROUPINGS = frozenset({GroupBy.DAY, GroupBy.GATEWAY, GroupBy.CURRENCY})


# -- the query -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    start: datetime | None
    end: datetime | None
    time_zone: str = ""
    group_by: GroupBy = GroupBy.DAY
    currency: str = ""


@dataclass(frozen=True, slots=True)
class _Range:
    zone: str
    first_day: date
    last_day: date


def _validate(query: MetricsQuery, zones: Sequence[str]) -> _Range:
    if query.start is None:
        raise InvalidArgument("start_time", "is required")
    if query.end is None:
        raise InvalidArgument("end_time", "is required")
    for name, value in (("start_time", query.start), ("end_time", query.end)):
        if not 1971 <= value.year <= 9998:
            raise InvalidArgument(name, "must be between 1971 and 9998")
    if query.end <= query.start:
        raise InvalidArgument("end_time", "must be after start_time")
    name = query.time_zone or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument("time_zone", f"{name!r} is not an IANA time zone") from None
    if name not in zones:
        raise InvalidArgument(
            "time_zone",
            f"{name!r} is not rolled up; the service rolls up {', '.join(zones)} "
            "(setting ANALYTICS_TIME_ZONES)",
        )
    if query.currency:
        validate_currency(query.currency, "currency_code")
    first_day = query.start.astimezone(zone).date()
    last_day = (query.end - _MICROSECOND).astimezone(zone).date()
    days = (last_day - first_day).days + 1
    if days > MAX_DAYS:
        raise InvalidArgument(
            "end_time", f"the range covers {days} days in {name}; at most {MAX_DAYS}"
        )
    return _Range(name, first_day, last_day)


async def recovery_metrics(
    db: Database, query: MetricsQuery, *, zones: Sequence[str], raw: bool = False
) -> RecoveryMetrics:
    """The figures of ``query`` from the roll-ups (``zones``: the zones rolled up). With
    ``raw`` the same figures are computed from the raw tables instead: what a dashboard
    without roll-ups would cost (the benchmark's baseline), and a check of the roll-ups."""
    span = _validate(query, zones)
    where = repo.Where(
        span.zone, span.first_day, span.last_day, query.group_by.value, query.currency
    )
    async with db.connection() as conn, conn.transaction(isolation="repeatable_read"):
        payments, durations, refunds = await repo.read(conn, where, raw=raw)
        pending = await repo.pending_approvals(conn, where)
        rolled_up_at = datetime.now(UTC) if raw else await repo.folded_at(conn, span.zone)
    groups, total = _assemble(span, query.group_by, payments, durations, refunds, pending)
    return RecoveryMetrics(
        time_zone=span.zone,
        first_day=span.first_day,
        last_day=span.last_day,
        group_by=query.group_by,
        groups=groups,
        total=total,
        rolled_up_at=rolled_up_at,
    )


def _assemble(
    span: _Range,
    group_by: GroupBy,
    payments: Sequence[asyncpg.Record],
    durations: Sequence[repo.DurationRow],
    refunds: Sequence[asyncpg.Record],
    pending: Sequence[asyncpg.Record],
) -> tuple[list[tuple[str, Figures]], Figures]:
    """The groups (every day of the range when grouped by day; otherwise those with a
    figure), ordered by key, and their total, from the rows of the reads."""
    groups: dict[str, Figures] = {}
    if group_by is GroupBy.DAY:
        day = span.first_day
        while day <= span.last_day:
            groups[day.isoformat()] = Figures()
            day += timedelta(days=1)
    total = Figures()
    refund_part = Figures()  # refund figures of a grouping they are not split by

    def figures(key: str) -> Figures:
        found = groups.get(key)
        if found is None:
            found = groups[key] = Figures()
        return found

    for row in payments:
        one = figures(row["key"])
        one.retry_attempts += row["retry_attempts"]
        one.retry_successes += row["retry_successes"]
        one.plans_recovered += row["plans_recovered"]
        one.plans_exhausted += row["plans_exhausted"]
        one.plans_open += row["plans_open"]
        one.plans_canceled += row["plans_canceled"]
        one.amount_recovered[row["currency"]] += row["amount_recovered"]
        one.recovery_retries += row["recovery_retries"]
    refunds_split = group_by in _REFUND_GROUPINGS
    for key, metric, bucket, count in durations:
        if metric == Metric.TIME_TO_RECOVER:
            figures(key).time_to_recover[bucket] += count
        else:
            target = figures(key) if refunds_split else refund_part
            target.approval_lead_time[bucket] += count
    for row in refunds:
        target = figures(row["key"]) if refunds_split else refund_part
        target.refund_count[row["status"], row["currency"]] += row["refunds"]
        target.refund_amount[row["status"], row["currency"]] += row["amount"]
    for row in pending:
        target = figures(row["key"]) if refunds_split else refund_part
        target.pending_count[row["currency"]] += row["refunds"]
        target.pending_amount[row["currency"]] += row["amount"]
    listed = []
    for key in sorted(groups):
        one = _without_zeros(groups[key])
        total.merge(one)
        if group_by is GroupBy.DAY or not one.empty:
            listed.append((key, one))
    total.merge(_without_zeros(refund_part))
    return listed, total


def _without_zeros(figures: Figures) -> Figures:
    """The same figures without zero entries (a currency or bucket whose counts cancelled)."""
    for counter in (
        figures.amount_recovered,
        figures.time_to_recover,
        figures.refund_count,
        figures.refund_amount,
        figures.approval_lead_time,
        figures.pending_count,
        figures.pending_amount,
    ):
        for key in [k for k, v in counter.items() if v == 0]:
            del counter[key]
    return figures


# -- protobuf ------------------------------------------------------------------------------

GROUP_BY_OF_PROTO = {
    analytics_pb2.METRICS_GROUP_BY_UNSPECIFIED: GroupBy.DAY,
    analytics_pb2.METRICS_GROUP_BY_DAY: GroupBy.DAY,
    analytics_pb2.METRICS_GROUP_BY_GATEWAY: GroupBy.GATEWAY,
    analytics_pb2.METRICS_GROUP_BY_DECLINE_CLASS: GroupBy.DECLINE_CLASS,
    analytics_pb2.METRICS_GROUP_BY_CURRENCY: GroupBy.CURRENCY,
}
PROTO_OF_GROUP_BY = {
    GroupBy.DAY: analytics_pb2.METRICS_GROUP_BY_DAY,
    GroupBy.GATEWAY: analytics_pb2.METRICS_GROUP_BY_GATEWAY,
    GroupBy.DECLINE_CLASS: analytics_pb2.METRICS_GROUP_BY_DECLINE_CLASS,
    GroupBy.CURRENCY: analytics_pb2.METRICS_GROUP_BY_CURRENCY,
}


def query_of(request: analytics_pb2.GetRecoveryMetricsRequest) -> MetricsQuery:
    group_by = GROUP_BY_OF_PROTO.get(request.group_by)
    if group_by is None:
        raise InvalidArgument("group_by", f"unknown value {request.group_by}")
    return MetricsQuery(
        start=request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None,
        end=request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None,
        time_zone=request.time_zone,
        group_by=group_by,
        currency=request.currency_code,
    )


def _seconds(value: int | None) -> Duration | None:
    return None if value is None else Duration(seconds=value)


def _money(amounts: Counter[str]) -> list[money_pb2.Money]:
    return [convert.money(code, amounts[code]) for code in sorted(amounts)]


def figures_message(key: str, figures: Figures) -> analytics_pb2.RecoveryMetrics:
    by_status: dict[str, tuple[int, Counter[str]]] = {}
    for (status, currency), count in figures.refund_count.items():
        seen, amounts = by_status.setdefault(status, (0, Counter()))
        amounts[currency] += figures.refund_amount[status, currency]
        by_status[status] = (seen + count, amounts)
    order = list(RefundStatus)
    return analytics_pb2.RecoveryMetrics(
        key=key,
        retry_attempts=figures.retry_attempts,
        retry_successes=figures.retry_successes,
        payment_success_rate=figures.payment_success_rate,
        plans_recovered=figures.plans_recovered,
        plans_exhausted=figures.plans_exhausted,
        plans_open=figures.plans_open,
        plans_canceled=figures.plans_canceled,
        recovery_rate=figures.recovery_rate,
        amount_recovered=_money(figures.amount_recovered),
        recovery_attempts=figures.recovery_retries,
        attempts_per_recovery=figures.attempts_per_recovery,
        time_to_recover_p50=_seconds(nearest_rank(figures.time_to_recover, 50)),
        time_to_recover_p90=_seconds(nearest_rank(figures.time_to_recover, 90)),
        refunds_by_status=[
            analytics_pb2.RefundStatusTotal(
                status=refund_pb2.RefundStatus.Value(f"REFUND_STATUS_{status}"),
                count=count,
                amount=_money(amounts),
            )
            for status, (count, amounts) in sorted(
                by_status.items(), key=lambda item: order.index(RefundStatus(item[0]))
            )
        ],
        approvals_measured=figures.approvals_measured,
        approval_lead_time_p50=_seconds(nearest_rank(figures.approval_lead_time, 50)),
        approval_lead_time_p90=_seconds(nearest_rank(figures.approval_lead_time, 90)),
        pending_approvals=sum(figures.pending_count.values()),
        pending_approval_amount=_money(figures.pending_amount),
    )


def response_message(metrics: RecoveryMetrics) -> analytics_pb2.GetRecoveryMetricsResponse:
    return analytics_pb2.GetRecoveryMetricsResponse(
        time_zone=metrics.time_zone,
        first_day=metrics.first_day.isoformat(),
        last_day=metrics.last_day.isoformat(),
        group_by=PROTO_OF_GROUP_BY[metrics.group_by],
        groups=[figures_message(key, figures) for key, figures in metrics.groups],
        total=figures_message("", metrics.total),
        rolled_up_time=convert.ts(metrics.rolled_up_at),
    )


# -- the fold ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoldSummary:
    skipped: bool = False  # another fold was running
    initialized: bool = False  # built from the raw tables (the first fold)
    attempt_changes: int = 0  # attempt log rows folded
    plans: int = 0  # plans recomputed
    refunds: int = 0  # refunds recomputed
    zones_added: tuple[str, ...] = ()
    zones_dropped: tuple[str, ...] = ()
    seconds: float = 0.0


async def fold(db: Database, zones: Sequence[str]) -> FoldSummary:
    """Fold every committed change into the roll-ups of ``zones`` (see the module docstring);
    skipped when another fold is running."""
    started = time.monotonic()
    async with db.connection() as conn:
        if not await repo.try_lock(conn):
            return FoldSummary(skipped=True)
        try:
            async with conn.transaction(isolation="repeatable_read"):
                first = not await repo.initialized(conn)
                attempt_changes, plans, refunds = 0, 0, 0
                if first:
                    await repo.initialize(conn)
                else:
                    attempt_changes = await repo.fold_attempts(conn)
                    plan_ids = await repo.take_plan_changes(conn)
                    refund_ids = await repo.take_refund_changes(conn)
                    for chunk in _chunks(plan_ids):
                        await repo.fold_plans(conn, chunk)
                    for chunk in _chunks(refund_ids):
                        await repo.fold_refunds(conn, chunk)
                    plans, refunds = len(plan_ids), len(refund_ids)
                known = await repo.zones(conn)
                added = await _known_to_postgres(conn, [z for z in zones if z not in known])
                dropped = [z for z in known if z not in zones]
                if added:
                    await repo.backfill(conn, added)
                if dropped:
                    await repo.drop(conn, dropped)
                await repo.mark_folded(conn)
        finally:
            await repo.unlock(conn)
    return FoldSummary(
        initialized=first,
        attempt_changes=attempt_changes,
        plans=plans,
        refunds=refunds,
        zones_added=tuple(added),
        zones_dropped=tuple(dropped),
        seconds=time.monotonic() - started,
    )


def _chunks(ids: list[uuid.UUID]) -> list[list[uuid.UUID]]:
    return [ids[i : i + FOLD_CHUNK] for i in range(0, len(ids), FOLD_CHUNK)]


async def _known_to_postgres(conn: Connection, names: list[str]) -> list[str]:
    """The zones PostgreSQL's time zone database has too (it computes the local days); a
    zone only Python knows is left out, with a warning, instead of failing every fold."""
    if not names:
        return []
    found = set(await repo.known_zones(conn, names))
    for name in names:
        if name not in found:
            log.warning(
                "time zone %s is unknown to PostgreSQL: not rolled up",
                name,
                extra={"action": "analytics.unknown_zone", "zone": name},
            )
    return [name for name in names if name in found]


async def rollup_loop(db: Database, zones: Sequence[str], interval: float) -> None:
    """Fold every ``interval`` seconds until cancelled; a failed fold is logged and retried
    at the next tick (nothing is lost: the logs keep what was not folded)."""
    while True:
        try:
            summary = await fold(db, zones)
            if not summary.skipped:
                log.debug(
                    "analytics fold: %d attempt changes, %d plans, %d refunds in %.3f s",
                    summary.attempt_changes,
                    summary.plans,
                    summary.refunds,
                    summary.seconds,
                    extra={"action": "analytics.folded"},
                )
        except Exception:
            log.exception(
                "analytics fold failed; next in %.0f s",
                interval,
                extra={"action": "analytics.fold_failed"},
            )
        await asyncio.sleep(interval)
