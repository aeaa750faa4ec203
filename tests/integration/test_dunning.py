"""Dunning through gRPC: campaigns per segment, notices and retries by day, the final action,
exclusions, and bad campaigns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from refundretry.v1 import dunning_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.retry_builders import (
    events,
    failure,
    fast_schedule,  # noqa: F401  (autouse fixture)
    plan_of,
    record,
    schedule,
)

NOTIFY = dunning_pb2.DUNNING_STEP_KIND_NOTIFY
RETRY = dunning_pb2.DUNNING_STEP_KIND_RETRY


async def create_campaign(
    client: Client,
    code: str,
    steps: list[tuple[int, Any, str]],
    *,
    final: Any = dunning_pb2.FINAL_ACTION_CANCEL_SUBSCRIPTION,
    segment: dict[str, str] | None = None,
    priority: int = 0,
) -> Any:
    campaign = dunning_pb2.DunningCampaign(
        code=code,
        steps=[dunning_pb2.DunningStep(day=d, kind=k, template=t) for d, k, t in steps],
        final_action=final,
        segment=segment or {},
        priority=priority,
    )
    response = await client.call(
        "t-ops",
        "CreateDunningCampaign",
        pb.CreateDunningCampaignRequest(request_id=b.request_id(), campaign=campaign),
    )
    return response.campaign


async def test_default_campaign_sends_the_first_notice_with_the_failure(
    client: Client, db: Database
) -> None:
    plan = (await record(client, failure())).plan
    assert plan.dunning_campaign_code == "default"
    assert [(s.day, s.template) for s in plan.dunning_steps] == [(0, "payment_failed")]
    notice = (await events(db, plan.plan_id))[0]
    assert notice.type == "dunning.notice"
    assert notice.dunning_notice.template == "payment_failed"
    assert notice.dunning_notice.customer_id == "cus_9"


async def test_campaign_is_chosen_by_segment(client: Client) -> None:
    await create_campaign(client, "pro", [(0, NOTIFY, "pro_failed")], segment={"plan": "pro"})
    await create_campaign(
        client, "pro-de", [(0, NOTIFY, "pro_de_failed")], segment={"plan": "pro", "country": "DE"}
    )
    await create_campaign(
        client, "pro-urgent", [(0, NOTIFY, "urgent")], segment={"plan": "pro"}, priority=5
    )

    async def campaign_for(metadata: dict[str, str]) -> str:
        request = failure()
        request.metadata.update(metadata)
        return str((await record(client, request)).plan.dunning_campaign_code)

    assert await campaign_for({"plan": "pro", "country": "DE"}) == "pro-de"  # most specific
    assert await campaign_for({"plan": "pro", "country": "FR"}) == "pro-urgent"  # priority
    assert await campaign_for({"plan": "basic"}) == "default"


async def test_steps_run_by_day_and_the_final_action_follows_exhaustion(
    client: Client, db: Database
) -> None:
    await create_campaign(
        client,
        "short",
        [(0, NOTIFY, "failed"), (1, NOTIFY, "reminder"), (9, NOTIFY, "never_reached")],
        final=dunning_pb2.FINAL_ACTION_PAUSE_SUBSCRIPTION,
        segment={"plan": "short"},
    )
    request = failure(
        at=datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2),
        outcome="decline:insufficient_funds",
    )
    request.metadata["plan"] = "short"
    plan_id = (await record(client, request)).plan.plan_id
    assert [s.template for s in (await plan_of(client, plan_id)).dunning_steps] == ["failed"]
    await asyncio.sleep(2.2)  # day 1 begins
    summary = await b.run_job(client)
    assert summary.payment_retries.dunning_steps == 1
    plan = await plan_of(client, plan_id)
    assert [s.template for s in plan.dunning_steps] == ["failed", "reminder"]
    for _ in range(3):  # the schedule's remaining attempts all decline
        await b.run_job(client, end=datetime.now(UTC) + timedelta(minutes=10))
    plan = await plan_of(client, plan_id)
    assert plan.status == retry_plan_pb2.RETRY_PLAN_STATUS_EXHAUSTED
    types = [e.type for e in await events(db, plan_id)]
    assert types[-3:] == ["retry.exhausted", "dunning.exhausted", "dunning.final_action"]
    final = (await events(db, plan_id))[-1].dunning_final_action
    assert final.action == dunning_pb2.FINAL_ACTION_PAUSE_SUBSCRIPTION
    assert final.campaign_code == "short"
    assert "never_reached" not in [s.template for s in plan.dunning_steps]


async def test_a_retry_step_brings_the_attempt_forward(client: Client) -> None:
    await schedule(client, "test-slow", [5 * 86400], attempts=3)
    await create_campaign(client, "nudge", [(1, RETRY, "")], segment={"plan": "nudge"})
    request = failure(
        schedule_code="test-slow",
        at=datetime.now(UTC) - timedelta(days=1, minutes=1),
        outcome="succeed",
    )
    request.metadata["plan"] = "nudge"
    plan = (await record(client, request)).plan
    assert plan.next_attempt_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert plan.decisions[-1].next_attempt_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    assert (await b.run_job(client)).payment_retries.recovered == 1


async def test_an_excluded_customer_gets_no_notice_and_no_final_action(
    client: Client, db: Database
) -> None:
    await client.call(
        "t-ops",
        "SetDunningExclusion",
        pb.SetDunningExclusionRequest(
            request_id=b.request_id(), customer_id="cus_9", excluded=True, reason="VIP"
        ),
    )
    plan = (await record(client, failure(code="stolen_card"))).plan
    assert plan.dunning_excluded
    assert plan.status == retry_plan_pb2.RETRY_PLAN_STATUS_EXHAUSTED
    types = [e.type for e in await events(db, plan.plan_id)]
    assert "dunning.notice" not in types
    assert "dunning.final_action" not in types
    assert types == ["dunning.step", "retry.exhausted"]
    await client.call(
        "t-ops",
        "SetDunningExclusion",
        pb.SetDunningExclusionRequest(request_id=b.request_id(), customer_id="cus_9"),
    )
    again = (await record(client, failure())).plan
    assert not again.dunning_excluded


async def test_update_and_list_campaigns(client: Client) -> None:
    await create_campaign(client, "c-one", [(0, NOTIFY, "a"), (4, NOTIFY, "b")])
    updated = await client.call(
        "t-ops",
        "UpdateDunningCampaign",
        pb.UpdateDunningCampaignRequest(
            request_id=b.request_id(),
            campaign=dunning_pb2.DunningCampaign(code="c-one", priority=7),
            update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
        ),
    )
    assert updated.campaign.priority == 7
    assert [s.template for s in updated.campaign.steps] == ["a", "b"]
    listed = await client.call(
        "t-reader", "ListDunningCampaigns", pb.ListDunningCampaignsRequest(page_size=1)
    )
    assert [c.code for c in listed.campaigns] == ["c-one"]
    rest = await client.call(
        "t-reader",
        "ListDunningCampaigns",
        pb.ListDunningCampaignsRequest(page_size=1, page_token=listed.next_page_token),
    )
    assert [c.code for c in rest.campaigns] == ["default"]


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([(3, NOTIFY, "a"), (1, NOTIFY, "b")], "campaign.steps[1].day"),
        ([(0, NOTIFY, "")], "campaign.steps[0].template"),
        ([(500, NOTIFY, "a")], "campaign.steps[0].day"),
        ([(0, dunning_pb2.DUNNING_STEP_KIND_UNSPECIFIED, "a")], "campaign.steps[0].kind"),
    ],
)
async def test_bad_campaigns_are_refused_naming_the_field(
    client: Client, steps: list[tuple[int, Any, str]], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await create_campaign(client, "bad", steps)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


async def test_duplicate_campaign_code(client: Client) -> None:
    await create_campaign(client, "dup", [(0, NOTIFY, "a")])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await create_campaign(client, "dup", [(0, NOTIFY, "a")])
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
