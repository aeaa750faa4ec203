"""Dunning campaigns, customer exclusions and the steps run for each plan."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from repository.database import Connection
from repository.queries import Queries
from service.domain.dunning import Campaign, FinalAction, Step, StepKind

Q = Queries("dunning")


def campaign_from_row(row: asyncpg.Record) -> Campaign:
    return Campaign(
        code=row["code"],
        steps=tuple(
            Step(int(s["day"]), StepKind(s["kind"]), s.get("template", "")) for s in row["steps"]
        ),
        final_action=FinalAction(row["final_action"]),
        segment=dict(row["segment"]),
        priority=row["priority"],
        description=row["description"],
    )


def _columns(campaign: Campaign) -> tuple[Any, ...]:
    steps = [{"day": s.day, "kind": s.kind.value, "template": s.template} for s in campaign.steps]
    return (
        campaign.code,
        campaign.description,
        steps,
        campaign.final_action.value,
        dict(campaign.segment),
        campaign.priority,
    )


async def insert_campaign(conn: Connection, campaign: Campaign) -> asyncpg.Record:
    row = await conn.fetchrow(Q["insert_campaign"], *_columns(campaign))
    assert row is not None
    return row


async def update_campaign(conn: Connection, campaign: Campaign) -> asyncpg.Record:
    row = await conn.fetchrow(Q["update_campaign"], *_columns(campaign))
    assert row is not None
    return row


async def get_campaign(conn: Connection, code: str, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["lock_campaign" if lock else "get_campaign"], code)


async def all_campaigns(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(Q["all_campaigns"])


async def list_campaigns(conn: Connection, after: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(Q["list_campaigns"], after, limit)


async def set_exclusion(
    conn: Connection, customer_id: str, *, excluded: bool, reason: str, actor: str
) -> None:
    if excluded:
        await conn.execute(Q["exclude"], customer_id, reason, actor)
    else:
        await conn.execute(Q["include"], customer_id)
    await conn.execute(Q["mark_customer_plans"], customer_id, excluded)


async def is_excluded(conn: Connection, customer_id: str) -> bool:
    return bool(await conn.fetchval(Q["is_excluded"], customer_id))


async def set_plan_dunning(
    conn: Connection,
    plan_id: uuid.UUID,
    *,
    campaign_code: str | None,
    excluded: bool,
    next_at: datetime | None,
) -> None:
    await conn.execute(Q["set_plan_dunning"], plan_id, campaign_code, excluded, next_at)


async def set_next_dunning(conn: Connection, plan_id: uuid.UUID, at: datetime | None) -> None:
    await conn.execute(Q["set_next_dunning"], plan_id, at)


async def step_runs(conn: Connection, plan_id: uuid.UUID) -> set[int]:
    return {r["step_index"] for r in await conn.fetch(Q["step_runs"], plan_id)}


async def record_step(conn: Connection, plan_id: uuid.UUID, index: int, step: Step) -> bool:
    """False when the step had already run."""
    got = await conn.fetchval(
        Q["insert_step_run"], plan_id, index, step.day, step.kind.value, step.template
    )
    return got is not None


async def claim_due(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(Q["claim_due"], now, limit)
