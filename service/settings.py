"""Use cases on configuration kept in the database: the refund policy and retry schedules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from refundretry.v1 import events_pb2
from repository import settings
from repository.database import Connection, Database
from repository.settings import schedule_from_row
from service import changes, convert
from service.auth import Principal
from service.domain.approval_policy import ApprovalTier, RefundPolicy
from service.domain.retry_schedule import RetrySchedule, Timing, WalletPolicy, validate_code
from service.domain.retry_timing import AllowedHours
from service.errors import AlreadyExists, InvalidArgument, NotFound


async def get_policy(db: Database) -> RefundPolicy:
    async with db.connection() as conn:
        return await settings.current_policy(conn)


@dataclass(frozen=True, slots=True)
class PolicyPatch:
    """The fields an update replaces; None leaves the current value (a field mask)."""

    auto_approve: dict[str, int] | None = None
    tiers: tuple[ApprovalTier, ...] | None = None
    refund_window: timedelta | None = None

    def apply(self, current: RefundPolicy) -> RefundPolicy:
        return RefundPolicy(
            auto_approve=current.auto_approve if self.auto_approve is None else self.auto_approve,
            tiers=current.tiers if self.tiers is None else self.tiers,
            refund_window=current.refund_window
            if self.refund_window is None
            else self.refund_window,
        )


async def update_policy(
    db: Database, principal: Principal, request_id: str, patch: PolicyPatch
) -> RefundPolicy:
    """Merge ``patch`` into the latest policy, under a lock, and store it as a new version. A
    replayed request returns the version it created."""
    changes.validate_request_id(request_id)
    patch.apply(RefundPolicy())  # validates the given fields before any I/O
    digest = changes.fingerprint("UpdateRefundPolicy", repr(patch))
    async with db.transaction() as conn:
        await settings.lock_policy(conn)
        current = await settings.current_policy(conn)
        next_version = str(current.version + 1)  # what save_policy creates under the lock
        first = await changes.replayed(conn, "UpdateRefundPolicy", request_id, digest, next_version)
        if first is not None:
            stored = await settings.policy_version(conn, int(first))
            assert stored is not None
            return stored
        saved = await settings.save_policy(conn, patch.apply(current), principal.name)
        assert str(saved.version) == next_version
        await changes.record(
            conn,
            actor=principal.name,
            action="refund_policy.updated",
            entity_type="refund_policy",
            entity_id="refund-policy",
            data={
                "version": saved.version,
                "auto_approve": saved.auto_approve,
                "tiers": [
                    [t.min_amount.currency, t.min_amount.minor_units, t.required_approvals]
                    for t in saved.tiers
                ],
                "refund_window_seconds": int(saved.refund_window.total_seconds()),
            },
            event_field="refund_policy_updated",
            event_payload=events_pb2.RefundPolicyUpdated(policy=convert.policy(saved)),
        )
        return saved


async def create_schedule(
    db: Database, principal: Principal, request_id: str, schedule: RetrySchedule
) -> asyncpg.Record:
    changes.validate_request_id(request_id)
    digest = changes.fingerprint("CreateRetrySchedule", repr(schedule))
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "CreateRetrySchedule", request_id, digest, schedule.code
        )
        if first is None:
            try:
                row = await settings.insert_schedule(conn, schedule)
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"retry schedule {schedule.code!r} already exists") from exc
            await _record(conn, principal, "retry_schedule.created", row)
            return row
        existing = await settings.get_schedule(conn, first)
        assert existing is not None
        return existing


class Unset:
    """A field the update mask leaves alone (where None is itself a value: "no limit")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True, slots=True)
class SchedulePatch:
    """An update of schedule ``code``; None leaves a field as it is (a field mask)."""

    code: str
    description: str | None = None
    intervals: tuple[timedelta, ...] | None = None
    max_attempts: int | None = None
    timing: Timing | None = None
    allowed_hours: AllowedHours | Unset | None = UNSET
    max_span_days: int | Unset | None = UNSET
    wallet: WalletPolicy | None = None

    def apply(self, current: RetrySchedule) -> RetrySchedule:
        return RetrySchedule(
            code=current.code,
            intervals=current.intervals if self.intervals is None else self.intervals,
            max_attempts=current.max_attempts if self.max_attempts is None else self.max_attempts,
            description=current.description if self.description is None else self.description,
            timing=current.timing if self.timing is None else self.timing,
            allowed_hours=current.allowed_hours
            if isinstance(self.allowed_hours, Unset)
            else self.allowed_hours,
            max_span_days=current.max_span_days
            if isinstance(self.max_span_days, Unset)
            else self.max_span_days,
            wallet=current.wallet if self.wallet is None else self.wallet,
        )


async def update_schedule(
    db: Database, principal: Principal, request_id: str, patch: SchedulePatch
) -> asyncpg.Record:
    """Merge ``patch`` into the schedule under its row lock. A replay returns the schedule."""
    changes.validate_request_id(request_id)
    validate_code(patch.code, "schedule.code")
    digest = changes.fingerprint("UpdateRetrySchedule", repr(patch))
    async with db.transaction() as conn:
        first = await changes.replayed(conn, "UpdateRetrySchedule", request_id, digest, patch.code)
        current = await settings.get_schedule(conn, patch.code, lock=True)
        if current is None:
            raise NotFound(f"retry schedule {patch.code!r} does not exist")
        if first is not None:
            return current
        merged = patch.apply(schedule_from_row(current))
        row = await settings.update_schedule(conn, merged)
        await _record(conn, principal, "retry_schedule.updated", row)
        return row


async def _record(conn: Connection, principal: Principal, action: str, row: asyncpg.Record) -> None:
    await changes.record(
        conn,
        actor=principal.name,
        action=action,
        entity_type="retry_schedule",
        entity_id=row["code"],
        data={
            "intervals": list(row["intervals"]),
            "max_attempts": row["max_attempts"],
            "description": row["description"],
        },
        event_field="retry_schedule_changed",
        event_payload=events_pb2.RetryScheduleChanged(schedule=convert.schedule(row)),
    )


async def get_schedule(db: Database, code: str) -> asyncpg.Record:
    validate_code(code, "schedule.code")
    async with db.connection() as conn:
        row = await settings.get_schedule(conn, code)
    if row is None:
        raise NotFound(f"retry schedule {code!r} does not exist")
    return row


async def list_schedules(
    db: Database, page_size: int, page_token: str
) -> tuple[list[asyncpg.Record], str]:
    if page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    size = min(page_size or 50, 1000)
    async with db.connection() as conn:
        rows = await settings.list_schedules(conn, page_token, size + 1)
    if len(rows) > size:
        return rows[:size], rows[size - 1]["code"]
    return rows, ""
