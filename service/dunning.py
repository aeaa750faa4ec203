"""Dunning: campaigns (create, update, list), customer exclusions, and the steps a plan runs —
notices, retries brought forward, and the final action when the plan is exhausted. Every
step is recorded, audited and written to the outbox in the transaction that runs it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from refundretry.v1 import dunning_pb2, events_pb2
from repository import dunning, retries
from repository.database import Connection, Database
from service import changes, convert, validation
from service.auth import Principal
from service.domain.dunning import (
    Campaign,
    FinalAction,
    Step,
    StepKind,
    choose_campaign,
    due_steps,
    next_step_at,
)
from service.errors import AlreadyExists, NotFound
from service.settings import UNSET, Unset


async def _record_campaign(
    conn: Connection, principal: Principal, action: str, row: asyncpg.Record
) -> None:
    await changes.record(
        conn,
        actor=principal.name,
        action=action,
        entity_type="dunning_campaign",
        entity_id=row["code"],
        data={
            "steps": row["steps"],
            "final_action": row["final_action"],
            "segment": row["segment"],
            "priority": row["priority"],
        },
        event_field="dunning_campaign_changed",
        event_payload=events_pb2.DunningCampaignChanged(campaign=convert.dunning_campaign(row)),
    )


async def create_campaign(
    db: Database, principal: Principal, request_id: str, campaign: Campaign
) -> asyncpg.Record:
    changes.validate_request_id(request_id)
    digest = changes.fingerprint("CreateDunningCampaign", repr(campaign))
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "CreateDunningCampaign", request_id, digest, campaign.code
        )
        if first is not None:
            existing = await dunning.get_campaign(conn, first)
            assert existing is not None
            return existing
        try:
            row = await dunning.insert_campaign(conn, campaign)
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(f"dunning campaign {campaign.code!r} already exists") from exc
        await _record_campaign(conn, principal, "dunning_campaign.created", row)
        return row


@dataclass(frozen=True, slots=True)
class CampaignPatch:
    """An update of campaign ``code``; UNSET leaves a field as it is (a field mask)."""

    code: str
    description: str | Unset = UNSET
    steps: tuple[Step, ...] | Unset = UNSET
    final_action: FinalAction | Unset = UNSET
    segment: dict[str, str] | Unset = UNSET
    priority: int | Unset = UNSET

    def apply(self, current: Campaign) -> Campaign:
        return Campaign(
            code=current.code,
            steps=current.steps if isinstance(self.steps, Unset) else self.steps,
            final_action=current.final_action
            if isinstance(self.final_action, Unset)
            else self.final_action,
            segment=current.segment if isinstance(self.segment, Unset) else self.segment,
            priority=current.priority if isinstance(self.priority, Unset) else self.priority,
            description=current.description
            if isinstance(self.description, Unset)
            else self.description,
        )


async def update_campaign(
    db: Database, principal: Principal, request_id: str, patch: CampaignPatch
) -> asyncpg.Record:
    """Merge ``patch`` into the campaign under its row lock. Plans keep the campaign they
    were given; their next steps follow the updated campaign."""
    changes.validate_request_id(request_id)
    digest = changes.fingerprint("UpdateDunningCampaign", repr(patch))
    async with db.transaction() as conn:
        first = await changes.replayed(
            conn, "UpdateDunningCampaign", request_id, digest, patch.code
        )
        current = await dunning.get_campaign(conn, patch.code, lock=True)
        if current is None:
            raise NotFound(f"dunning campaign {patch.code!r} does not exist")
        if first is not None:
            return current
        row = await dunning.update_campaign(conn, patch.apply(dunning.campaign_from_row(current)))
        await _record_campaign(conn, principal, "dunning_campaign.updated", row)
        return row


async def list_campaigns(
    db: Database, page_size: int, page_token: str
) -> tuple[list[asyncpg.Record], str]:
    size = validation.page_size(page_size)
    async with db.connection() as conn:
        rows = await dunning.list_campaigns(conn, page_token, size + 1)
    if len(rows) > size:
        return rows[:size], rows[size - 1]["code"]
    return rows, ""


async def set_exclusion(
    db: Database,
    principal: Principal,
    request_id: str,
    customer_id: str,
    *,
    excluded: bool,
    reason: str,
) -> bool:
    changes.validate_request_id(request_id)
    validation.identifier(customer_id, "customer_id")
    validation.text(reason, "reason", 500)
    digest = changes.fingerprint("SetDunningExclusion", customer_id, excluded, reason)
    async with db.transaction() as conn:
        if await changes.replayed(conn, "SetDunningExclusion", request_id, digest, customer_id):
            return await dunning.is_excluded(conn, customer_id)
        await dunning.set_exclusion(
            conn, customer_id, excluded=excluded, reason=reason, actor=principal.name
        )
        await changes.record(
            conn,
            actor=principal.name,
            action="dunning.excluded" if excluded else "dunning.included",
            entity_type="customer",
            entity_id=customer_id,
            data={"excluded": excluded, "reason": reason},
            event_field="dunning_exclusion_changed",
            event_payload=events_pb2.DunningExclusionChanged(
                customer_id=customer_id, excluded=excluded, reason=reason
            ),
        )
        return excluded


# -- what plans do ----------------------------------------------------------------------------


async def assign_campaign(conn: Connection, plan: asyncpg.Record) -> Campaign | None:
    """Give a new plan the campaign of its customer's segment (its metadata) and note whether
    the customer is excluded from dunning."""
    campaigns = [dunning.campaign_from_row(r) for r in await dunning.all_campaigns(conn)]
    campaign = choose_campaign(campaigns, plan["metadata"])
    excluded = await dunning.is_excluded(conn, plan["customer_id"])
    await dunning.set_plan_dunning(
        conn,
        plan["plan_id"],
        campaign_code=campaign.code if campaign else None,
        excluded=excluded,
        next_at=next_step_at(campaign, plan["first_failed_at"], set()) if campaign else None,
    )
    return campaign


async def _campaign_of(conn: Connection, plan: asyncpg.Record) -> Campaign | None:
    code = plan["campaign_code"]
    if code is None:
        return None
    row = await dunning.get_campaign(conn, code)
    return dunning.campaign_from_row(row) if row else None


async def run_due_steps(conn: Connection, plan_id: uuid.UUID, *, now: datetime, actor: str) -> int:
    """Run the plan's due dunning steps (in the caller's transaction, the plan row locked):
    NOTIFY publishes a notice (unless the customer is excluded), RETRY brings the next attempt
    forward to now. Returns how many steps ran."""
    plan = await retries.lock(conn, plan_id)
    assert plan is not None
    campaign = await _campaign_of(conn, plan)
    if campaign is None:
        return 0
    done = await dunning.step_runs(conn, plan["plan_id"])
    ran = 0
    for index, step in due_steps(campaign, plan["first_failed_at"], now, done):
        if not await dunning.record_step(conn, plan["plan_id"], index, step):
            continue
        done.add(index)
        ran += 1
        await _run_step(conn, plan, campaign, step, now=now, actor=actor)
    await dunning.set_next_dunning(
        conn, plan["plan_id"], next_step_at(campaign, plan["first_failed_at"], done)
    )
    return ran


async def _run_step(
    conn: Connection,
    plan: asyncpg.Record,
    campaign: Campaign,
    step: Step,
    *,
    now: datetime,
    actor: str,
) -> None:
    plan_id = plan["plan_id"]
    skipped = plan["dunning_excluded"] and step.kind is StepKind.NOTIFY
    if step.kind is StepKind.RETRY and plan["status"] == "ACTIVE":
        due = plan["next_attempt_at"]
        if due is not None and due > now and not plan["waiting_for_method"]:
            await retries.update_plan(conn, plan, next_attempt_at=now)
    row = await retries.view(conn, plan_id)
    assert row is not None
    snapshot = convert.retry_plan_state(row, row["methods"])
    data = {
        "campaign": campaign.code,
        "day": step.day,
        "kind": step.kind.value,
        "template": step.template,
        "skipped": skipped,
    }
    if step.kind is StepKind.NOTIFY and not skipped:
        await changes.record(
            conn,
            actor=actor,
            action="dunning.notice",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data=data,
            event_field="dunning_notice",
            event_payload=events_pb2.DunningNotice(
                plan_id=str(plan_id),
                customer_id=plan["customer_id"],
                subscription_id=plan["subscription_id"],
                campaign_code=campaign.code,
                template=step.template,
                day=step.day,
                plan=snapshot,
            ),
        )
    else:
        await changes.record(
            conn,
            actor=actor,
            action="dunning.step",
            entity_type="retry_plan",
            entity_id=str(plan_id),
            data=data,
            event_field="retry_plan_changed",
            event_payload=events_pb2.RetryPlanChanged(plan=snapshot),
        )


async def on_exhausted(conn: Connection, plan_id: uuid.UUID, *, actor: str) -> None:
    """The plan ran out of attempts: publish the campaign's exhaustion and final action
    (nothing for a customer excluded from dunning)."""
    plan = await retries.lock(conn, plan_id)
    assert plan is not None
    await dunning.set_next_dunning(conn, plan["plan_id"], None)
    campaign = await _campaign_of(conn, plan)
    if campaign is None or plan["dunning_excluded"]:
        return
    row = await retries.view(conn, plan["plan_id"])
    assert row is not None
    snapshot = convert.retry_plan_state(row, row["methods"])
    await changes.record(
        conn,
        actor=actor,
        action="dunning.exhausted",
        entity_type="retry_plan",
        entity_id=str(plan["plan_id"]),
        data={"campaign": campaign.code},
        event_field="dunning_exhausted",
        event_payload=events_pb2.DunningExhausted(plan=snapshot, campaign_code=campaign.code),
    )
    if campaign.final_action is FinalAction.NONE:
        return
    await changes.record(
        conn,
        actor=actor,
        action="dunning.final_action",
        entity_type="retry_plan",
        entity_id=str(plan["plan_id"]),
        data={"campaign": campaign.code, "final_action": campaign.final_action.value},
        event_field="dunning_final_action",
        event_payload=events_pb2.DunningFinalAction(
            plan=snapshot,
            campaign_code=campaign.code,
            action=dunning_pb2.FinalAction.Value(f"FINAL_ACTION_{campaign.final_action.value}"),
        ),
    )


async def run_due(db: Database, *, actor: str, limit: int = 500) -> int:
    """The billing job's dunning pass: run every plan's due steps. Plans are locked with SKIP
    LOCKED, so several workers share them; each plan's steps commit together."""
    now = datetime.now(UTC)
    ran = 0
    async with db.transaction() as conn:
        for plan in await dunning.claim_due(conn, now, limit):
            ran += await run_due_steps(conn, plan["plan_id"], now=now, actor=actor)
    return ran
