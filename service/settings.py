"""Use cases on configuration kept in the database: the refund policy and retry schedules."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from refundretry.v1 import events_pb2
from repository import settings
from repository.database import Database
from service import changes, convert
from service.auth import Principal
from service.domain.approval_policy import RefundPolicy
from service.domain.retry_schedule import RetrySchedule, validate_code
from service.errors import AlreadyExists, InvalidArgument, NotFound


async def get_policy(db: Database) -> RefundPolicy:
    async with db.connection() as conn:
        return await settings.current_policy(conn)


async def update_policy(
    db: Database, principal: Principal, request_id: str, policy: RefundPolicy
) -> RefundPolicy:
    """Store ``policy`` (already merged with the current one by the caller's field mask)."""
    changes.validate_request_id(request_id)
    digest = changes.fingerprint(
        "UpdateRefundPolicy",
        repr(policy.auto_approve),
        repr(policy.tiers),
        policy.refund_window.total_seconds(),
    )
    async with db.transaction() as conn:
        first = await changes.replayed(conn, "UpdateRefundPolicy", request_id, digest, "policy")
        if first is not None:
            return await settings.current_policy(conn)
        await settings.current_policy(conn, lock=True)
        saved = await settings.save_policy(conn, policy, principal.name)
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


def _seconds(schedule: RetrySchedule) -> list[int]:
    return [int(i.total_seconds()) for i in schedule.intervals]


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
                row = await settings.insert_schedule(
                    conn,
                    schedule.code,
                    schedule.description,
                    _seconds(schedule),
                    schedule.max_attempts,
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"retry schedule {schedule.code!r} already exists") from exc
            await _record(conn, principal, "retry_schedule.created", row)
            return row
        existing = await settings.get_schedule(conn, first)
        assert existing is not None
        return existing


async def update_schedule(
    db: Database, principal: Principal, request_id: str, schedule: RetrySchedule
) -> asyncpg.Record:
    changes.validate_request_id(request_id)
    digest = changes.fingerprint("UpdateRetrySchedule", repr(schedule))
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "UpdateRetrySchedule", request_id, digest, schedule.code
        )
        if first is None:
            if await settings.get_schedule(conn, schedule.code, lock=True) is None:
                raise NotFound(f"retry schedule {schedule.code!r} does not exist")
            row = await settings.update_schedule(
                conn,
                schedule.code,
                schedule.description,
                _seconds(schedule),
                schedule.max_attempts,
            )
            await _record(conn, principal, "retry_schedule.updated", row)
            return row
        existing = await settings.get_schedule(conn, first)
        assert existing is not None
        return existing


async def _record(conn: object, principal: Principal, action: str, row: asyncpg.Record) -> None:
    assert isinstance(conn, asyncpg.Connection)
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


def schedule_from_row(row: asyncpg.Record) -> RetrySchedule:
    return RetrySchedule(
        row["code"],
        tuple(timedelta(seconds=s) for s in row["intervals"]),
        row["max_attempts"],
        row["description"],
    )


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
