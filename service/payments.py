"""Use cases on payments: record an original transaction, read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from refundretry.v1 import events_pb2
from repository import ledger, payments
from repository.database import Connection, Database
from service import changes, convert, validation
from service.auth import Principal
from service.domain.money import Money
from service.errors import AlreadyExists, InvalidArgument, NotFound
from service.gateways.base import GATEWAYS
from service.gateways.sandbox import OUTCOME_KEY, validate_outcome
from service.retries import recover_by_payment


@dataclass(frozen=True, slots=True)
class ItemInput:
    item_id: str
    description: str
    amount: Money
    tax: Money
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordPayment:
    request_id: str
    payment_id: str
    gateway: str
    gateway_transaction_id: str
    customer_id: str
    subscription_id: str
    billing_event_id: str
    captured: Money
    captured_at: datetime
    items: Sequence[ItemInput] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def _validate(cmd: RecordPayment) -> list[payments.NewItem]:
    changes.validate_request_id(cmd.request_id)
    validation.identifier(cmd.payment_id, "payment.payment_id")
    if cmd.gateway not in GATEWAYS:
        raise InvalidArgument("payment.gateway", f"unknown gateway; known: {', '.join(GATEWAYS)}")
    validation.identifier(cmd.gateway_transaction_id, "payment.gateway_transaction_id")
    validation.identifier(cmd.customer_id, "payment.customer_id")
    validation.identifier(cmd.subscription_id, "payment.subscription_id", required=False)
    validation.identifier(cmd.billing_event_id, "payment.billing_event_id", required=False)
    outcome = cmd.metadata.get(OUTCOME_KEY)
    if outcome is not None and not validate_outcome(outcome):
        raise InvalidArgument(f"payment.metadata[{OUTCOME_KEY}]", "unknown sandbox outcome")
    if len(cmd.metadata) > 50 or any(len(k) > 40 or len(v) > 500 for k, v in cmd.metadata.items()):
        raise InvalidArgument("payment.metadata", "at most 50 keys of 40 and values of 500 chars")
    if not cmd.items:
        return [payments.NewItem("1", "", cmd.captured.minor_units, 0, None, None)]
    seen: set[str] = set()
    items = []
    for index, item in enumerate(cmd.items):
        name = f"payment.items[{index}]"
        validation.identifier(item.item_id, f"{name}.item_id")
        if item.item_id in seen:
            raise InvalidArgument(f"{name}.item_id", f"{item.item_id!r} is listed twice")
        seen.add(item.item_id)
        validation.text(item.description, f"{name}.description", 500)
        for part, value in (("amount", item.amount), ("tax", item.tax)):
            if value.currency != cmd.captured.currency:
                raise InvalidArgument(
                    f"{name}.{part}.currency_code",
                    f"{value.currency} differs from the payment's {cmd.captured.currency}",
                )
        if item.period_start and item.period_end and item.period_end < item.period_start:
            raise InvalidArgument(f"{name}.service_period_end", "is before the period start")
        items.append(
            payments.NewItem(
                item.item_id,
                item.description,
                item.amount.minor_units,
                item.tax.minor_units,
                item.period_start,
                item.period_end,
            )
        )
    total = sum(i.amount + i.tax for i in items)
    if total != cmd.captured.minor_units:
        raise InvalidArgument(
            "payment.captured_amount",
            f"{cmd.captured} differs from the items' amount plus tax "
            f"{Money(cmd.captured.currency, total)}",
        )
    return items


async def load(conn: Connection, payment_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    row = await payments.get(conn, payment_id)
    if row is None:
        raise NotFound(f"payment {payment_id!r} does not exist")
    return row, await payments.items(conn, payment_id)


async def record_payment(
    db: Database, principal: Principal, cmd: RecordPayment
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    items = _validate(cmd)
    digest = changes.fingerprint("RecordPayment", _fields(cmd))
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "RecordPayment", cmd.request_id, digest, cmd.payment_id
        )
        if first is not None:
            return await load(conn, first)
        # A failure of this payment being recorded at the same time waits, then sees it paid.
        await payments.lock_settling(conn, cmd.payment_id, cmd.billing_event_id)
        try:
            await payments.insert(
                conn,
                payment_id=cmd.payment_id,
                gateway=cmd.gateway,
                gateway_transaction_id=cmd.gateway_transaction_id,
                customer_id=cmd.customer_id,
                subscription_id=cmd.subscription_id,
                billing_event_id=cmd.billing_event_id,
                currency=cmd.captured.currency,
                captured_amount=cmd.captured.minor_units,
                captured_at=cmd.captured_at,
                metadata=cmd.metadata,
                items=items,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "payment_gateway_transaction_unique":
                raise AlreadyExists(
                    f"{cmd.gateway} transaction {cmd.gateway_transaction_id!r} is already recorded"
                ) from exc
            raise AlreadyExists(f"payment {cmd.payment_id!r} already exists") from exc
        net = sum(i.amount for i in items)
        tax = sum(i.tax for i in items)
        await ledger.post(
            conn,
            kind="capture",
            payment_id=cmd.payment_id,
            refund_id=None,
            currency=cmd.captured.currency,
            description=f"capture of {cmd.payment_id}",
            lines=[
                (f"gateway_clearing:{cmd.gateway}", cmd.captured.minor_units, 0),
                ("revenue", 0, net),
                ("tax_payable", 0, tax),
            ],
        )
        await recover_by_payment(
            conn,
            payment_id=cmd.payment_id,
            billing_event_id=cmd.billing_event_id,
            paid=cmd.captured,
            actor=principal.name,
        )
        row, item_rows = await load(conn, cmd.payment_id)
        await changes.record(
            conn,
            actor=principal.name,
            action="payment.recorded",
            entity_type="payment",
            entity_id=cmd.payment_id,
            data={
                "amount": cmd.captured.minor_units,
                "currency": cmd.captured.currency,
                "gateway": cmd.gateway,
                "customer_id": cmd.customer_id,
            },
            event_field="payment_recorded",
            event_payload=events_pb2.PaymentRecorded(payment=convert.payment(row, item_rows)),
        )
        return row, item_rows


def _fields(cmd: RecordPayment) -> dict[str, object]:
    return {k: getattr(cmd, k) for k in cmd.__dataclass_fields__ if k != "request_id"}


async def get_payment(db: Database, payment_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    validation.identifier(payment_id, "payment_id")
    async with db.connection() as conn:
        return await load(conn, payment_id)
