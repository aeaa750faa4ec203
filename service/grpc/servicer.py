"""RefundRetryService over gRPC: authenticate, translate protobuf <-> application calls, map
errors. No business logic lives here."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from refundretry.v1 import (
    money_pb2,
    refund_pb2,
    refund_policy_pb2,
    retry_schedule_pb2,
)
from refundretry.v1 import (
    refund_retry_service_pb2 as pb,
)
from refundretry.v1 import (
    refund_retry_service_pb2_grpc as pb_grpc,
)
from repository.database import Database
from service import audit, convert, payments, reconciliation, refunds, settings
from service.auth import Principal, Role, TokenTable
from service.domain.approval_policy import ApprovalTier
from service.domain.money import Money
from service.domain.refund_plan import LineRequest
from service.domain.refund_states import RefundStatus
from service.domain.retry_schedule import DEFAULT_REFUND_SCHEDULE, RetrySchedule
from service.errors import InvalidArgument
from service.grpc.errors import abort
from service.jobs.billing_job import BillingJob, JobRequest, run_once

log = logging.getLogger(__name__)
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]
Impl = Callable[[Any, Req, Principal], Awaitable[Resp]]
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


def rpc(role: Role) -> Callable[[Impl[Req, Resp]], Handler[Req, Resp]]:
    """Authenticate the caller, check ``role``, run the call and map any error to a status."""

    def decorate(impl: Impl[Req, Resp]) -> Handler[Req, Resp]:
        method = impl.__name__

        @functools.wraps(impl)
        async def handler(self: RefundRetryServicer, request: Req, context: Context) -> Resp:
            started = time.perf_counter()
            try:
                metadata = dict(context.invocation_metadata() or ())
                authorization = metadata.get("authorization")
                principal = self.tokens.authenticate(
                    authorization if isinstance(authorization, str) else None
                )
                principal.require(role)
                return await impl(self, request, principal)
            except Exception as exc:  # mapped to a status; never a stack trace on the wire
                log.info(
                    "%s failed: %s",
                    method,
                    exc,
                    extra={"action": "rpc.error", "method": method, "error": type(exc).__name__},
                )
                await abort(context, exc, method)
            finally:
                log.debug(
                    "%s took %.1f ms",
                    method,
                    (time.perf_counter() - started) * 1000,
                    extra={"action": "rpc", "method": method},
                )

        return handler

    return decorate


def money(message: money_pb2.Money, field: str) -> Money:
    return Money.parse(message.currency_code, message.minor_units, field)


def optional_time(holder: Message, field: str) -> datetime | None:
    if not holder.HasField(field):
        return None
    value: Timestamp = getattr(holder, field)
    return value.ToDatetime(tzinfo=UTC)


POLICY_FIELDS = frozenset({"auto_approval_thresholds", "approval_tiers", "refund_window"})
SCHEDULE_FIELDS = frozenset({"description", "intervals", "max_attempts"})


def _mask(paths: list[str], known: frozenset[str]) -> frozenset[str]:
    for path in paths:
        if path not in known:
            raise InvalidArgument("update_mask", f"unknown field {path!r}; known: {sorted(known)}")
    return frozenset(paths) or known


def _policy_patch(
    message: refund_policy_pb2.RefundPolicy, paths: list[str]
) -> settings.PolicyPatch:
    fields = _mask(paths, POLICY_FIELDS)
    auto: dict[str, int] | None = None
    if "auto_approval_thresholds" in fields:
        auto = {}
        for index, threshold in enumerate(message.auto_approval_thresholds):
            name = f"policy.auto_approval_thresholds[{index}].max_amount"
            value = Money.parse(
                threshold.max_amount.currency_code,
                threshold.max_amount.minor_units,
                name,
                allow_zero=True,
            )
            if value.currency in auto:
                raise InvalidArgument(f"{name}.currency_code", "one threshold per currency")
            auto[value.currency] = value.minor_units
    tiers = None
    if "approval_tiers" in fields:
        tiers = tuple(
            ApprovalTier(
                money(tier.min_amount, f"policy.approval_tiers[{index}].min_amount"),
                tier.required_approvals,
            )
            for index, tier in enumerate(message.approval_tiers)
        )
    window = None
    if "refund_window" in fields:
        if not message.HasField("refund_window"):
            raise InvalidArgument("policy.refund_window", "is required")
        window = message.refund_window.ToTimedelta()
    return settings.PolicyPatch(auto_approve=auto, tiers=tiers, refund_window=window)


def _schedule_from_proto(message: retry_schedule_pb2.RetrySchedule) -> RetrySchedule:
    return RetrySchedule(
        code=message.code,
        intervals=tuple(i.ToTimedelta() for i in message.intervals),
        max_attempts=message.max_attempts,
        description=message.description,
    )


class RefundRetryServicer(pb_grpc.RefundRetryServiceServicer):
    def __init__(self, db: Database, tokens: TokenTable, billing_job: BillingJob) -> None:
        self.db = db
        self.tokens = tokens
        self.billing_job = billing_job

    # -- payments ---------------------------------------------------------------------------

    @rpc(Role.PAYMENT_RECORD)
    async def RecordPayment(
        self, request: pb.RecordPaymentRequest, principal: Principal
    ) -> pb.RecordPaymentResponse:
        p = request.payment
        if not request.HasField("payment"):
            raise InvalidArgument("payment", "is required")
        captured = money(p.captured_amount, "payment.captured_amount")
        captured_at = optional_time(p, "capture_time")
        if captured_at is None:
            raise InvalidArgument("payment.capture_time", "is required")
        items = []
        for index, item in enumerate(p.items):
            name = f"payment.items[{index}]"
            items.append(
                payments.ItemInput(
                    item_id=item.item_id,
                    description=item.description,
                    amount=Money.parse(
                        item.amount.currency_code,
                        item.amount.minor_units,
                        f"{name}.amount",
                        allow_zero=True,
                    ),
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
        row, item_rows = await payments.record_payment(
            self.db,
            principal,
            payments.RecordPayment(
                request_id=request.request_id,
                payment_id=p.payment_id,
                gateway=p.gateway,
                gateway_transaction_id=p.gateway_transaction_id,
                customer_id=p.customer_id,
                subscription_id=p.subscription_id,
                billing_event_id=p.billing_event_id,
                captured=captured,
                captured_at=captured_at,
                items=items,
                metadata=dict(p.metadata),
            ),
        )
        return pb.RecordPaymentResponse(payment=convert.payment(row, item_rows))

    @rpc(Role.READ)
    async def GetPayment(
        self, request: pb.GetPaymentRequest, principal: Principal
    ) -> pb.GetPaymentResponse:
        row, items = await payments.get_payment(self.db, request.payment_id)
        return pb.GetPaymentResponse(payment=convert.payment(row, items))

    # -- refunds ----------------------------------------------------------------------------

    @rpc(Role.REFUND_CREATE)
    async def CreateRefund(
        self, request: pb.CreateRefundRequest, principal: Principal
    ) -> pb.CreateRefundResponse:
        amount = money(request.amount, "amount") if request.HasField("amount") else None
        lines = []
        for index, line in enumerate(request.items):
            gross = None
            if line.HasField("amount"):
                gross = money(line.amount, f"items[{index}].amount").minor_units
            lines.append(LineRequest(line.item_id, gross))
        row = await refunds.create_refund(
            self.db,
            principal,
            refunds.CreateRefund(
                request_id=request.request_id,
                payment_id=request.payment_id,
                amount=amount,
                lines=lines,
                reason=request.reason,
                retry_schedule_code=request.retry_schedule_code or DEFAULT_REFUND_SCHEDULE,
            ),
        )
        return pb.CreateRefundResponse(refund=convert.refund(row))

    @rpc(Role.READ)
    async def GetRefund(
        self, request: pb.GetRefundRequest, principal: Principal
    ) -> pb.GetRefundResponse:
        return pb.GetRefundResponse(
            refund=convert.refund(await refunds.get_refund(self.db, request.refund_id))
        )

    @rpc(Role.READ)
    async def ListRefunds(
        self, request: pb.ListRefundsRequest, principal: Principal
    ) -> pb.ListRefundsResponse:
        status = None
        if request.status:
            name = refund_pb2.RefundStatus.Name(request.status).removeprefix("REFUND_STATUS_")
            status = RefundStatus(name)
        rows, token = await refunds.list_refunds(
            self.db,
            refunds.ListRefunds(
                page_size=request.page_size,
                page_token=request.page_token,
                status=status,
                payment_id=request.payment_id,
                customer_id=request.customer_id,
                start=optional_time(request, "create_time_start"),
                end=optional_time(request, "create_time_end"),
            ),
        )
        return pb.ListRefundsResponse(
            refunds=[convert.refund(r) for r in rows], next_page_token=token
        )

    @rpc(Role.REFUND_APPROVE)
    async def ApproveRefund(
        self, request: pb.ApproveRefundRequest, principal: Principal
    ) -> pb.ApproveRefundResponse:
        row = await refunds.approve_refund(
            self.db, principal, request.request_id, request.refund_id, request.comment
        )
        return pb.ApproveRefundResponse(refund=convert.refund(row))

    @rpc(Role.REFUND_APPROVE)
    async def RejectRefund(
        self, request: pb.RejectRefundRequest, principal: Principal
    ) -> pb.RejectRefundResponse:
        row = await refunds.reject_refund(
            self.db, principal, request.request_id, request.refund_id, request.reason
        )
        return pb.RejectRefundResponse(refund=convert.refund(row))

    @rpc(Role.REFUND_CREATE)
    async def CancelRefund(
        self, request: pb.CancelRefundRequest, principal: Principal
    ) -> pb.CancelRefundResponse:
        row = await refunds.cancel_refund(
            self.db, principal, request.request_id, request.refund_id, request.reason
        )
        return pb.CancelRefundResponse(refund=convert.refund(row))

    # -- policy and schedules ---------------------------------------------------------------

    @rpc(Role.READ)
    async def GetRefundPolicy(
        self, request: pb.GetRefundPolicyRequest, principal: Principal
    ) -> pb.GetRefundPolicyResponse:
        return pb.GetRefundPolicyResponse(policy=convert.policy(await settings.get_policy(self.db)))

    @rpc(Role.ADMIN)
    async def UpdateRefundPolicy(
        self, request: pb.UpdateRefundPolicyRequest, principal: Principal
    ) -> pb.UpdateRefundPolicyResponse:
        patch = _policy_patch(request.policy, list(request.update_mask.paths))
        saved = await settings.update_policy(self.db, principal, request.request_id, patch)
        return pb.UpdateRefundPolicyResponse(policy=convert.policy(saved))

    @rpc(Role.RETRY_MANAGE)
    async def CreateRetrySchedule(
        self, request: pb.CreateRetryScheduleRequest, principal: Principal
    ) -> pb.CreateRetryScheduleResponse:
        row = await settings.create_schedule(
            self.db, principal, request.request_id, _schedule_from_proto(request.schedule)
        )
        return pb.CreateRetryScheduleResponse(schedule=convert.schedule(row))

    @rpc(Role.RETRY_MANAGE)
    async def UpdateRetrySchedule(
        self, request: pb.UpdateRetryScheduleRequest, principal: Principal
    ) -> pb.UpdateRetryScheduleResponse:
        fields = _mask(list(request.update_mask.paths), SCHEDULE_FIELDS)
        given = request.schedule
        patch = settings.SchedulePatch(
            code=given.code,
            description=given.description if "description" in fields else None,
            intervals=tuple(i.ToTimedelta() for i in given.intervals)
            if "intervals" in fields
            else None,
            max_attempts=given.max_attempts if "max_attempts" in fields else None,
        )
        row = await settings.update_schedule(self.db, principal, request.request_id, patch)
        return pb.UpdateRetryScheduleResponse(schedule=convert.schedule(row))

    @rpc(Role.READ)
    async def ListRetrySchedules(
        self, request: pb.ListRetrySchedulesRequest, principal: Principal
    ) -> pb.ListRetrySchedulesResponse:
        rows, token = await settings.list_schedules(self.db, request.page_size, request.page_token)
        return pb.ListRetrySchedulesResponse(
            schedules=[convert.schedule(r) for r in rows], next_page_token=token
        )

    # -- billing job, audit, reconciliation -------------------------------------------------

    @rpc(Role.RETRY_MANAGE)
    async def RunBillingJob(
        self, request: pb.RunBillingJobRequest, principal: Principal
    ) -> pb.RunBillingJobResponse:
        if request.limit < 0:
            raise InvalidArgument("limit", "must not be negative")
        start = optional_time(request, "range_start")
        end = optional_time(request, "range_end")
        if start and end and end < start:
            raise InvalidArgument("range_end", "is before range_start")
        if not (request.process_new_refunds or request.process_due_retries):
            raise InvalidArgument(
                "process_new_refunds", "set process_new_refunds and/or process_due_retries"
            )
        summary = await run_once(
            self.db,
            self.billing_job,
            request.request_id,
            JobRequest(
                process_new_refunds=request.process_new_refunds,
                process_due_retries=request.process_due_retries,
                start=start,
                end=end,
                limit=min(request.limit or 500, 10_000),
            ),
        )
        return pb.RunBillingJobResponse(
            summary=pb.BillingJobSummary(
                refunds_claimed=summary.claimed,
                refunds_succeeded=summary.succeeded,
                refunds_pending_at_gateway=summary.pending_at_gateway,
                retries_scheduled=summary.retries_scheduled,
                refunds_failed=summary.failed,
                refunds_requires_action=summary.requires_action,
                outcomes_unknown=summary.unknown,
                errors=summary.errors,
                elapsed=convert.duration(summary.elapsed),
            )
        )

    @rpc(Role.READ)
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, principal: Principal
    ) -> pb.ListAuditEventsResponse:
        rows, token = await audit.list_events(
            self.db,
            entity_type=request.entity_type,
            entity_id=request.entity_id,
            start=optional_time(request, "occur_time_start"),
            end=optional_time(request, "occur_time_end"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(
            audit_events=[convert.audit_event(r) for r in rows], next_page_token=token
        )

    @rpc(Role.READ)
    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, principal: Principal
    ) -> pb.VerifyAuditChainResponse:
        report = await audit.verify_chain(self.db)
        return pb.VerifyAuditChainResponse(
            intact=report.intact,
            rows_checked=report.rows_checked,
            first_broken_sequence=report.first_broken_sequence,
            problem=report.problem,
        )

    @rpc(Role.READ)
    async def Reconcile(
        self, request: pb.ReconcileRequest, principal: Principal
    ) -> pb.ReconcileResponse:
        report = await reconciliation.reconcile(self.db)
        return pb.ReconcileResponse(
            balanced=report.balanced,
            totals=[
                pb.CurrencyTotals(
                    currency_code=t.currency,
                    captured=convert.money(t.currency, t.captured),
                    refunded=convert.money(t.currency, t.refunded),
                    pending=convert.money(t.currency, t.pending),
                    ledger_debits=convert.money(t.currency, t.ledger_debits),
                    ledger_credits=convert.money(t.currency, t.ledger_credits),
                )
                for t in report.totals
            ],
            issues=[
                pb.ReconciliationIssue(
                    check=i.check,
                    entity_id=i.entity_id,
                    message=f"{i.check}: expected {i.expected}, found {i.actual}",
                    expected=convert.money(i.currency, i.expected),
                    actual=convert.money(i.currency, i.actual),
                )
                for i in report.issues
            ],
        )
