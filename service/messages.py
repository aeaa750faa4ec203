"""Protobuf messages -> the application's commands and values, shared by every entry point
that receives them (the gRPC servicer and the RabbitMQ consumers), so a field means the same
and is refused with the same words whichever way it arrives."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from refundretry.v1 import (
    billing_events_pb2,
    money_pb2,
    payment_pb2,
    refund_pb2,
    refund_retry_service_pb2,
    retry_plan_pb2,
)
from service import payments, refunds, retries
from service.domain.decline_codes import Decline
from service.domain.money import Money
from service.domain.refund_states import RefundStatus
from service.domain.retry_plan import Method
from service.domain.retry_schedule import DEFAULT_PAYMENT_SCHEDULE
from service.errors import InvalidArgument


def money(message: money_pb2.Money, field: str, *, allow_zero: bool = False) -> Money:
    return Money.parse(message.currency_code, message.minor_units, field, allow_zero=allow_zero)


def optional_time(holder: Message, field: str) -> datetime | None:
    if not holder.HasField(field):
        return None
    value: Timestamp = getattr(holder, field)
    return value.ToDatetime(tzinfo=UTC)


def record_payment(
    request_id: str, payment: payment_pb2.Payment, field: str = "payment"
) -> payments.RecordPayment:
    """The RecordPayment command of a ``Payment`` message (``field``: its name in the request,
    for the error messages)."""
    captured_at = optional_time(payment, "capture_time")
    if captured_at is None:
        raise InvalidArgument(f"{field}.capture_time", "is required")
    items = []
    for index, item in enumerate(payment.items):
        name = f"{field}.items[{index}]"
        items.append(
            payments.ItemInput(
                item_id=item.item_id,
                description=item.description,
                amount=money(item.amount, f"{name}.amount", allow_zero=True),
                tax=Money.parse(
                    item.tax.currency_code or item.amount.currency_code,
                    item.tax.minor_units,
                    f"{name}.tax",
                    allow_zero=True,
                ),
                period_start=optional_time(item, "service_period_start"),
                period_end=optional_time(item, "service_period_end"),
            )
        )
    return payments.RecordPayment(
        request_id=request_id,
        payment_id=payment.payment_id,
        gateway=payment.gateway,
        gateway_transaction_id=payment.gateway_transaction_id,
        customer_id=payment.customer_id,
        subscription_id=payment.subscription_id,
        billing_event_id=payment.billing_event_id,
        captured=money(payment.captured_amount, f"{field}.captured_amount"),
        captured_at=captured_at,
        items=items,
        metadata=dict(payment.metadata),
    )


def payment_method(message: retry_plan_pb2.PaymentMethod, field: str) -> Method:
    return Method(
        message.payment_method_id, retries.network_of(message.network, f"{field}.network")
    )


def record_failure(
    request_id: str,
    message: refund_retry_service_pb2.RecordPaymentFailureRequest
    | billing_events_pb2.PaymentFailed,
) -> retries.RecordFailure:
    """The RecordFailure command of a RecordPaymentFailure request or a payment.failed event
    (the same fields)."""
    failed_at = optional_time(message, "failure_time")
    if failed_at is None:
        raise InvalidArgument("failure_time", "is required")
    method = payment_method(message.payment_method, "payment_method")
    return retries.RecordFailure(
        request_id=request_id,
        payment_id=message.payment_id,
        billing_event_id=message.billing_event_id,
        customer_id=message.customer_id,
        subscription_id=message.subscription_id,
        amount=money(message.amount, "amount"),
        gateway=message.gateway,
        method=method,
        decline=Decline(
            message.decline.decline_code,
            method.network,
            message.decline.visa_response_code,
            message.decline.mc_advice_code,
        ),
        failed_at=failed_at,
        time_zone=message.time_zone or "UTC",
        wallet=tuple(payment_method(m, f"wallet[{i}]") for i, m in enumerate(message.wallet)),
        schedule_code=message.retry_schedule_code or DEFAULT_PAYMENT_SCHEDULE,
        metadata=dict(message.metadata),
    )


def list_refunds(request: refund_retry_service_pb2.ListRefundsRequest) -> refunds.ListRefunds:
    """What a ListRefunds request (the RPC, or the dashboard's JSON endpoint) asks of
    ``service.refunds.list_refunds``."""
    status = None
    if request.status:
        name = refund_pb2.RefundStatus.Name(request.status).removeprefix("REFUND_STATUS_")
        status = RefundStatus(name)
    return refunds.ListRefunds(
        page_size=request.page_size,
        page_token=request.page_token,
        status=status,
        payment_id=request.payment_id,
        customer_id=request.customer_id,
        start=optional_time(request, "create_time_start"),
        end=optional_time(request, "create_time_end"),
    )
