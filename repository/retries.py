"""Retry plans, their wallets, attempts, decisions and the success statistics.

The rows the billing job writes (``NewAttempt``, ``FinishedAttempt``, ``NewDecision``,
``PlanMove``) are plain slotted dataclasses, not frozen ones: the job builds several per
attempt, thousands a second, and a frozen dataclass's ``__init__`` (``object.__setattr__``
per field) costs four times as much."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from repository.database import Connection, json_text
from repository.ids import uuid7
from repository.queries import Queries

Q = Queries("retries")


async def insert_plan(
    conn: Connection,
    *,
    plan_id: uuid.UUID,
    payment_id: str,
    billing_event_id: str,
    customer_id: str,
    subscription_id: str,
    currency: str,
    amount: int,
    gateway: str,
    schedule_code: str,
    time_zone: str,
    first_failed_at: datetime,
    metadata: dict[str, str],
    amount_paid: int = 0,
) -> None:
    await conn.execute(
        Q["insert_plan"],
        plan_id,
        payment_id,
        billing_event_id,
        customer_id,
        subscription_id,
        currency,
        amount,
        gateway,
        schedule_code,
        time_zone,
        first_failed_at,
        metadata,
        amount_paid,
    )


async def open_plan_for_payment(conn: Connection, payment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["open_plan_for_payment"], payment_id)


async def lock(conn: Connection, plan_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_plan"], plan_id)


async def add_method(
    conn: Connection, plan_id: uuid.UUID, payment_method_id: str, network: str
) -> int | None:
    """The new method's position; None when the wallet already has it."""
    position = await conn.fetchval(Q["add_method"], plan_id, payment_method_id, network)
    return position if isinstance(position, int) else None


