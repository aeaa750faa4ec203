"""The demo's traffic, sent over gRPC to a running service, and what it made of it.

Phases: record the payments and failed payments of every customer (several customers at a
time, each customer's calls in order) with its refunds and their approvals; drive the retry
plans (a new card where the customer adds one, then ``RetryNow`` until the plan is recovered,
exhausted or its scripted retries are used up); run the billing job once (``RunBillingJob``:
approved refunds go to the sandbox gateway); then read back every plan and refund and the
recovery metrics for the summary.

Every mutating call has a request id made of the seed and the resource, so a second run with
the same seed sends the same requests and gets the first answers back: it adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from tqdm import tqdm

from refundretry.v1 import (
    analytics_pb2,
    money_pb2,
    payment_pb2,
    refund_pb2,
    refund_policy_pb2,
    retry_plan_pb2,
)
from refundretry.v1 import refund_retry_service_pb2 as pb
from service.convert import money
from service.demo.access import Cast, DemoError, Token
from service.demo.population import (
    CURRENCIES,
    SMALL_REFUND_MAX,
    Card,
    Customer,
    Invoice,
    marker_payment_id,
    population,
)
from service.domain.money import Money
from service.gateways.sandbox import CHARGE_OUTCOME_KEY, OUTCOME_KEY

T = TypeVar("T")
CALL_TIMEOUT = 30.0
DASHBOARD_PATH = "/api/billing/refund-retry-workflows/dashboard"

ACTIVE = retry_plan_pb2.RETRY_PLAN_STATUS_ACTIVE
PENDING_APPROVAL = refund_pb2.REFUND_STATUS_PENDING_APPROVAL
REACHED_ISSUER = frozenset(
    {
        retry_plan_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
        retry_plan_pb2.ATTEMPT_OUTCOME_DECLINED,
        retry_plan_pb2.ATTEMPT_OUTCOME_REQUIRES_ACTION,
    }
)


@dataclass(frozen=True, slots=True)
class Options:
    target: str
    tls: bool
    seed: int
    customers: int
    days: int
    http_url: str
    concurrency: int
    billing_job: bool
    keep_policy: bool
    metrics_wait: float
    connect_timeout: float


class Refused(Exception):
    """A status the caller expects and handles (e.g. FAILED_PRECONDITION from RetryNow)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def timestamp(at: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(at)
    return value


def method_of(card: Card) -> retry_plan_pb2.PaymentMethod:
    return retry_plan_pb2.PaymentMethod(
        payment_method_id=card.payment_method_id, network=card.network
    )


def _name(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", " ")


class Progress:
    """A tqdm bar on a terminal; otherwise a line of counts at each phase and each tenth."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._phase = ""
        self._reported = -1
        self._bar: tqdm[Any] | None = None
        if stream.isatty():
            self._bar = tqdm(total=total, file=stream, unit="call", dynamic_ncols=True)

    def phase(self, name: str) -> None:
        self._phase = name
        if self._bar is not None:
            self._bar.set_description(name)
        else:
            self._line()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.total and self.done * 10 // self.total > self._reported:
            self._line()

    def extend(self, count: int) -> None:
        self.total += count
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def _line(self) -> None:
        self._reported = self.done * 10 // self.total if self.total else 0
        print(
            f"refund-retry demo: {self.done}/{self.total} calls; {self._phase}",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass
class Tally:
    """What this run did (calls made; replays of an earlier run count too)."""

    payments: Counter[str] = field(default_factory=Counter)  # by currency
    failures: int = 0
    refunds: int = 0
    approvals: int = 0
    rejections: int = 0
    cancellations: int = 0
    cards_added: int = 0
    retries: int = 0
    retries_refused: Counter[str] = field(default_factory=Counter)  # by status and reason

    def describe(self) -> str:
        refused = sum(self.retries_refused.values())
        return (
            f"{sum(self.payments.values())} payments, {self.failures} failed payments, "
            f"{self.refunds} refunds ({self.approvals} approvals, {self.rejections} rejected, "
            f"{self.cancellations} canceled), {self.cards_added} cards added, {self.retries} "
            f"retries ({refused} refused)"
        )


@dataclass
class Outcome:
    """The demo's view of its plans and refunds at the end, and the service's metrics."""

    anchor: datetime
    continued: bool
    plans: dict[str, retry_plan_pb2.RetryPlan]  # by failed payment id
    refunds: dict[str, refund_pb2.RefundEvent]  # by refunded payment id
    failures: dict[str, str]  # failed payment id -> scenario
    captured: Counter[str]  # minor units by currency, payments recorded
    payments: int
    billing_job: pb.BillingJobSummary | None
    metrics: analytics_pb2.GetRecoveryMetricsResponse | None
    metrics_note: str
    notes: list[str]
    tally: Tally


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, DemoError):
            return exc
    return group.exceptions[0]


class Demo:
    def __init__(self, options: Options, cast: Cast, stub: Any, source: str) -> None:
        self.options = options
        self.cast = cast
        self._stub = stub
        self._source = source
        self.tally = Tally()
        self.progress: Progress | None = None
        self.notes: list[str] = []
        self._plans: dict[str, retry_plan_pb2.RetryPlan] = {}
        self._refunds: dict[str, refund_pb2.RefundEvent] = {}
        self._last_write = datetime.now(UTC)

    # ---- calls ----------------------------------------------------------------------------

    def _rid(self, kind: str, name: str) -> str:
        return f"demo-{self.options.seed}-{kind}-{name}"

    async def call(
        self,
        token: Token,
        method: str,
        request: Message,
        *,
        refused: Collection[grpc.StatusCode] = (),
    ) -> Any:
        rpc: Callable[..., Awaitable[Any]] = getattr(self._stub, method)
        try:
            response = await rpc(
                request,
                metadata=(("authorization", f"Bearer {token.secret}"),),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in refused:
                raise Refused(code, details) from None
            raise self._error(token, method, request, code, details) from None
        finally:
            if self.progress is not None:
                self.progress.advance()
        if hasattr(request, "request_id"):
            self._last_write = datetime.now(UTC)
        return response

    def _error(
        self, token: Token, method: str, request: Message, code: grpc.StatusCode, details: str
    ) -> DemoError:
        target = self.options.target
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return DemoError(
                f"the service at {target} does not accept the token of {token.principal} "
                f"from {self._source} ({details}): use the server's tokens (--token-file)"
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return DemoError(f"{method}: {details} (tokens from {self._source})")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return DemoError(f"lost the service at {target} during {method}: {details}")
        if code is grpc.StatusCode.ALREADY_EXISTS:
            request_id = getattr(request, "request_id", "")
            return DemoError(
                f"{method} {request_id}: {details}. Seed {self.options.seed} was run before "
                "with other options: run it with the same ones, or use another --seed"
            )
        return DemoError(f"{method} failed: {code.name}: {details}")

    async def _each(self, items: Sequence[T], work: Callable[[T], Awaitable[None]]) -> None:
        """``work`` on every item, ``concurrency`` at a time; the first error stops them all."""
        queue = iter(items)

        async def worker() -> None:
            for item in queue:
                await work(item)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.options.concurrency, len(items))):
                    group.create_task(worker())
        except BaseExceptionGroup as errors:
            raise _first_error(errors) from None

    # ---- the run ----------------------------------------------------------------------------

    async def check_tokens(self) -> None:
        """Every token the demo will use, once, before anything is written: a token the
        server does not know stops the demo now, with one line."""
        for token in self.cast.everyone:
            # PERMISSION_DENIED: the server knows the token, only not with the read role.
            with contextlib.suppress(Refused):
                await self.call(
                    token,
                    "GetRefundPolicy",
                    pb.GetRefundPolicyRequest(),
                    refused=(grpc.StatusCode.PERMISSION_DENIED,),
                )

    async def anchor(self) -> tuple[datetime, bool]:
        """The time the population is laid out before: now, or that of the first run of the
        seed (kept in its first payment's metadata). True when the seed was run before."""
        marker = marker_payment_id(self.options.seed)
        try:
            response = await self.call(
                self.cast.reader,
                "GetPayment",
                pb.GetPaymentRequest(payment_id=marker),
                refused=(grpc.StatusCode.NOT_FOUND,),
            )
        except Refused:
            return datetime.now(UTC).replace(microsecond=0), False
        metadata = response.payment.metadata
        try:
            anchor = datetime.fromisoformat(metadata["demo_anchor"])
            days = int(metadata["demo_days"])
        except (KeyError, ValueError):
            raise DemoError(
                f"payment {marker} exists but was not recorded by the demo: use another --seed",
                2,
            ) from None
        if days != self.options.days:
            raise DemoError(
                f"seed {self.options.seed} was run with --days {days}: run it with the same "
                "--days, or use another --seed",
                2,
            )
        return anchor, True

    async def policy(self) -> None:
        """Refunds up to SMALL_REFUND_MAX are approved by policy: set those thresholds for the
        demo's currencies that have none (an admin's call), unless told to keep the policy."""
        response = await self.call(self.cast.reader, "GetRefundPolicy", pb.GetRefundPolicyRequest())
        current = response.policy
        have = {t.max_amount.currency_code for t in current.auto_approval_thresholds}
        missing = [c for c in CURRENCIES if c not in have]
        if not missing:
            return
        if self.options.keep_policy or self.cast.admin is None:
            why = "--keep-policy" if self.options.keep_policy else "no admin token"
            self.notes.append(
                f"{', '.join(missing)} have no auto-approval threshold ({why}): small refunds "
                "in them wait for an approver too"
            )
            return
        thresholds = list(current.auto_approval_thresholds) + [
            refund_policy_pb2.AutoApprovalThreshold(max_amount=money(c, SMALL_REFUND_MAX[c]))
            for c in missing
        ]
        await self.call(
            self.cast.admin,
            "UpdateRefundPolicy",
            pb.UpdateRefundPolicyRequest(
                request_id=self._rid("policy", f"v{current.version}"),
                policy=refund_policy_pb2.RefundPolicy(auto_approval_thresholds=thresholds),
                update_mask=FieldMask(paths=["auto_approval_thresholds"]),
            ),
        )
        shown = ", ".join(str(Money(c, SMALL_REFUND_MAX[c])) for c in missing)
        self.notes.append(f"set the approval policy: refunds up to {shown} are auto-approved")

    def _metadata(self, customer: Customer, anchor: datetime) -> dict[str, str]:
        return {
            "plan": customer.tier,
            "country": customer.region.country,
            "demo_seed": str(self.options.seed),
            "demo_anchor": anchor.isoformat(),
            "demo_days": str(self.options.days),
        }

    def _payment(
        self, customer: Customer, invoice: Invoice, at: datetime, anchor: datetime
    ) -> payment_pb2.Payment:
        currency = customer.currency
        items = []
        for item in invoice.items:
            message = payment_pb2.BillingEventItem(
                item_id=item.item_id,
                description=item.description,
                amount=money(currency, item.amount),
                tax=money(currency, item.tax),
            )
            if item.period_start is not None and item.period_end is not None:
                message.service_period_start.CopyFrom(timestamp(item.period_start))
                message.service_period_end.CopyFrom(timestamp(item.period_end))
            items.append(message)
        return payment_pb2.Payment(
            payment_id=invoice.payment_id,
            gateway="sandbox",
            gateway_transaction_id=invoice.gateway_transaction_id,
            customer_id=customer.customer_id,
            subscription_id=customer.subscription_id,
            billing_event_id=invoice.billing_event_id,
            captured_amount=money(currency, invoice.total),
            capture_time=timestamp(at),
            items=items,
            metadata={OUTCOME_KEY: invoice.refund_outcome, **self._metadata(customer, anchor)},
        )

    async def record_payment(
        self, customer: Customer, invoice: Invoice, at: datetime, anchor: datetime
    ) -> None:
        await self.call(
            self.cast.recorder,
            "RecordPayment",
            pb.RecordPaymentRequest(
                request_id=self._rid("pay", invoice.payment_id),
                payment=self._payment(customer, invoice, at, anchor),
            ),
        )
        self.tally.payments[customer.currency] += 1

    async def record_failure(self, customer: Customer, invoice: Invoice, anchor: datetime) -> None:
        failure = invoice.failure
        assert failure is not None
        scenario = failure.scenario
        card = customer.card
        decline = retry_plan_pb2.Decline(decline_code=scenario.decline_code)
        if card.network == "VISA":
            decline.visa_response_code = scenario.visa_response_code
        if card.network == "MASTERCARD":
            decline.mc_advice_code = scenario.mc_advice_code
        response = await self.call(
            self.cast.recorder,
            "RecordPaymentFailure",
            pb.RecordPaymentFailureRequest(
                request_id=self._rid("pf", invoice.payment_id),
                payment_id=invoice.payment_id,
                billing_event_id=invoice.billing_event_id,
                customer_id=customer.customer_id,
                subscription_id=customer.subscription_id,
                amount=money(customer.currency, invoice.total),
                gateway="sandbox",
                payment_method=method_of(card),
                decline=decline,
                failure_time=timestamp(invoice.at),
                time_zone=customer.region.time_zone,
                wallet=[method_of(c) for c in customer.wallet],
                retry_schedule_code=failure.schedule_code,
                metadata={
                    CHARGE_OUTCOME_KEY: failure.charge_outcome,
                    "demo_scenario": scenario.name,
                    **self._metadata(customer, anchor),
                },
            ),
        )
        self._plans[invoice.payment_id] = response.plan
        self.tally.failures += 1
        if failure.paid_at is not None:  # paid on the payment page: the plan is recovered
            await self.record_payment(customer, invoice, failure.paid_at, anchor)

    async def refund(self, customer: Customer, invoice: Invoice) -> None:
        plan = invoice.refund
        assert plan is not None
        requester = self.cast.requesters[int(plan.requester * len(self.cast.requesters))]
        request = pb.CreateRefundRequest(
            request_id=self._rid("rf", invoice.payment_id),
            payment_id=invoice.payment_id,
            reason=plan.reason,
        )
        if plan.amount is not None:
            request.amount.CopyFrom(money(customer.currency, plan.amount))
        request.items.extend(pb.RefundLineItem(item_id=i) for i in plan.item_ids)
        refund = (await self.call(requester, "CreateRefund", request)).refund
        self.tally.refunds += 1
        if refund.status == PENDING_APPROVAL:
            refund = await self._decide(invoice, refund, requester, plan.fate)
        else:
            assert self.progress is not None
            self.progress.advance(2)  # the approvals it did not need
        self._refunds[invoice.payment_id] = refund

    async def _decide(
        self, invoice: Invoice, refund: refund_pb2.RefundEvent, requester: Token, fate: str
    ) -> refund_pb2.RefundEvent:
        """Approve (by as many people as the policy wants), reject, cancel, or leave it."""
        assert self.progress is not None
        people = self.cast.approvers_for(requester)
        turn = invoice.number % len(people) if people else 0
        approvers = people[turn:] + people[:turn]  # not always the same person
        if fate == "approve":
            given = {a.approver for a in refund.approvals}
            others = [a for a in approvers if a.principal not in given]
            needed = refund.required_approvals - len(given)
            if 0 < needed <= len(others):
                for approver in others[:needed]:
                    refund = (
                        await self.call(
                            approver,
                            "ApproveRefund",
                            pb.ApproveRefundRequest(
                                request_id=self._rid(
                                    "ap", f"{invoice.payment_id}-{approver.principal}"
                                ),
                                refund_id=refund.refund_id,
                                comment="checked against the invoice",
                            ),
                        )
                    ).refund
                    self.tally.approvals += 1
                self.progress.advance(max(0, 2 - needed))
                return refund
        elif fate == "reject" and approvers:
            refund = (
                await self.call(
                    approvers[0],
                    "RejectRefund",
                    pb.RejectRefundRequest(
                        request_id=self._rid("rj", invoice.payment_id),
                        refund_id=refund.refund_id,
                        reason="outside the refund terms",
                    ),
                )
            ).refund
            self.tally.rejections += 1
            self.progress.advance(1)
            return refund
        elif fate == "cancel":
            refund = (
                await self.call(
                    requester,
                    "CancelRefund",
                    pb.CancelRefundRequest(
                        request_id=self._rid("cn", invoice.payment_id),
                        refund_id=refund.refund_id,
                        reason="the customer changed their mind",
                    ),
                )
            ).refund
            self.tally.cancellations += 1
            self.progress.advance(1)
            return refund
        self.progress.advance(2)
        return refund

    async def customer(self, customer: Customer, anchor: datetime) -> None:
        """One customer's invoices in time order, then the refunds of its payments."""
        for invoice in customer.invoices:
            if invoice.failure is None:
                await self.record_payment(customer, invoice, invoice.at, anchor)
            else:
                await self.record_failure(customer, invoice, anchor)
        for invoice in customer.invoices:
            if invoice.refund is not None:
                await self.refund(customer, invoice)

    async def drive(self, customer: Customer, invoice: Invoice) -> None:
        """The customer adds a card where the story says so; then RetryNow until the plan
        is no longer active or its scripted retries are used up. A refusal (a network rule,
        an attempt already running, the gateway's breaker open) is counted, not fatal."""
        failure = invoice.failure
        assert failure is not None
        assert self.progress is not None
        plan = self._plans[invoice.payment_id]
        if failure.new_card is not None:
            if plan.status == ACTIVE and plan.waiting_for_payment_method:
                plan = (
                    await self.call(
                        self.cast.operator,
                        "AddPaymentMethod",
                        pb.AddPaymentMethodRequest(
                            request_id=self._rid("pm", invoice.payment_id),
                            plan_id=plan.plan_id,
                            payment_method=method_of(failure.new_card),
                        ),
                    )
                ).plan
                self.tally.cards_added += 1
            else:
                self.progress.advance()
        for number in range(1, failure.retries + 1):
            if plan.status != ACTIVE or plan.waiting_for_payment_method:
                self.progress.advance(failure.retries - number + 1)
                break
            try:
                response = await self.call(
                    self.cast.operator,
                    "RetryNow",
                    pb.RetryNowRequest(
                        request_id=self._rid("rn", f"{invoice.payment_id}-{number}"),
                        plan_id=plan.plan_id,
                    ),
                    refused=(grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE),
                )
            except Refused as exc:
                self.tally.retries_refused[f"{exc.code.name}: {exc.details}"] += 1
                self.progress.advance(failure.retries - number)
                break
            plan = response.plan
            self.tally.retries += 1
        self._plans[invoice.payment_id] = plan

    async def billing_job(self) -> pb.BillingJobSummary:
        response = await self.call(
            self.cast.operator,
            "RunBillingJob",
            pb.RunBillingJobRequest(
                request_id=self._rid("job", f"c{self.options.customers}"),
                process_new_refunds=True,
                process_due_retries=True,
            ),
        )
        summary: pb.BillingJobSummary = response.summary
        return summary

    async def read_back(self) -> None:
        """The plans and refunds as they are now (the billing job has moved some)."""

        async def plan(payment_id: str) -> None:
            response = await self.call(
                self.cast.reader,
                "GetRetryPlan",
                pb.GetRetryPlanRequest(plan_id=self._plans[payment_id].plan_id),
            )
            self._plans[payment_id] = response.plan

        async def refund(payment_id: str) -> None:
            response = await self.call(
                self.cast.reader,
                "GetRefund",
                pb.GetRefundRequest(refund_id=self._refunds[payment_id].refund_id),
            )
            self._refunds[payment_id] = response.refund

        await self._each(list(self._plans), plan)
        await self._each(list(self._refunds), refund)

    async def metrics(
        self, anchor: datetime
    ) -> tuple[analytics_pb2.GetRecoveryMetricsResponse | None, str]:
        """GetRecoveryMetrics over the demo's days (UTC), once the service's analytics
        roll-up has folded the demo's writes in (waiting at most ``metrics_wait`` s)."""
        start = (anchor - timedelta(days=self.options.days)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        deadline = time.monotonic() + self.options.metrics_wait
        while True:
            request = analytics_pb2.GetRecoveryMetricsRequest(
                start_time=timestamp(start),
                end_time=timestamp(datetime.now(UTC) + timedelta(seconds=1)),
                time_zone="UTC",
            )
            try:
                response: analytics_pb2.GetRecoveryMetricsResponse = await self.call(
                    self.cast.reader,
                    "GetRecoveryMetrics",
                    request,
                    refused=(grpc.StatusCode.INVALID_ARGUMENT,),
                )
            except Refused as exc:
                return None, f"recovery metrics unavailable: {exc.details}"
            if response.HasField("rolled_up_time") and (
                response.rolled_up_time.ToDatetime(tzinfo=UTC) >= self._last_write
            ):
                return response, ""
            if time.monotonic() >= deadline:
                return response, (
                    "the analytics roll-up has not folded in the demo's last changes yet; the "
                    "dashboard shows them after the next one (ANALYTICS_ROLLUP_SECONDS)"
                )
            assert self.progress is not None
            self.progress.extend(1)
            await asyncio.sleep(0.5)

    async def run(self) -> Outcome:
        options = self.options
        await self.check_tokens()
        anchor, continued = await self.anchor()
        if continued:
            self.notes.append(
                f"seed {options.seed} was first run at {anchor:%Y-%m-%d %H:%M:%S} UTC: its "
                "population is sent again with the same request ids (what exists is kept, "
                "what is missing is added)"
            )
        await self.policy()
        customers = population(options.seed, options.customers, options.days, anchor)
        invoices = [i for c in customers for i in c.invoices]
        failed = [(c, i) for c in customers for i in c.invoices if i.failure is not None]
        failures = [i.failure for _, i in failed if i.failure is not None]
        refunds = sum(1 for i in invoices if i.refund is not None)
        total = (
            len(invoices)
            + sum(1 for f in failures if f.paid_at is not None)  # paid another way
            + 3 * refunds  # each refund: its request and up to two decisions
            + sum(f.retries + (f.new_card is not None) for f in failures)
            + (1 if options.billing_job else 0)
            + len(failures)  # read back every plan
            + refunds  # and every refund
            + 1  # the metrics
        )
        self.progress = progress = Progress(total)
        try:
            progress.phase("recording payments, failed payments and refunds")
            # The first customer first: its oldest payment marks the seed's population.
            await self.customer(customers[0], anchor)
            await self._each(customers[1:], lambda c: self.customer(c, anchor))
            progress.phase("retrying failed payments (RetryNow)")
            await self._each(failed, lambda pair: self.drive(*pair))
            job = None
            if options.billing_job:
                progress.phase("running the billing job (RunBillingJob)")
                job = await self.billing_job()
            progress.phase("reading back plans and refunds")
            await self.read_back()
            progress.phase("reading the recovery metrics (GetRecoveryMetrics)")
            metrics, note = await self.metrics(anchor)
            progress.phase("done")
        finally:
            progress.close()
        return Outcome(
            anchor=anchor,
            continued=continued,
            plans=self._plans,
            refunds=self._refunds,
            failures={i.payment_id: i.failure.scenario.name for _, i in failed if i.failure},
            captured=_captured(customers),
            payments=sum(self.tally.payments.values()),
            billing_job=job,
            metrics=metrics,
            metrics_note=note,
            notes=self.notes,
            tally=self.tally,
        )


def _captured(customers: Iterable[Customer]) -> Counter[str]:
    total: Counter[str] = Counter()
    for customer in customers:
        for invoice in customer.invoices:
            if invoice.failure is None or invoice.failure.paid_at is not None:
                total[customer.currency] += invoice.total
    return total


def _amounts(values: Iterable[money_pb2.Money]) -> str:
    return ", ".join(str(Money(m.currency_code, m.minor_units)) for m in values) or "none"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _listed(parts: Iterable[str]) -> str:
    text = ", ".join(parts)
    return f"  ({text})" if text else ""


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report(options: Options, outcome: Outcome, dashboard_token: str) -> str:
    """The summary printed at the end."""
    lines = [
        f"refund-retry demo, seed {options.seed}: {_plural(options.customers, 'customer')}, "
        f"payments over the {_plural(options.days, 'day')} before "
        f"{outcome.anchor:%Y-%m-%d %H:%M} UTC"
    ]
    lines += [f"  note: {note}" for note in outcome.notes]
    by_currency = outcome.tally.payments
    lines.append(
        f"  payments recorded     {outcome.payments}"
        + _listed(f"{c} {n}" for c, n in sorted(by_currency.items()))
        + "; captured "
        + _amounts(money(c, n) for c, n in sorted(outcome.captured.items()))
    )
    plans = outcome.plans
    scenarios = Counter(outcome.failures[p].split(",")[0] for p in plans)
    lines.append(
        f"  failed payments       {len(plans)}"
        + _listed(f"{name} {n}" for name, n in scenarios.most_common())
    )
    status = Counter(p.status for p in plans.values())
    by_retry = sum(
        1
        for p in plans.values()
        if p.status == retry_plan_pb2.RETRY_PLAN_STATUS_RECOVERED
        and any(a.outcome == retry_plan_pb2.ATTEMPT_OUTCOME_SUCCEEDED for a in p.attempts)
    )
    recovered = status[retry_plan_pb2.RETRY_PLAN_STATUS_RECOVERED]
    waiting = sum(1 for p in plans.values() if p.status == ACTIVE and p.waiting_for_payment_method)
    lines.append(
        f"    recovered           {recovered}  ({by_retry} by a retry, {recovered - by_retry} "
        "paid another way)"
    )
    lines.append(f"    exhausted           {status[retry_plan_pb2.RETRY_PLAN_STATUS_EXHAUSTED]}")
    still_open = status[ACTIVE] + status[retry_plan_pb2.RETRY_PLAN_STATUS_PAUSED]
    lines.append(f"    open                {still_open}  ({waiting} waiting for the customer)")
    attempts = [
        a
        for p in plans.values()
        for a in p.attempts
        if a.source != retry_plan_pb2.ATTEMPT_SOURCE_FAILURE and a.outcome in REACHED_ISSUER
    ]
    succeeded = sum(1 for a in attempts if a.outcome == retry_plan_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
    refused = outcome.tally.retries_refused
    lines.append(
        f"  retry attempts        {len(attempts)}  ({succeeded} succeeded); RetryNow refused "
        f"{sum(refused.values())} times"
        + "".join(f"\n    {n} x {reason}" for reason, n in refused.most_common(3))
    )
    refunds = Counter(r.status for r in outcome.refunds.values())
    auto = sum(1 for r in outcome.refunds.values() if r.auto_approved)
    by_people = sum(1 for r in outcome.refunds.values() if r.approvals)
    lines.append(
        f"  refunds               {len(outcome.refunds)}"
        + _listed(
            f"{_name(s, refund_pb2.RefundStatus, 'REFUND_STATUS_')} {n}"
            for s, n in sorted(refunds.items())
        )
        + f"; {auto} approved by policy, {by_people} by people"
    )
    lines.append(f"  pending approvals     {refunds[PENDING_APPROVAL]}")
    job = outcome.billing_job
    if job is not None:
        lines.append(
            f"  billing job           {job.refunds_claimed} refunds claimed, "
            f"{job.refunds_succeeded} succeeded, {job.refunds_pending_at_gateway} pending at "
            f"the gateway, {job.retries_scheduled} to retry, {job.refunds_failed} failed; "
            f"{job.payment_retries.plans_claimed} payment retries due"
        )
    metrics = outcome.metrics
    if metrics is not None:
        total = metrics.total
        rolled = (
            f"rolled up {metrics.rolled_up_time.ToDatetime(tzinfo=UTC):%H:%M:%S} UTC"
            if metrics.HasField("rolled_up_time")
            else "not rolled up yet"
        )
        lines.append(
            f"  recovery metrics      (GetRecoveryMetrics, UTC, {metrics.first_day} .. "
            f"{metrics.last_day}, {rolled}, the whole service)"
        )
        p50 = total.time_to_recover_p50.ToTimedelta().total_seconds()
        lines.append(
            f"    recovery rate {_percent(total.recovery_rate)}, payment success rate "
            f"{_percent(total.payment_success_rate)}, attempts per recovery "
            f"{total.attempts_per_recovery:.2f}, time to recover p50 {_duration(p50)}"
        )
        lines.append(f"    amount recovered {_amounts(total.amount_recovered)}")
        lines.append(
            f"    pending approvals {total.pending_approvals} "
            f"({_amounts(total.pending_approval_amount)})"
        )
    if outcome.metrics_note:
        lines.append(f"  note: {outcome.metrics_note}")
    base = options.http_url.rstrip("/")
    lines.append(f"  dashboard             {base}{DASHBOARD_PATH}#token={quote(dashboard_token)}")
    return "\n".join(lines) + "\n"
