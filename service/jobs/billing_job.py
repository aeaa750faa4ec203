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
    check_refund_transition,
)
from service.domain.retry_schedule import RetrySchedule
from service.gateways.base import Gateway, OutcomeKind, RefundOutcome, RefundRequest
from service.jobs.retry_job import RetryJob, RetrySummary

log = logging.getLogger(__name__)
D, R = DetailStatus, RefundStatus
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# Gateways keep idempotency keys for a limited time (Stripe: 24 hours). Replaying an attempt
# whose outcome is unknown after that could move money twice, so before then the detail goes to
# REQUIRES_ACTION for a person to check the gateway.
UNKNOWN_GIVE_UP_AFTER = timedelta(hours=20)
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
        }[status]
        setattr(self, attribute, getattr(self, attribute) + 1)


# A hook run after the gateway answered and before the outcome is recorded: tests use it to
# simulate a crash at the worst moment.
AfterGatewayCall = Callable[[RefundRequest, RefundOutcome], Awaitable[None]]


def idempotency_key(detail_id: uuid.UUID, attempt: int) -> str:
    return f"refund-{detail_id}-attempt-{attempt}"


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
            if status in (D.PENDING, D.RETRY_SCHEDULED):
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
        schedule = RetrySchedule(
            item["retry_schedule_code"],
            tuple(timedelta(seconds=s) for s in item["intervals"]),
            item["max_attempts"],
        )
        if (
            outcome.kind is OutcomeKind.UNKNOWN
            and datetime.now(UTC) - started_at > self._unknown_give_up
        ):
            outcome = RefundOutcome(
                OutcomeKind.REQUIRES_ACTION,
                error_code="outcome_unknown",
                error_message=(
                    f"the gateway's answer to attempt {attempt} is unknown since "
                    f"{started_at.isoformat()}; check refund {request.idempotency_key} at the "
                    f"gateway before retrying ({outcome.error_message})"
                ),
            )
        return await self._record_outcome(detail_id, item["refund_id"], attempt, outcome, schedule)

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

    async def _record_outcome(
        self,
        detail_id: uuid.UUID,
        refund_id: uuid.UUID,
        attempt: int,
        outcome: RefundOutcome,
        schedule: RetrySchedule,
    ) -> str:
        now = datetime.now(UTC)
        next_retry: datetime | None = None
        attempt_open = False
        if outcome.kind is OutcomeKind.SUCCEEDED:
            status, result = D.SUCCEEDED, "succeeded"
        elif outcome.kind is OutcomeKind.PENDING:
            status, result, next_retry = D.PROCESSING, "pending", now + self._pending_sync
        elif outcome.kind is OutcomeKind.REQUIRES_ACTION:
            status, result = D.REQUIRES_ACTION, "requires_action"
            if outcome.gateway_refund_id:  # the gateway will finish it: keep syncing
                next_retry = now + self._pending_sync
        elif outcome.kind is OutcomeKind.UNKNOWN:
            status, result, attempt_open = D.PROCESSING, "unknown", True
            next_retry = now + self._unknown_replay
        elif outcome.retryable:
            next_retry = schedule.next_retry(attempt, now)
            status, result = (D.RETRY_SCHEDULED, "retry") if next_retry else (D.FAILED, "failed")
        else:
            status, result = D.FAILED, "failed"
        async with self._db.transaction() as conn:
            refund = await refunds.lock(conn, refund_id)
            assert refund is not None
            detail = await queue.record_outcome(
                conn,
                detail_id,
                self.worker_id,
                status=status,
                gateway_refund_id=outcome.gateway_refund_id,
                attempt_open=attempt_open,
                next_retry=next_retry,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                remaining_retries=schedule.remaining_after(attempt),
            )
            if detail is None:
                log.warning(
                    "lease on refund detail %s was lost before its outcome was recorded; "
                    "its next holder replays the attempt with the same key",
                    detail_id,
                    extra={"action": "billing_job.lease_lost", "detail_id": str(detail_id)},
                )
                return "lease_lost"
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
            await self._record_event(conn, row, detail, result, outcome, next_retry)
        return result

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
    ) -> None:
        snapshot = convert.refund(row)
        detail_id = str(detail["detail_id"])
        data = {
            "detail_id": detail_id,
            "attempt": detail["attempt_count"],
            "outcome": outcome.kind.value,
            "error_code": outcome.error_code,
            "gateway_refund_id": detail["gateway_refund_id"],
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
            actor=SYSTEM.name,
            action=action,
            entity_type="refund",
            entity_id=str(row["refund_id"]),
            data=data,
            event_field=field_name,
            event_payload=payload,
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