async def methods(conn: Connection, plan_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(Q["methods"], plan_id)


@dataclass(slots=True)
class NewAttempt:
    plan_id: uuid.UUID
    attempt_number: int
    source: str
    attempted_at: datetime
    payment_method_id: str
    network: str
    outcome: str
    idempotency_key: str
    local_hour: int
    day_of_month: int
    days_since_failure: int
    amount: int  # minor units of the plan's currency: what the attempt charges (charged)
    retry_of_class: str = ""
    decline_code: str = ""
    visa_response_code: str = ""
    mc_advice_code: str = ""
    decline_class: str = ""
    gateway_charge_id: str = ""
    message: str = ""


async def insert_attempt(conn: Connection, attempt: NewAttempt) -> uuid.UUID:
    attempt_id = uuid7()
    await conn.execute(
        Q["insert_attempt"],
        attempt_id,
        attempt.plan_id,
        attempt.attempt_number,
        attempt.source,
        attempt.attempted_at,
        attempt.payment_method_id,
        attempt.network,
        attempt.outcome,
        attempt.decline_code,
        attempt.visa_response_code,
        attempt.mc_advice_code,
        attempt.decline_class,
        attempt.retry_of_class,
        attempt.gateway_charge_id,
        attempt.idempotency_key,
        attempt.message[:1000],
        attempt.local_hour,
        attempt.day_of_month,
        attempt.days_since_failure,
        attempt.amount,
    )
    return attempt_id


async def next_attempt_number(conn: Connection, plan_id: uuid.UUID) -> int:
    number = await conn.fetchval(Q["next_attempt_number"], plan_id)
    assert isinstance(number, int)
    return number


async def open_attempt(conn: Connection, plan_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["open_attempt"], plan_id)


async def card_history(
    conn: Connection, cards: Sequence[str], since: datetime
) -> list[asyncpg.Record]:
    return await conn.fetch(Q["card_history"], list(cards), since)


async def add_decision(
    conn: Connection,
    plan_id: uuid.UUID,
    *,
    action: str,
    next_attempt_at: datetime | None,
    payment_method_id: str,
    reason: str,
    rule_ids: Sequence[str],
    data: dict[str, Any],
) -> int:
    sequence = await conn.fetchval(Q["next_decision_sequence"], plan_id)
    await conn.execute(
        Q["insert_decision"],
        plan_id,
        sequence,
        action,
        next_attempt_at,
        payment_method_id,
        reason,
        list(rule_ids),
        data,
    )
    assert isinstance(sequence, int)
    return sequence


class _Keep:
    """A field ``update_plan`` leaves as the plan row has it (None is a value: "no time")."""


KEEP = _Keep()


async def update_plan(
    conn: Connection,
    plan: asyncpg.Record,
    *,
    next_attempt_at: datetime | _Keep | None = KEEP,
    method_index: int | None = None,
    waiting_for_method: bool | None = None,
    attempt_count: int | None = None,
) -> None:
    """Move a plan (its next attempt, wallet position, waiting flag, attempt count); fields
    not given keep the values of ``plan``, the row the caller holds locked."""
    await conn.execute(
        Q["apply_decision"],
        plan["plan_id"],
        plan["next_attempt_at"] if isinstance(next_attempt_at, _Keep) else next_attempt_at,
        plan["method_index"] if method_index is None else method_index,
        plan["waiting_for_method"] if waiting_for_method is None else waiting_for_method,
        plan["attempt_count"] if attempt_count is None else attempt_count,
    )


async def set_status(
    conn: Connection, plan_id: uuid.UUID, target: str, sources: Sequence[str], reason: str
) -> bool:
    return await conn.fetchval(Q["set_status"], plan_id, target, list(sources), reason) is not None


async def view(conn: Connection, plan_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["view"], plan_id)


async def list_views(
    conn: Connection,
    *,
    status: str | None,
    customer_id: str | None,
    subscription_id: str | None,
    payment_id: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        Q["list"],
        status,
        customer_id,
        subscription_id,
        payment_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def open_plans_for(
    conn: Connection, payment_id: str, billing_event_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(Q["open_plans_for_billing_event"], payment_id, billing_event_id)


async def open_plans_of_billing_events(
    conn: Connection, billing_event_ids: Sequence[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(Q["open_plans_of_billing_events"], list(billing_event_ids))


async def open_plans_for_subscription(
    conn: Connection, subscription_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(Q["open_plans_for_subscription"], subscription_id)


async def record_cancellation(
    conn: Connection,
    *,
    subscription_id: str,
    customer_id: str,
    cancelled_at: datetime,
    event_id: str,
) -> asyncpg.Record | None:
    """Keep the subscription's cancellation; None when it was kept before (the first stays)."""
    return await conn.fetchrow(
        Q["record_cancellation"], subscription_id, customer_id, cancelled_at, event_id
    )


async def cancellation(conn: Connection, subscription_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["cancellation"], subscription_id)


async def recovered_already(conn: Connection, payment_id: str, billing_event_id: str) -> str | None:
    """How a retry plan of the payment (or its billing event) recovered it, in words; None if
    none did."""
    how = await conn.fetchval(Q["recovered_already"], payment_id, billing_event_id)
    return None if how is None else str(how)


async def payments_of(
    conn: Connection, payment_id: str, billing_event_id: str
) -> list[asyncpg.Record]:
    """The payments recorded with the failed payment's id or its billing event, oldest first."""
    return await conn.fetch(Q["payments_of"], payment_id, billing_event_id)


async def add_paid(conn: Connection, plan_id: uuid.UUID, minor_units: int) -> None:
    await conn.execute(Q["add_paid"], plan_id, minor_units)


async def claim_due(
    conn: Connection,
    *,
    due_by: datetime,
    limit: int,
    gateways: Sequence[str],
    exclude: Sequence[uuid.UUID] = (),
) -> list[asyncpg.Record]:
    """Lock up to ``limit`` plans due by ``due_by`` whose gateway is one of ``gateways``,
    none of ``exclude``, for this transaction (``SKIP LOCKED``: another worker's are passed
    over), in plan_id order; ``wallet_ids`` and ``wallet_networks`` list each plan's payment
    methods in wallet order. The caller leases those it goes on with (``open_attempts``)
    before it commits."""
    return await conn.fetch(Q["claim_due"], due_by, limit, sorted(gateways), list(exclude))


async def claim_plan(
    conn: Connection, plan_id: uuid.UUID, worker: str, lease_seconds: float
) -> None:
    await conn.execute(Q["claim_plan"], plan_id, worker, lease_seconds)


async def renew_leases(
    conn: Connection, plan_ids: Sequence[uuid.UUID], worker: str, lease_seconds: float
) -> int:
    """Extend ``worker``'s leases of ``plan_ids`` to ``lease_seconds`` from now; how many it
    still held."""
    return len(await conn.fetch(Q["renew_leases"], list(plan_ids), worker, lease_seconds))


async def release_leases(conn: Connection, plan_ids: Sequence[uuid.UUID], worker: str) -> None:
    await conn.execute(Q["release_leases"], list(plan_ids), worker)


async def stats(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(Q["stats"])


async def stats_age(conn: Connection) -> timedelta:
    age = await conn.fetchval(Q["stats_age"])
    assert isinstance(age, timedelta)
    return age


async def refresh_stats(conn: Connection) -> None:
    """Rebuild attempt_stats (call inside a transaction)."""
    await conn.execute(Q["clear_stats"])
    await conn.execute(Q["refresh_stats"])


# The billing job's chunked steps: one statement per step for a whole chunk of plans.


async def leased_plans(
    conn: Connection,
    plan_ids: Sequence[uuid.UUID],
    worker: str,
    *,
    or_due_by: datetime | None = None,
) -> list[asyncpg.Record]:
    """The plans still leased by ``worker`` (with ``or_due_by``, also those due by then that
    nobody holds), locked, in plan_id order; ``wallet_ids`` and ``wallet_networks`` list each
    plan's payment methods in wallet order."""
    return await conn.fetch(Q["leased_plans"], list(plan_ids), worker, or_due_by)


async def schedules(conn: Connection, codes: Sequence[str]) -> dict[str, asyncpg.Record]:
    return {r["code"]: r for r in await conn.fetch(Q["schedules"], sorted(set(codes)))}


async def attempt_facts(
    conn: Connection, plan_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    """Per plan (with any attempt): next_number, last_class, and open_attempt_id with that
    attempt's attempt_number, source, payment_method_id, network, retry_of_class,
    attempted_at and gateway_charge_id (known when the gateway answered PENDING) when it is
    still open: a worker died mid-charge, or the outcome is unknown or pending."""
    return {r["plan_id"]: r for r in await conn.fetch(Q["attempt_facts"], list(plan_ids))}


async def busy_cards(conn: Connection, cards: Sequence[tuple[str, uuid.UUID]]) -> set[uuid.UUID]:
    """Lock the cards of these (card, plan) pairs for this transaction and return the plans
    whose card has another plan's attempt still in flight (``busy_cards`` in
    sql/retries.sql)."""
    rows = await conn.fetch(
        Q["busy_cards"], [card for card, _ in cards], [plan for _, plan in cards]
    )
    return {r["plan_id"] for r in rows}


async def open_attempts(
    conn: Connection,
    attempts: Sequence[NewAttempt],
    *,
    lease: Sequence[uuid.UUID],
    worker: str,
    lease_seconds: float,
) -> list[uuid.UUID]:
    """Insert OPEN attempts (the outcome columns stay empty until ``finish_attempts``), count
    each on its plan, and lease the plans in ``lease`` (which includes every attempted plan)
    to ``worker``. The new attempts' ids, in order."""
    ids = [uuid7() for _ in attempts]
    await conn.execute(
        Q["open_attempts"],
        ids,
        [a.plan_id for a in attempts],
        [a.attempt_number for a in attempts],
        [a.source for a in attempts],
        [a.attempted_at for a in attempts],
        [a.payment_method_id for a in attempts],
        [a.network for a in attempts],
        [a.outcome for a in attempts],
        [a.idempotency_key for a in attempts],
        [a.retry_of_class for a in attempts],
        [a.local_hour for a in attempts],
        [a.day_of_month for a in attempts],
        [a.days_since_failure for a in attempts],
        [a.amount for a in attempts],
        list(lease),
        worker,
        lease_seconds,
    )
    return ids


@dataclass(slots=True)
class FinishedAttempt:
    """An attempt's outcome columns, as they are stored (the message cut to 1,000 characters)."""

    attempt_id: uuid.UUID
    outcome: str
    decline_code: str = ""
    visa_response_code: str = ""
    mc_advice_code: str = ""
    decline_class: str = ""
    gateway_charge_id: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        self.message = self.message[:1000]


async def finish_attempts(conn: Connection, finished: Sequence[FinishedAttempt]) -> None:
    """Record outcomes of OPEN (or UNKNOWN) attempts of plans this transaction locked with
    ``leased_plans``. An attempt that is not stored raises LookupError (the caller's
    transaction then writes nothing)."""
    updated = await conn.fetch(
        Q["finish_attempts"],
        [f.attempt_id for f in finished],
        [f.outcome for f in finished],
        [f.decline_code for f in finished],
        [f.visa_response_code for f in finished],
        [f.mc_advice_code for f in finished],
        [f.decline_class for f in finished],
        [f.gateway_charge_id for f in finished],
        [f.message for f in finished],
    )
    missing = {f.attempt_id for f in finished} - {r["attempt_id"] for r in updated}
    if missing:
        raise LookupError(f"attempts {sorted(map(str, missing))} are not stored")


async def finish_settled_attempts(
    conn: Connection, finished: Sequence[FinishedAttempt]
) -> set[uuid.UUID]:
    """Record outcomes of attempts whose plan ended while they were charged (see
    ``settled_open_attempts``); returns the ids of the attempts written."""
    rows = await conn.fetch(Q["settled_open_attempts"], [f.attempt_id for f in finished])
    settled = {r["attempt_id"] for r in rows}
    if settled:
        await finish_attempts(conn, [f for f in finished if f.attempt_id in settled])
    return settled


@dataclass(slots=True)
class NewDecision:
    plan_id: uuid.UUID
    action: str
    next_attempt_at: datetime | None
    payment_method_id: str
    reason: str
    rule_ids: Sequence[str]
    data: dict[str, Any]


async def insert_decisions(
    conn: Connection, decisions: Sequence[NewDecision]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Store one decision per plan, each numbered after the plan's last; the stored rows by
    plan id (``retry_decision``'s columns, as ``SELECT *`` gives them). Only the number and
    the time come back from the database: decoding every row again (its jsonb data, its rule
    array) cost the billing job more than building it from what it wrote."""
    for d in decisions:
        assert not any(" " in rule or not rule for rule in d.rule_ids), d.rule_ids
    rows = await conn.fetch(
        Q["insert_decisions"],
        [d.plan_id for d in decisions],
        [d.action for d in decisions],
        [d.next_attempt_at for d in decisions],
        [d.payment_method_id for d in decisions],
        [d.reason for d in decisions],
        [" ".join(d.rule_ids) for d in decisions],
        [json_text(d.data) for d in decisions],  # JSON texts: see the query
    )
    stored = {r["plan_id"]: r for r in rows}
    return {
        d.plan_id: {
            "plan_id": d.plan_id,
            "sequence": stored[d.plan_id]["sequence"],
            "decided_at": stored[d.plan_id]["decided_at"],
            "action": d.action,
            "next_attempt_at": d.next_attempt_at,
            "payment_method_id": d.payment_method_id,
            "reason": d.reason,
            "rule_ids": list(d.rule_ids),
            "data": d.data,
        }
        for d in decisions
    }


@dataclass(slots=True)
class PlanMove:
    plan_id: uuid.UUID
    status: str
    status_reason: str
    next_attempt_at: datetime | None
    method_index: int
    waiting_for_method: bool
    attempt_count: int

    def applied_to(self, plan: asyncpg.Record, updated_at: datetime) -> dict[str, Any]:
        """The row ``move_plans`` leaves of ``plan`` (the row as locked before the move)."""
        row = dict(plan)
        row.update(
            status=self.status,
            status_reason=self.status_reason,
            next_attempt_at=self.next_attempt_at if self.status == "ACTIVE" else None,
            method_index=self.method_index,
            waiting_for_method=self.waiting_for_method,
            attempt_count=self.attempt_count,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=updated_at,
        )
        return row


async def move_plans(conn: Connection, moves: Sequence[PlanMove]) -> dict[uuid.UUID, datetime]:
    """Move plans to their new state and release their leases: plans this transaction locked
    with ``leased_plans``, so holding the caller's lease. Each moved plan's new
    ``updated_at``, by id (``PlanMove.applied_to`` gives the whole row)."""
    rows = await conn.fetch(
        Q["move_plans"],
        [m.plan_id for m in moves],
        [m.status for m in moves],
        [m.status_reason for m in moves],
        [m.next_attempt_at for m in moves],
        [m.method_index for m in moves],
        [m.waiting_for_method for m in moves],
        [m.attempt_count for m in moves],
    )
    return {r["plan_id"]: r["updated_at"] for r in rows}
