"""The Billing Job: executes approved refunds and due retries through the gateways.

Each refund detail goes through three short steps, never holding a transaction open across
the network:

1. **claim** (one statement for the batch): lease due details with ``FOR UPDATE SKIP LOCKED``,
   so any number of workers share the work;
2. **start** (a transaction): open a new attempt (PENDING / RETRY_SCHEDULED -> PROCESSING,
   attempt_count + 1), or find the open attempt of a worker that died, or a refund pending at
   the gateway to sync;
3. **call** the gateway with the idempotency key ``refund-<detail>-attempt-<n>``, then
   **record** the outcome, the refund's aggregated status, the payment's balances, the ledger
   journal, the outbox event and the audit row in one transaction, under the lease.

A worker that dies between the call and the record leaves the attempt open; once its lease
expires another worker replays the same attempt with the same key, so the gateway moves the
money once.

A call that never reached the gateway (NOT_ATTEMPTED: it was down, or its circuit breaker is
open) fails nothing and uses up no attempt: a new attempt is given back, a replay or a sync stays
as it was, and the detail is looked at again soon. An outcome the gateway reports by itself (a
webhook) is recorded by the same steps as the job's own (:meth:`BillingJob.apply_reported_outcome`).

A sync of a refund pending at the gateway that learns nothing new (still pending, nothing
changed) only moves the detail's next check: no event, no audit row. A gateway that cannot read
a refund (``reads_refunds`` False: Adyen, whose outcomes only arrive by webhook) is not synced on
a schedule: the job reads once more, soon after the refund's id is stored (a stored notification
that outran the gateway's answer), then waits for the notification until
``refund_notification_timeout`` after the attempt started, when the detail becomes
REQUIRES_ACTION (``notification_overdue``) for a person and is checked no more; a notification
that comes later still settles it (REQUIRES_ACTION -> SUCCEEDED / FAILED).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from refundretry.v1 import events_pb2
from repository import billing_job as queue
from repository import ledger, payments, refunds
from repository.database import Connection, Database
from service import changes, convert
from service.auth import SYSTEM
from service.domain.money import Money
from service.domain.refund_states import (
    DetailStatus,
    RefundStatus,
    aggregate_status,
    check_detail_transition,
    check_refund_transition,
)
from service.domain.retry_schedule import RetrySchedule
from service.errors import IllegalTransition
from service.gateways.base import (
    Gateway,
    OutcomeKind,
    RefundOutcome,
    RefundRequest,
    reads_refunds,
)
from service.jobs.retry_job import RetryJob, RetrySummary

log = logging.getLogger(__name__)
D, R = DetailStatus, RefundStatus
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# Gateways keep idempotency keys for a limited time (Stripe: 24 hours). Replaying an attempt
# whose outcome is unknown after that could move money twice, so before then the detail goes to
# REQUIRES_ACTION for a person to check the gateway.
UNKNOWN_GIVE_UP_AFTER = timedelta(hours=20)
# How long a refund at a gateway that cannot read refunds waits for its outcome notification
# before a person is asked to look (REFUND_NOTIFICATION_TIMEOUT_SECONDS).
REFUND_NOTIFICATION_TIMEOUT = timedelta(hours=48)
NOTIFICATION_OVERDUE = "notification_overdue"
TRANSIENT_DB_RETRIES = 3


@dataclass(frozen=True, slots=True)
class JobRequest:
    process_new_refunds: bool = True
    process_due_retries: bool = True
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 500


@dataclass(slots=True)
class JobSummary:
    claimed: int = 0
    succeeded: int = 0
    pending_at_gateway: int = 0
    retries_scheduled: int = 0
    failed: int = 0
    requires_action: int = 0
    unknown: int = 0
    lease_lost: int = 0
    errors: int = 0
    # Replays and syncs that never reached the gateway (e.g. its circuit breaker was open).
    not_attempted: int = 0
    elapsed: timedelta = field(default_factory=timedelta)
    payment_retries: RetrySummary = field(default_factory=RetrySummary)

    def count(self, status: str) -> None:
        attribute = {
            "succeeded": "succeeded",
            "pending": "pending_at_gateway",
            "retry": "retries_scheduled",
            "failed": "failed",
            "requires_action": "requires_action",
            "unknown": "unknown",
            "lease_lost": "lease_lost",
            "error": "errors",
            "not_attempted": "not_attempted",
        }[status]
        setattr(self, attribute, getattr(self, attribute) + 1)


# A hook run after the gateway answered and before the outcome is recorded: tests use it to
# simulate a crash at the worst moment.
AfterGatewayCall = Callable[[RefundRequest, RefundOutcome], Awaitable[None]]


def idempotency_key(detail_id: uuid.UUID, attempt: int) -> str:
    return f"refund-{detail_id}-attempt-{attempt}"


@dataclass(frozen=True, slots=True)
class _Step:
    """What an outcome does to its detail: the new status, the result (a ``JobSummary`` key,
    and which event is recorded), when the detail is looked at next, whether the attempt stays
    open (replayed with its key)."""

    status: DetailStatus
    result: str
    next_retry: datetime | None = None
    attempt_open: bool = False


def _schedule_of(item: asyncpg.Record) -> RetrySchedule:
    """The detail's retry schedule, from a row with its schedule's columns."""
    return RetrySchedule(
        item["retry_schedule_code"],
        tuple(timedelta(seconds=s) for s in item["intervals"]),
        item["max_attempts"],
    )


class BillingJob:
    def __init__(
        self,
        db: Database,
        gateways: Mapping[str, Gateway],
        *,
        worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        pending_sync_interval: timedelta = timedelta(seconds=60),
        unknown_replay_delay: timedelta = timedelta(seconds=30),
        unknown_give_up_after: timedelta = UNKNOWN_GIVE_UP_AFTER,
        refund_notification_timeout: timedelta = REFUND_NOTIFICATION_TIMEOUT,
        concurrency: int = 16,
        after_gateway_call: AfterGatewayCall | None = None,
        retry_job: RetryJob | None = None,
    ) -> None:
        self._db = db
        self._gateways = gateways
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = lease
        self._pending_sync = pending_sync_interval
        self._unknown_replay = unknown_replay_delay
        self._unknown_give_up = unknown_give_up_after
        self._notification_timeout = refund_notification_timeout
        self._concurrency = asyncio.Semaphore(concurrency)
        self._after_gateway_call = after_gateway_call
        self.retry_job = retry_job

    async def run(self, request: JobRequest) -> JobSummary:
        started = time.monotonic()
        summary = JobSummary()
        end = request.end or datetime.now(UTC)
        async with self._db.connection() as conn:
            claimed = await queue.claim(
                conn,
                process_new=request.process_new_refunds,
                process_due=request.process_due_retries,
                start=request.start or NEVER,
                end=end,
                limit=request.limit,
                worker=self.worker_id,
                lease_seconds=self._lease.total_seconds(),
            )
        summary.claimed = len(claimed)
        results = await asyncio.gather(*(self._guarded(d) for d in claimed))
        for result in results:
            if result:
                summary.count(result)
        if request.process_due_retries and self.retry_job is not None:
            summary.payment_retries = await self.retry_job.run(due_by=end, limit=request.limit)
        summary.elapsed = timedelta(seconds=time.monotonic() - started)
        if claimed or summary.payment_retries.claimed:
            log.info(
                "billing job processed %d refund details",
                len(claimed),
                extra={
                    "action": "billing_job.run",
                    "worker": self.worker_id,
                    "summary": _summary_to_json(summary),
                },
            )
        return summary

    async def _guarded(self, detail_id: uuid.UUID) -> str | None:
        """Process one detail; its failure never fails the others. A deadlock or serialization
        failure is retried at once (a replay uses the same idempotency key); anything else
        releases the lease, so the next run replays the open attempt."""
        async with self._concurrency:
            for retry in range(TRANSIENT_DB_RETRIES + 1):
                try:
                    return await self._process(detail_id)
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                    error: Exception = exc
                    if retry == TRANSIENT_DB_RETRIES:
                        break
                except Exception as exc:
                    error = exc
                    break
            log.error(
                "refund detail %s failed in the billing job; its lease is released",
                detail_id,
                exc_info=error,
                extra={"action": "billing_job.detail_failed", "detail_id": str(detail_id)},
            )
            with contextlib.suppress(Exception):
                async with self._db.connection() as conn:
                    await queue.release_lease(conn, detail_id, self.worker_id)
            return "error"

    async def _process(self, detail_id: uuid.UUID) -> str | None:
        async with self._db.transaction() as conn:
            item = await queue.work_item(conn, detail_id, self.worker_id)
            if item is None:
                return "lease_lost"
            status = D(item["status"])
            fresh = status in (D.PENDING, D.RETRY_SCHEDULED)
            if fresh:
                started = await queue.start_attempt(conn, detail_id, self.worker_id)
                if started is None:  # canceled meanwhile
                    await queue.release_lease(conn, detail_id, self.worker_id)
                    return None
                attempt, started_at = started
                await self._record_start(conn, item, attempt)
                fetch = False
            else:  # replay an open attempt, or sync one pending or requiring action at the gateway
                attempt, started_at = item["attempt_count"], item["attempt_started_at"]
                fetch = not item["attempt_open"] and bool(item["gateway_refund_id"])
        gateway = self._gateways.get(item["gateway"])
        request = RefundRequest(
            payment_id=item["payment_id"],
            gateway_transaction_id=item["gateway_transaction_id"],
            amount=Money(item["currency"], item["amount"]),
            idempotency_key=idempotency_key(detail_id, attempt),
            attempt=attempt,
            reason=item["reason"],
            metadata=item["metadata"],
        )
        outcome = await self._call(gateway, request, item["gateway_refund_id"], fetch)
        if self._after_gateway_call is not None:
            await self._after_gateway_call(request, outcome)
        schedule = _schedule_of(item)
        if outcome.kind is OutcomeKind.NOT_ATTEMPTED and outcome.retryable:
            return await self._record_not_attempted(
                detail_id, item["refund_id"], attempt, outcome, schedule, fresh=fresh
            )
        now = datetime.now(UTC)
        reads = reads_refunds(gateway)
        deadline = started_at + self._notification_timeout
        if fetch and not reads and outcome.kind is OutcomeKind.PENDING:
            # The gateway cannot read the refund, and no notification is stored.
            return await self._await_notification(item, request, started_at, deadline, now)
        if outcome.kind is OutcomeKind.UNKNOWN and now - started_at > self._unknown_give_up:
            outcome = RefundOutcome(
                OutcomeKind.REQUIRES_ACTION,
                error_code="outcome_unknown",
                error_message=(
                    f"the gateway's answer to attempt {attempt} is unknown since "
                    f"{started_at.isoformat()}; check refund {request.idempotency_key} at the "
                    f"gateway before retrying ({outcome.error_message})"
                ),
            )
        step = self._step(outcome, attempt, schedule, now, reads=reads, deadline=deadline)
        if fetch and _learned_nothing(item, outcome, step):
            return await self._postpone_quietly(detail_id, step, outcome)
        return await self._record_outcome(
            detail_id, item["refund_id"], attempt, outcome, schedule, step
        )

    async def _await_notification(
        self,
        item: asyncpg.Record,
        request: RefundRequest,
        started_at: datetime,
        deadline: datetime,
        now: datetime,
    ) -> str:
        """A check of a refund at a gateway that cannot read it, with no notification stored:
        nothing learned.

        Before ``deadline`` (``refund_notification_timeout`` after the attempt started) nothing
        is recorded and the next check is the deadline. At it, the detail becomes REQUIRES_ACTION
        (``notification_overdue``) with no further check, recorded as any outcome is (event,
        audit row, the refund's status); the notification, whenever it comes, settles it through
        the webhook. The check scheduled at the deadline is the deadline even when a run reaches
        it early (``JobRequest.end`` later than now), as any due work is. A detail that needs a
        person already keeps its reason and is not checked again."""
        detail_id = item["detail_id"]
        if item["status"] == D.REQUIRES_ACTION:
            kept = RefundOutcome(
                OutcomeKind.REQUIRES_ACTION,
                error_code=item["last_error_code"],
                error_message=item["last_error_message"],
            )
            return await self._postpone_quietly(
                detail_id, _Step(D.REQUIRES_ACTION, "requires_action"), kept
            )
        if max(now, item["next_retry_date"] or now) < deadline:
            return await self._postpone_quietly(
                detail_id,
                _Step(D.PROCESSING, "pending", deadline),
                RefundOutcome(OutcomeKind.PENDING),
            )
        gateway, reference = item["gateway"], item["gateway_refund_id"]
        overdue = RefundOutcome(
            OutcomeKind.REQUIRES_ACTION,
            reference,
            error_code=NOTIFICATION_OVERDUE,
            error_message=(
                f"no outcome notification from {gateway} for its refund {reference} (our "
                f"reference {request.idempotency_key}) within "
                f"{self._notification_timeout.total_seconds():.0f} s of attempt "
                f"{request.attempt}, started {started_at.isoformat()}: look the refund up at "
                f"{gateway} and check that its webhooks reach this service; a notification "
                "that arrives later still settles the refund"
            ),
        )
        return await self._record_outcome(
            detail_id,
            item["refund_id"],
            request.attempt,
            overdue,
            _schedule_of(item),
            _Step(D.REQUIRES_ACTION, "requires_action"),  # checked no more
        )

    async def _postpone_quietly(
        self, detail_id: uuid.UUID, step: _Step, outcome: RefundOutcome
    ) -> str:
        """A sync that learned nothing new: only the next check moves (and the last error, e.g.
        a breaker's refusal of the previous sync, is replaced by this answer's). No event, no
        audit row: nothing a reader of either could notice changed."""
        async with self._db.connection() as conn:
            postponed = await queue.postpone(
                conn,
                detail_id,
                self.worker_id,
                next_retry=step.next_retry,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
            )
        return step.result if postponed is not None else self._lease_lost(detail_id)

    async def _call(
        self, gateway: Gateway | None, request: RefundRequest, refund_id: str, fetch: bool
    ) -> RefundOutcome:
        if gateway is None:
            return RefundOutcome(
                OutcomeKind.NOT_ATTEMPTED,
                error_code="gateway_not_configured",
                error_message="this replica has no such gateway configured",
                retryable=True,
            )
        try:
            if fetch:
                return await gateway.fetch_refund(refund_id, request)
            return await gateway.refund(request)
        except Exception as exc:  # a gateway adapter bug must not lose the attempt
            log.exception(
                "gateway %s raised; the attempt will be replayed with the same key",
                gateway.name,
                extra={
                    "action": "billing_job.gateway_error",
                    "idempotency_key": request.idempotency_key,
                },
            )
            return RefundOutcome(
                OutcomeKind.UNKNOWN,
                error_code="unknown",
                error_message=f"{type(exc).__name__}: {exc}",
                retryable=True,
            )

    async def _record_start(self, conn: Connection, item: asyncpg.Record, attempt: int) -> None:
        refund_id = item["refund_id"]
        if item["refund_status"] == R.APPROVED:
            await refunds.set_status(conn, refund_id, R.PROCESSING, [R.APPROVED])
        row = await refunds.view(conn, refund_id)
        assert row is not None
        await changes.record(
            conn,
            actor=SYSTEM.name,
            action="refund.processing",
            entity_type="refund",
            entity_id=str(refund_id),
            data={
                "detail_id": str(item["detail_id"]),
                "attempt": attempt,
                "worker": self.worker_id,
            },
            event_field="refund_processing",
            event_payload=events_pb2.RefundProcessing(refund=convert.refund(row)),
        )

    def _step(
        self,
        outcome: RefundOutcome,
        attempt: int,
        schedule: RetrySchedule,
        now: datetime,
        *,
        reads: bool = True,
        deadline: datetime | None = None,
    ) -> _Step:
        """What ``outcome`` of attempt number ``attempt`` does to its detail. ``reads``: whether
        its gateway can read a refund (else a sync learns nothing; ``deadline`` is when its
        notification is overdue)."""
        if outcome.kind is OutcomeKind.SUCCEEDED:
            return _Step(D.SUCCEEDED, "succeeded")
        if outcome.kind is OutcomeKind.PENDING:
            if reads or deadline is None:
                return _Step(D.PROCESSING, "pending", now + self._pending_sync)
            # Not synced on a schedule: one look soon, for a notification that outran the
            # gateway's answer (stored before the refund's id was), then the deadline.
            return _Step(D.PROCESSING, "pending", min(now + self._pending_sync, deadline))
        if outcome.kind is OutcomeKind.REQUIRES_ACTION:
            # With a gateway refund id a gateway that can be asked will finish it: keep
            # syncing. One that cannot be asked would only answer "pending": its notification
            # or a person settles it.
            sync = now + self._pending_sync if outcome.gateway_refund_id and reads else None
            return _Step(D.REQUIRES_ACTION, "requires_action", sync)
        if outcome.kind is OutcomeKind.UNKNOWN:
            return _Step(D.PROCESSING, "unknown", now + self._unknown_replay, attempt_open=True)
        if outcome.retryable:
            next_retry = schedule.next_retry(attempt, now)
            if next_retry is not None:
                return _Step(D.RETRY_SCHEDULED, "retry", next_retry)
        return _Step(D.FAILED, "failed")

    async def _record_outcome(
        self,
        detail_id: uuid.UUID,
        refund_id: uuid.UUID,
        attempt: int,
        outcome: RefundOutcome,
        schedule: RetrySchedule,
        step: _Step,
    ) -> str:
        async with self._db.transaction() as conn:
            refund = await refunds.lock(conn, refund_id)
            assert refund is not None
            detail = await queue.record_outcome(
                conn,
                detail_id,
                self.worker_id,
                status=step.status,
                gateway_refund_id=outcome.gateway_refund_id,
                attempt_open=step.attempt_open,
                next_retry=step.next_retry,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                remaining_retries=schedule.remaining_after(attempt),
            )
            if detail is None:
                return self._lease_lost(detail_id)
            await self._settle(conn, refund, detail, step, outcome, actor=SYSTEM.name, data={})
        return step.result

    async def _record_not_attempted(
        self,
        detail_id: uuid.UUID,
        refund_id: uuid.UUID,
        attempt: int,
        outcome: RefundOutcome,
        schedule: RetrySchedule,
        *,
        fresh: bool,
    ) -> str:
        """The call never reached the gateway (it was down, rate limited, not configured here,
        or its circuit breaker is open): nothing happened there, so nothing is failed and no
        attempt is used up; the detail is looked at again after UNKNOWN_REPLAY_SECONDS.

        A new attempt is given back: RETRY_SCHEDULED with the attempt count it had, so the next
        try has the same number and idempotency key. A replayed attempt or a sync of a refund
        pending at the gateway stays exactly as it was (open attempt, gateway refund id): the
        replay may have reached the gateway before, and a new attempt with a new key could
        then move the money twice."""
        next_retry = datetime.now(UTC) + self._unknown_replay
        async with self._db.transaction() as conn:
            if not fresh:
                postponed = await queue.postpone(
                    conn,
                    detail_id,
                    self.worker_id,
                    next_retry=next_retry,
                    error_code=outcome.error_code,
                    error_message=outcome.error_message,
                )
                return "not_attempted" if postponed is not None else self._lease_lost(detail_id)
            refund = await refunds.lock(conn, refund_id)
            assert refund is not None
            detail = await queue.record_not_attempted(
                conn,
                detail_id,
                self.worker_id,
                next_retry=next_retry,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                remaining_retries=schedule.remaining_after(max(attempt - 1, 1)),
            )
            if detail is None:
                return self._lease_lost(detail_id)
            step = _Step(D.RETRY_SCHEDULED, "retry", next_retry)
            data: dict[str, object] = {"attempt": attempt, "attempt_given_back": True}
            await self._settle(conn, refund, detail, step, outcome, actor=SYSTEM.name, data=data)
        return "retry"

    async def apply_reported_outcome(
        self,
        conn: Connection,
        detail_id: uuid.UUID,
        refund_id: uuid.UUID,
        outcome: RefundOutcome,
        *,
        actor: str,
        data: dict[str, object],
    ) -> str | None:
        """Record an outcome the gateway reported by itself (a webhook) for the detail's current
        attempt, in the caller's transaction: the same steps as the job's own record (detail,
        refund status, payment balances, ledger journal, event and audit row), without a lease.

        The state machine decides (``refund_states``): an outcome the detail or the refund may
        not move to — an event older than what is recorded, e.g. a failure after a success —
        changes nothing and returns None. Locks the refund, then the detail, the job's order.
        ``outcome`` is final or needs a person: SUCCEEDED, DECLINED or REQUIRES_ACTION."""
        if outcome.kind not in (
            OutcomeKind.SUCCEEDED,
            OutcomeKind.DECLINED,
            OutcomeKind.REQUIRES_ACTION,
        ):
            raise ValueError(f"a reported outcome is final or needs a person, not {outcome.kind}")
        refund = await refunds.lock(conn, refund_id)
        detail = await queue.lock_detail(conn, detail_id)
        if refund is None or detail is None:
            return None
        schedule = _schedule_of(detail)
        attempt = detail["attempt_count"]
        reads = reads_refunds(self._gateways.get(detail["gateway"]))
        step = self._step(outcome, attempt, schedule, datetime.now(UTC), reads=reads)
        statuses = await queue.detail_statuses_by_id(conn, refund_id)
        statuses[detail_id] = step.status
        current = R(refund["status"])
        target = aggregate_status(D(s) for s in statuses.values())
        try:
            check_detail_transition(D(detail["status"]), step.status)
            if target is not current:
                check_refund_transition(current, target)
        except IllegalTransition:
            return None
        recorded = await queue.apply_outcome(
            conn,
            detail_id,
            status=step.status,
            gateway_refund_id=outcome.gateway_refund_id,
            attempt_open=step.attempt_open,
            next_retry=step.next_retry,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            remaining_retries=schedule.remaining_after(attempt),
        )
        await self._settle(conn, refund, recorded, step, outcome, actor=actor, data=data)
        return step.result

    def _lease_lost(self, detail_id: uuid.UUID) -> str:
        log.warning(
            "lease on refund detail %s was lost before its outcome was recorded; "
            "its next holder replays the attempt with the same key",
            detail_id,
            extra={"action": "billing_job.lease_lost", "detail_id": str(detail_id)},
        )
        return "lease_lost"

    async def _settle(
        self,
        conn: Connection,
        refund: asyncpg.Record,
        detail: asyncpg.Record,
        step: _Step,
        outcome: RefundOutcome,
        *,
        actor: str,
        data: dict[str, object],
    ) -> None:
        """After a detail's outcome is written: the refund's aggregated status, the payment's
        balances, the ledger journal of a refund that succeeded, the event and audit row."""
        refund_id = refund["refund_id"]
        current = R(refund["status"])
        target = aggregate_status(D(s) for s in await queue.detail_statuses(conn, refund_id))
        if target is not current:
            check_refund_transition(current, target)
            await refunds.set_status(conn, refund_id, target, [current])
            if target is R.SUCCEEDED:
                await payments.settle(conn, refund["payment_id"], refund_id, refund["amount"])
            elif target is R.FAILED:
                await payments.release(conn, refund["payment_id"], refund_id, refund["amount"])
        row = await refunds.view(conn, refund_id)
        assert row is not None
        if target is R.SUCCEEDED and current is not R.SUCCEEDED:
            await self._post_journal(conn, row)
        await self._record_event(
            conn, row, detail, step.result, outcome, step.next_retry, actor=actor, extra=data
        )

    async def _post_journal(self, conn: Connection, row: asyncpg.Record) -> None:
        net = sum(i["amount"] for i in row["items"])
        tax = sum(i["tax"] for i in row["items"])
        gateway = row["details"][0]["gateway"]
        await ledger.post(
            conn,
            kind="refund",
            payment_id=row["payment_id"],
            refund_id=row["refund_id"],
            currency=row["currency"],
            description=f"refund {row['refund_id']} of {row['payment_id']}",
            lines=[
                ("refunds", net, 0),
                ("tax_payable", tax, 0),
                (f"gateway_clearing:{gateway}", 0, net + tax),
            ],
        )

    async def _record_event(
        self,
        conn: Connection,
        row: asyncpg.Record,
        detail: asyncpg.Record,
        result: str,
        outcome: RefundOutcome,
        next_retry: datetime | None,
        *,
        actor: str,
        extra: dict[str, object],
    ) -> None:
        snapshot = convert.refund(row)
        detail_id = str(detail["detail_id"])
        data = {
            "detail_id": detail_id,
            "attempt": detail["attempt_count"],
            "outcome": outcome.kind.value,
            "error_code": outcome.error_code,
            "gateway_refund_id": detail["gateway_refund_id"],
            **extra,
        }
        action: str
        field_name: str
        payload: object
        if result == "succeeded" and row["status"] == R.SUCCEEDED:
            action, field_name = "refund.succeeded", "refund_succeeded"
            payload = events_pb2.RefundSucceeded(refund=snapshot)
        elif result == "failed":
            action, field_name = "refund.failed", "refund_failed"
            payload = events_pb2.RefundFailed(
                refund=snapshot,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                will_retry=False,
            )
        elif result in ("retry", "unknown"):
            action, field_name = "refund.attempt_failed", "refund_attempt_failed"
            payload = events_pb2.RefundAttemptFailed(
                refund=snapshot,
                detail_id=detail_id,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                will_retry=True,
                next_retry_time=convert.ts(next_retry),
            )
        elif result == "requires_action":
            action, field_name = "refund.requires_action", "refund_requires_action"
            payload = events_pb2.RefundRequiresAction(
                refund=snapshot,
                detail_id=detail_id,
                gateway_refund_id=detail["gateway_refund_id"],
                will_retry=False,
                next_check_time=convert.ts(next_retry),
            )
        else:  # pending at the gateway, or one detail of several succeeded
            action, field_name = "refund.processing", "refund_processing"
            payload = events_pb2.RefundProcessing(refund=snapshot)
        await changes.record(
            conn,
            actor=actor,
            action=action,
            entity_type="refund",
            entity_id=str(row["refund_id"]),
            data=data,
            event_field=field_name,
            event_payload=payload,
        )


def _learned_nothing(item: asyncpg.Record, outcome: RefundOutcome, step: _Step) -> bool:
    """Whether a sync's answer changes nothing recorded about the detail ``item``: the same
    status, the same gateway refund id, the attempt still closed and, for a detail that needs a
    person, the same reason (error code)."""
    return (
        step.status == item["status"]
        and step.attempt_open == item["attempt_open"]
        and outcome.gateway_refund_id in ("", item["gateway_refund_id"])
        and (step.status is not D.REQUIRES_ACTION or outcome.error_code == item["last_error_code"])
    )


async def run_once(
    db: Database, job: BillingJob, request_id: str, request: JobRequest
) -> JobSummary:
    """RunBillingJob with AIP-155 semantics: a replayed request id returns the first run's
    summary instead of running again; the same id for a different request is refused."""
    changes.validate_request_id(request_id)
    digest = changes.fingerprint("RunBillingJob", request)
    async with db.transaction() as conn:
        first = await changes.previous(conn, "RunBillingJob", request_id, digest)
    if first is not None:
        return _summary_from_json(first)
    summary = await job.run(request)
    async with db.transaction() as conn:
        # When a concurrent run with the same id stored its summary first, both runs were safe
        # (work is claimed, never done twice) and the caller sees this run's own summary.
        await changes.replayed(conn, "RunBillingJob", request_id, digest, _summary_to_json(summary))
    return summary


def _summary_to_json(summary: JobSummary) -> str:
    skip = {"elapsed", "payment_retries"}
    data: dict[str, object] = {
        k: getattr(summary, k) for k in JobSummary.__slots__ if k not in skip
    }
    data["elapsed_us"] = summary.elapsed // timedelta(microseconds=1)
    data["payment_retries"] = asdict(summary.payment_retries)
    return json.dumps(data)


def _summary_from_json(text: str) -> JobSummary:
    data = json.loads(text)
    elapsed = timedelta(microseconds=data.pop("elapsed_us"))
    retries = RetrySummary(**data.pop("payment_retries"))
    return JobSummary(**data, elapsed=elapsed, payment_retries=retries)
