"""RefundRetryService over gRPC: authenticate, translate protobuf <-> application calls, map
errors. No business logic lives here."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from refundretry.v1 import (
    analytics_pb2,
    dunning_pb2,
    events_pb2,
    refund_policy_pb2,
    retry_plan_pb2,
    retry_schedule_pb2,
)
from refundretry.v1 import (
    refund_retry_service_pb2 as pb,
)
from refundretry.v1 import (
    refund_retry_service_pb2_grpc as pb_grpc,
)
from repository.database import Database
from service import (
    analytics,
    audit,
    changes,
    convert,
    correlation,
    dunning,
    messages,
    payments,
    reconciliation,
    refunds,
    retries,
    settings,
    validation,
)
from service.auth import Principal, Role, TokenTable
from service.domain.approval_policy import ApprovalTier
from service.domain.dunning import Campaign, FinalAction, Step, StepKind
from service.domain.money import Money
from service.domain.refund_plan import LineRequest
from service.domain.retry_plan import PlanStatus
from service.domain.retry_schedule import (
    DEFAULT_REFUND_SCHEDULE,
    RetrySchedule,
    Timing,
    WalletPolicy,
    validate_code,
)
from service.domain.retry_timing import AllowedHours
from service.errors import InvalidArgument, Unavailable
from service.grpc.caller import principal_of
from service.grpc.errors import abort
from service.jobs.billing_job import BillingJob, JobRequest, JobSummary, run_once
from service.jobs.retry_job import RetryJob
from service.messages import money, optional_time
from service.outbox import watch
from service.outbox.feed import EventFeed

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
            await _correlate(context)
            try:
                principal = principal_of(self.tokens, context)
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


async def _correlate(context: Context) -> None:
    """The call's correlation id (the caller's ``x-correlation-id``, or a new one) for its logs
    and events, sent back in the initial metadata so a caller that sent none learns it."""
    sent = dict(context.invocation_metadata() or ()).get(correlation.METADATA_KEY)
    correlation_id = correlation.begin(sent if isinstance(sent, str) else None)
    await context.send_initial_metadata(((correlation.METADATA_KEY, correlation_id),))


POLICY_FIELDS = frozenset({"auto_approval_thresholds", "approval_tiers", "refund_window"})
SCHEDULE_FIELDS = frozenset(
    {
        "description",
        "intervals",
        "max_attempts",
        "timing",
        "allowed_hours",
        "max_span_days",
        "wallet_policy",
    }
)


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


def _timing(message: retry_schedule_pb2.RetrySchedule) -> Timing:
    if message.timing == retry_schedule_pb2.RETRY_TIMING_UNSPECIFIED:
        return Timing.FIXED
    return Timing(retry_schedule_pb2.RetryTiming.Name(message.timing).removeprefix("RETRY_TIMING_"))


def _wallet(message: retry_schedule_pb2.RetrySchedule) -> WalletPolicy:
    if message.wallet_policy == retry_schedule_pb2.WALLET_POLICY_UNSPECIFIED:
        return WalletPolicy.AFTER_HARD_DECLINE
    name = retry_schedule_pb2.WalletPolicy.Name(message.wallet_policy)
    return WalletPolicy(name.removeprefix("WALLET_POLICY_"))


def _hours(message: retry_schedule_pb2.RetrySchedule) -> AllowedHours | None:
    if not message.HasField("allowed_hours"):
        return None
    return AllowedHours(message.allowed_hours.start_hour, message.allowed_hours.end_hour)


def _schedule_from_proto(message: retry_schedule_pb2.RetrySchedule) -> RetrySchedule:
    return RetrySchedule(
        code=message.code,
        intervals=tuple(i.ToTimedelta() for i in message.intervals),
        max_attempts=message.max_attempts,
        description=message.description,
        timing=_timing(message),
        allowed_hours=_hours(message),
        max_span_days=message.max_span_days or None,
        wallet=_wallet(message),
    )


CAMPAIGN_FIELDS = frozenset({"description", "steps", "final_action", "segment", "priority"})


def _steps(message: dunning_pb2.DunningCampaign) -> tuple[Step, ...]:
    steps = []
    for index, step in enumerate(message.steps):
        if step.kind == dunning_pb2.DUNNING_STEP_KIND_UNSPECIFIED:
            raise InvalidArgument(f"campaign.steps[{index}].kind", "is required")
        kind = StepKind(
            dunning_pb2.DunningStepKind.Name(step.kind).removeprefix("DUNNING_STEP_KIND_")
        )
        steps.append(Step(step.day, kind, step.template))
    return tuple(steps)


def _final_action(message: dunning_pb2.DunningCampaign) -> FinalAction:
    if message.final_action == dunning_pb2.FINAL_ACTION_UNSPECIFIED:
        return FinalAction.NONE
    name = dunning_pb2.FinalAction.Name(message.final_action)
    return FinalAction(name.removeprefix("FINAL_ACTION_"))


def _campaign(message: dunning_pb2.DunningCampaign) -> Campaign:
    return Campaign(
        code=message.code,
        steps=_steps(message),
        final_action=_final_action(message),
        segment=dict(message.segment),
        priority=message.priority,
        description=message.description,
    )


def billing_job_summary(summary: JobSummary) -> pb.BillingJobSummary:
    """What RunBillingJob answers: every count of the run (tests/unit/test_job_summary.py
    checks that none is left out)."""
    retries = summary.payment_retries
    return pb.BillingJobSummary(
        refunds_claimed=summary.claimed,
        refunds_succeeded=summary.succeeded,
        refunds_pending_at_gateway=summary.pending_at_gateway,
        retries_scheduled=summary.retries_scheduled,
        refunds_failed=summary.failed,
        refunds_requires_action=summary.requires_action,
        outcomes_unknown=summary.unknown,
        errors=summary.errors,
        refunds_lease_lost=summary.lease_lost,
        refunds_not_attempted=summary.not_attempted,
        elapsed=convert.duration(summary.elapsed),
        payment_retries=pb.PaymentRetrySummary(
            plans_claimed=retries.claimed,
            recovered=retries.recovered,
            rescheduled=retries.rescheduled,
            waiting_for_customer=retries.waiting_for_customer,
            exhausted=retries.exhausted,
            blocked_by_rules=retries.blocked_by_rules,
            outcomes_unknown=retries.unknown,
            not_attempted=retries.not_attempted,
            card_busy=retries.card_busy,
            lease_lost=retries.lease_lost,
            errors=retries.errors,
            dunning_steps=retries.dunning_steps,
            leases_renewed=retries.leases_renewed,
            settled_meanwhile=retries.settled_meanwhile,
        ),
    )


class RefundRetryServicer(pb_grpc.RefundRetryServiceServicer):
    def __init__(
        self,
        db: Database,
        tokens: TokenTable,
        billing_job: BillingJob,
        retry_job: RetryJob,
        feed: EventFeed | None = None,
        analytics_zones: tuple[str, ...] = ("UTC",),
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.billing_job = billing_job
        self.retry_job = retry_job
        self.feed = feed
        self.analytics_zones = analytics_zones  # the zones the roll-ups are kept for

    # -- payments ---------------------------------------------------------------------------

    @rpc(Role.PAYMENT_RECORD)
    async def RecordPayment(
        self, request: pb.RecordPaymentRequest, principal: Principal
    ) -> pb.RecordPaymentResponse:
        if not request.HasField("payment"):
            raise InvalidArgument("payment", "is required")
        row, item_rows = await payments.record_payment(
            self.db,
            principal,
            messages.record_payment(request.request_id, request.payment),
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
        rows, token = await refunds.list_refunds(self.db, messages.list_refunds(request))
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
            timing=_timing(given) if "timing" in fields else None,
            allowed_hours=_hours(given) if "allowed_hours" in fields else settings.UNSET,
            max_span_days=(given.max_span_days or None)
            if "max_span_days" in fields
            else settings.UNSET,
            wallet=_wallet(given) if "wallet_policy" in fields else None,
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
        return pb.RunBillingJobResponse(summary=billing_job_summary(summary))

    # -- payment retries --------------------------------------------------------------------

    @rpc(Role.PAYMENT_RECORD)
    async def RecordPaymentFailure(
        self, request: pb.RecordPaymentFailureRequest, principal: Principal
    ) -> pb.RecordPaymentFailureResponse:
        row = await retries.record_payment_failure(
            self.db,
            principal,
            messages.record_failure(request.request_id, request),
            context=self.retry_job.context,
        )
        plan = convert.retry_plan(row)
        return pb.RecordPaymentFailureResponse(plan=plan, decision=plan.decisions[-1])

    @rpc(Role.READ)
    async def GetRetryPlan(
        self, request: pb.GetRetryPlanRequest, principal: Principal
    ) -> pb.GetRetryPlanResponse:
        row = await retries.get_plan(self.db, request.plan_id)
        return pb.GetRetryPlanResponse(plan=convert.retry_plan(row))

    @rpc(Role.READ)
    async def ListRetryPlans(
        self, request: pb.ListRetryPlansRequest, principal: Principal
    ) -> pb.ListRetryPlansResponse:
        status = None
        if request.status:
            name = retry_plan_pb2.RetryPlanStatus.Name(request.status)
            status = PlanStatus(name.removeprefix("RETRY_PLAN_STATUS_"))
        rows, token = await retries.list_plans(
            self.db,
            retries.ListPlans(
                page_size=request.page_size,
                page_token=request.page_token,
                status=status,
                customer_id=request.customer_id,
                subscription_id=request.subscription_id,
                payment_id=request.payment_id,
            ),
        )
        return pb.ListRetryPlansResponse(
            plans=[convert.retry_plan(r) for r in rows], next_page_token=token
        )

    async def _change(
        self,
        principal: Principal,
        scope: str,
        request_id: str,
        plan_id: str,
        target: PlanStatus,
        reason: str = "",
    ) -> retry_plan_pb2.RetryPlan:
        row = await retries.change_status(
            self.db,
            principal,
            scope=scope,
            request_id=request_id,
            plan_id_text=plan_id,
            target=target,
            reason=reason,
            context=self.retry_job.context,
        )
        return convert.retry_plan(row)

    @rpc(Role.RETRY_MANAGE)
    async def PauseRetryPlan(
        self, request: pb.PauseRetryPlanRequest, principal: Principal
    ) -> pb.PauseRetryPlanResponse:
        plan = await self._change(
            principal,
            "PauseRetryPlan",
            request.request_id,
            request.plan_id,
            PlanStatus.PAUSED,
            request.reason,
        )
        return pb.PauseRetryPlanResponse(plan=plan)

    @rpc(Role.RETRY_MANAGE)
    async def ResumeRetryPlan(
        self, request: pb.ResumeRetryPlanRequest, principal: Principal
    ) -> pb.ResumeRetryPlanResponse:
        plan = await self._change(
            principal, "ResumeRetryPlan", request.request_id, request.plan_id, PlanStatus.ACTIVE
        )
        return pb.ResumeRetryPlanResponse(plan=plan)

    @rpc(Role.RETRY_MANAGE)
    async def CancelRetryPlan(
        self, request: pb.CancelRetryPlanRequest, principal: Principal
    ) -> pb.CancelRetryPlanResponse:
        plan = await self._change(
            principal,
            "CancelRetryPlan",
            request.request_id,
            request.plan_id,
            PlanStatus.CANCELED,
            request.reason,
        )
        return pb.CancelRetryPlanResponse(plan=plan)

    @rpc(Role.RETRY_MANAGE)
    async def RetryNow(
        self, request: pb.RetryNowRequest, principal: Principal
    ) -> pb.RetryNowResponse:
        changes.validate_request_id(request.request_id)
        plan_id = validation.uuid_id(request.plan_id, "plan_id", "retry plan")
        row = await self.retry_job.retry_now(plan_id, principal.name, request.request_id)
        plan = convert.retry_plan(row)
        return pb.RetryNowResponse(plan=plan, attempt=plan.attempts[-1])

    @rpc(Role.RETRY_MANAGE)
    async def AddPaymentMethod(
        self, request: pb.AddPaymentMethodRequest, principal: Principal
    ) -> pb.AddPaymentMethodResponse:
        row = await retries.add_payment_method(
            self.db,
            principal,
            request.request_id,
            request.plan_id,
            messages.payment_method(request.payment_method, "payment_method"),
        )
        return pb.AddPaymentMethodResponse(plan=convert.retry_plan(row))

    # -- dunning ------------------------------------------------------------------------------

    @rpc(Role.RETRY_MANAGE)
    async def CreateDunningCampaign(
        self, request: pb.CreateDunningCampaignRequest, principal: Principal
    ) -> pb.CreateDunningCampaignResponse:
        row = await dunning.create_campaign(
            self.db, principal, request.request_id, _campaign(request.campaign)
        )
        return pb.CreateDunningCampaignResponse(campaign=convert.dunning_campaign(row))

    @rpc(Role.RETRY_MANAGE)
    async def UpdateDunningCampaign(
        self, request: pb.UpdateDunningCampaignRequest, principal: Principal
    ) -> pb.UpdateDunningCampaignResponse:
        fields = _mask(list(request.update_mask.paths), CAMPAIGN_FIELDS)
        given = request.campaign
        validate_code(given.code, "campaign.code")
        patch = dunning.CampaignPatch(
            code=given.code,
            description=given.description if "description" in fields else settings.UNSET,
            steps=_steps(given) if "steps" in fields else settings.UNSET,
            final_action=_final_action(given) if "final_action" in fields else settings.UNSET,
            segment=dict(given.segment) if "segment" in fields else settings.UNSET,
            priority=given.priority if "priority" in fields else settings.UNSET,
        )
        row = await dunning.update_campaign(self.db, principal, request.request_id, patch)
        return pb.UpdateDunningCampaignResponse(campaign=convert.dunning_campaign(row))

    @rpc(Role.READ)
    async def ListDunningCampaigns(
        self, request: pb.ListDunningCampaignsRequest, principal: Principal
    ) -> pb.ListDunningCampaignsResponse:
        rows, token = await dunning.list_campaigns(self.db, request.page_size, request.page_token)
        return pb.ListDunningCampaignsResponse(
            campaigns=[convert.dunning_campaign(r) for r in rows], next_page_token=token
        )

    @rpc(Role.RETRY_MANAGE)
    async def SetDunningExclusion(
        self, request: pb.SetDunningExclusionRequest, principal: Principal
    ) -> pb.SetDunningExclusionResponse:
        excluded = await dunning.set_exclusion(
            self.db,
            principal,
            request.request_id,
            request.customer_id,
            excluded=request.excluded,
            reason=request.reason,
        )
        return pb.SetDunningExclusionResponse(customer_id=request.customer_id, excluded=excluded)

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

    @rpc(Role.READ)
    async def GetRecoveryMetrics(
        self, request: analytics_pb2.GetRecoveryMetricsRequest, principal: Principal
    ) -> analytics_pb2.GetRecoveryMetricsResponse:
        metrics = await analytics.recovery_metrics(
            self.db, analytics.query_of(request), zones=self.analytics_zones
        )
        return analytics.response_message(metrics)

    # -- events -----------------------------------------------------------------------------

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        """Server streaming, so not through ``rpc``: the same authentication and error
        mapping, around a generator."""
        await _correlate(context)
        try:
            principal = principal_of(self.tokens, context)
            principal.require(Role.READ)
            query = watch.parse_request(
                event_types=list(request.event_types),
                customer_id=request.customer_id,
                payment_id=request.payment_id,
                subscription_id=request.subscription_id,
                after=request.after,
                live_only=request.live_only,
                until_caught_up=request.until_caught_up,
            )
            if self.feed is None:
                raise Unavailable("this replica does not serve WatchEvents")
            async for stored in watch.events(self.feed, self.db, query):
                yield pb.WatchEventsResponse(
                    cursor=str(stored.position), event=events_pb2.Event.FromString(stored.payload)
                )
        except Exception as exc:  # mapped to a status; never a stack trace on the wire
            log.info(
                "WatchEvents failed: %s",
                exc,
                extra={"action": "rpc.error", "method": "WatchEvents", "error": type(exc).__name__},
            )
            await abort(context, exc, "WatchEvents")
