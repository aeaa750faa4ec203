"""Use cases on refunds: create, approve, reject, cancel, read and list."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from refundretry.v1 import events_pb2
from repository import payments, refunds, settings
from repository.database import Connection, Database
from service import changes, convert, validation
from service.auth import Principal
from service.domain import refund_plan
from service.domain.approval_policy import check_approver
from service.domain.money import Money
from service.domain.refund_states import RefundStatus, check_refund_transition, sources_of
from service.domain.retry_schedule import DEFAULT_REFUND_SCHEDULE, validate_code
from service.errors import (
    FailedPrecondition,
    InsufficientRefundable,
    InvalidArgument,
    NotFound,
)

R = RefundStatus


@dataclass(frozen=True, slots=True)
class CreateRefund:
    request_id: str
    payment_id: str
    amount: Money | None
    lines: Sequence[refund_plan.LineRequest]
    reason: str
    retry_schedule_code: str = DEFAULT_REFUND_SCHEDULE


def _validate_create(cmd: CreateRefund) -> None:
    changes.validate_request_id(cmd.request_id)
    validation.identifier(cmd.payment_id, "payment_id")
    validation.text(cmd.reason, "reason", 1000)
    validate_code(cmd.retry_schedule_code, "retry_schedule_code")
    if cmd.amount is not None and cmd.lines:
        raise InvalidArgument("amount", "give either amount or items, not both")
    for index, line in enumerate(cmd.lines):
        validation.identifier(line.item_id, f"items[{index}].item_id")
        if line.gross is not None and line.gross <= 0:
            raise InvalidArgument(f"items[{index}].amount.minor_units", "must be greater than zero")


async def _view(conn: Connection, refund_id: uuid.UUID) -> asyncpg.Record:
    row = await refunds.view(conn, refund_id)
    if row is None:
        raise NotFound(f"refund {refund_id} does not exist")
    return row


async def create_refund(db: Database, principal: Principal, cmd: CreateRefund) -> asyncpg.Record:
    _validate_create(cmd)
    digest = changes.fingerprint(
        "CreateRefund",
        cmd.payment_id,
        cmd.amount,
        list(cmd.lines),
        cmd.reason,
        cmd.retry_schedule_code,
    )
    refund_id, detail_id = uuid.uuid4(), uuid.uuid4()
    async with db.transaction() as conn:
        first = await changes.replayed(conn, "CreateRefund", cmd.request_id, digest, str(refund_id))
        if first is not None:
            return await _view(conn, uuid.UUID(first))
        payment = await payments.get(conn, cmd.payment_id, lock=True)
        if payment is None:
            raise NotFound(f"payment {cmd.payment_id!r} does not exist")
        currency = payment["currency"]
        if cmd.amount is not None and cmd.amount.currency != currency:
            raise InvalidArgument(
                "amount.currency_code",
                f"{cmd.amount.currency} differs from the payment's {currency}",
            )
        if await settings.get_schedule(conn, cmd.retry_schedule_code) is None:
            raise InvalidArgument("retry_schedule_code", f"no schedule {cmd.retry_schedule_code!r}")
        balances = [
            refund_plan.ItemBalance(
                i["item_id"],
                i["amount"] - i["refunded_amount"] - i["pending_amount"],
                i["tax"] - i["refunded_tax"] - i["pending_tax"],
            )
            for i in await payments.items(conn, cmd.payment_id)
        ]
        if cmd.lines:
            plan = refund_plan.plan_items(balances, cmd.lines, currency)
        elif cmd.amount is not None:
            plan = refund_plan.plan_amount(balances, cmd.amount)
        else:
            plan = refund_plan.plan_full(balances)
        total = Money(currency, sum(p.gross for p in plan))
        policy = await settings.current_policy(conn)
        now = datetime.now(UTC)
        auto = policy.is_auto_approved(total, payment["captured_at"], now)
        lines = [(p.item_id, p.net, p.tax) for p in plan]
        await refunds.insert(
            conn,
            refund_id=refund_id,
            detail_id=detail_id,
            payment_id=cmd.payment_id,
            customer_id=payment["customer_id"],
            subscription_id=payment["subscription_id"],
            currency=currency,
            amount=total.minor_units,
            status=R.APPROVED if auto else R.PENDING_APPROVAL,
            reason=cmd.reason,
            requested_by=principal.name,
            required_approvals=0 if auto else policy.required_approvals(total),
            auto_approved=auto,
            gateway=payment["gateway"],
            retry_schedule_code=cmd.retry_schedule_code,
            lines=lines,
        )
        try:
            await payments.reserve(conn, cmd.payment_id, lines)
        except asyncpg.CheckViolationError as exc:  # the row lock makes this unreachable
            raise InsufficientRefundable("the refund exceeds the refundable amount") from exc
        row = await _view(conn, refund_id)
        await changes.record(
            conn,
            actor=principal.name,
            action="refund.created",
            entity_type="refund",
            entity_id=str(refund_id),
            data={
                "payment_id": cmd.payment_id,
                "amount": total.minor_units,
                "currency": currency,
                "auto_approved": auto,
                "policy_version": policy.version,
                "reason": cmd.reason,
            },
            event_field="refund_created",
            event_payload=events_pb2.RefundCreated(refund=convert.refund(row)),
        )
        return row


async def approve_refund(
    db: Database, principal: Principal, request_id: str, refund_id_text: str, comment: str
) -> asyncpg.Record:
    changes.validate_request_id(request_id)
    refund_id = validation.refund_id(refund_id_text)
    validation.text(comment, "comment")
    digest = changes.fingerprint("ApproveRefund", str(refund_id), comment, principal.name)
    async with db.transaction() as conn:
        if await changes.replayed(conn, "ApproveRefund", request_id, digest, str(refund_id)):
            return await _view(conn, refund_id)
        refund = await _locked(conn, refund_id)
        check_refund_transition(R(refund["status"]), R.APPROVED)
        payment = await payments.get(conn, refund["payment_id"])
        assert payment is not None
        policy = await settings.current_policy(conn)
        previous = await refunds.approvers(conn, refund_id)
        check_approver(
            approver=principal.name,
            requester=refund["requested_by"],
            previous_approvers=previous,
            is_admin=principal.is_admin,
            captured_at=payment["captured_at"],
            now=datetime.now(UTC),
            policy=policy,
        )
        await refunds.add_approval(conn, refund_id, principal.name, comment)
        fully = len(previous) + 1 >= refund["required_approvals"]
        if fully:
            await refunds.set_status(conn, refund_id, R.APPROVED, [R.PENDING_APPROVAL])
        row = await _view(conn, refund_id)
        await changes.record(
            conn,
            actor=principal.name,
            action="refund.approved",
            entity_type="refund",
            entity_id=str(refund_id),
            data={
                "approvals": len(previous) + 1,
                "required": refund["required_approvals"],
                "fully_approved": fully,
                "comment": comment,
            },
            event_field="refund_approved",
            event_payload=events_pb2.RefundApproved(
                refund=convert.refund(row), approver=principal.name, fully_approved=fully
            ),
        )
        return row


async def _locked(conn: Connection, refund_id: uuid.UUID) -> asyncpg.Record:
    refund = await refunds.lock(conn, refund_id)
    if refund is None:
        raise NotFound(f"refund {refund_id} does not exist")
    return refund


async def _end_before_processing(
    db: Database,
    principal: Principal,
    *,
    target: RefundStatus,
    request_id: str,
    refund_id_text: str,
    reason: str,
) -> asyncpg.Record:
    """Reject or cancel: the refund ends before any money moved; its reservation is freed."""
    scope = "RejectRefund" if target is R.REJECTED else "CancelRefund"
    changes.validate_request_id(request_id)
    refund_id = validation.refund_id(refund_id_text)
    validation.text(reason, "reason")
    digest = changes.fingerprint(scope, str(refund_id), reason, principal.name)
    async with db.transaction() as conn:
        if await changes.replayed(conn, scope, request_id, digest, str(refund_id)):
            return await _view(conn, refund_id)
        refund = await _locked(conn, refund_id)
        check_refund_transition(R(refund["status"]), target)
        moved = await refunds.set_status(
            conn,
            refund_id,
            target,
            sorted(sources_of(target)),
            decision_reason=reason,
            decided_by=principal.name,
        )
        if not moved:  # the lock above makes this unreachable; keep the guard honest
            raise FailedPrecondition(f"refund {refund_id} changed state concurrently")
        await refunds.cancel_pending_details(conn, refund_id)
        await payments.release(conn, refund["payment_id"], refund_id, refund["amount"])
        row = await _view(conn, refund_id)
        snapshot = convert.refund(row)
        payload: events_pb2.RefundRejected | events_pb2.RefundCanceled
        if target is R.REJECTED:
            field, payload = "refund_rejected", events_pb2.RefundRejected(refund=snapshot)
        else:
            field, payload = "refund_canceled", events_pb2.RefundCanceled(refund=snapshot)
        await changes.record(
            conn,
            actor=principal.name,
            action=f"refund.{target.value.lower()}",
            entity_type="refund",
            entity_id=str(refund_id),
            data={"reason": reason, "released": refund["amount"]},
            event_field=field,
            event_payload=payload,
        )
        return row


async def reject_refund(
    db: Database, principal: Principal, request_id: str, refund_id: str, reason: str
) -> asyncpg.Record:
    return await _end_before_processing(
        db,
        principal,
        target=R.REJECTED,
        request_id=request_id,
        refund_id_text=refund_id,
        reason=reason,
    )


async def cancel_refund(
    db: Database, principal: Principal, request_id: str, refund_id: str, reason: str
) -> asyncpg.Record:
    return await _end_before_processing(
        db,
        principal,
        target=R.CANCELED,
        request_id=request_id,
        refund_id_text=refund_id,
        reason=reason,
    )


async def get_refund(db: Database, refund_id_text: str) -> asyncpg.Record:
    refund_id = validation.refund_id(refund_id_text)
    async with db.connection() as conn:
        return await _view(conn, refund_id)


@dataclass(frozen=True, slots=True)
class ListRefunds:
    page_size: int = 0
    page_token: str = ""
    status: RefundStatus | None = None
    payment_id: str = ""
    customer_id: str = ""
    start: datetime | None = None
    end: datetime | None = None


async def list_refunds(db: Database, query: ListRefunds) -> tuple[list[asyncpg.Record], str]:
    size = validation.page_size(query.page_size)
    validation.identifier(query.payment_id, "payment_id", required=False)
    validation.identifier(query.customer_id, "customer_id", required=False)
    filters = (query.status, query.payment_id, query.customer_id, query.start, query.end)
    after = validation.keyset_after(query.page_token, filters)
    async with db.connection() as conn:
        rows = await refunds.list_views(
            conn,
            status=query.status.value if query.status else None,
            payment_id=query.payment_id or None,
            customer_id=query.customer_id or None,
            start=query.start,
            end=query.end,
            after=after,
            limit=size + 1,
        )
    if len(rows) > size:
        last = rows[size - 1]
        return rows[:size], validation.keyset_token(last["created_at"], last["refund_id"], filters)
    return rows, ""
