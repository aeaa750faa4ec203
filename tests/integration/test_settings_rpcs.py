"""The refund policy and retry schedules through gRPC: roles, field masks, validation with
google.rpc.BadRequest details, audit rows, idempotency, and the policy's effect on refunds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from refundretry.v1 import refund_pb2, refund_policy_pb2, retry_schedule_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from tests.integration import builders as b
from tests.integration.conftest import Client

RS = refund_pb2.RefundStatus

# The schedules the migrations seed.
SEEDED = {"payment-fixed", "payment-smart", "refund-default"}


# -- helpers ----------------------------------------------------------------------------------


def duration(value: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(value)
    return out


def policy_message(
    *,
    auto: list[tuple[str, int]] | None = None,
    tiers: list[tuple[str, int, int]] | None = None,
    window: timedelta | None = timedelta(days=180),
) -> refund_policy_pb2.RefundPolicy:
    policy = refund_policy_pb2.RefundPolicy(
        auto_approval_thresholds=[
            refund_policy_pb2.AutoApprovalThreshold(max_amount=b.usd(v, c)) for c, v in auto or []
        ],
        approval_tiers=[
            refund_policy_pb2.ApprovalTier(min_amount=b.usd(v, c), required_approvals=n)
            for c, v, n in tiers or []
        ],
    )
    if window is not None:
        policy.refund_window.CopyFrom(duration(window))
    return policy


async def update_policy(
    client: Client,
    policy: refund_policy_pb2.RefundPolicy,
    *,
    mask: list[str] | None = None,
    token: str | None = "t-admin",
    rid: str | None = None,
) -> refund_policy_pb2.RefundPolicy:
    request = pb.UpdateRefundPolicyRequest(request_id=rid or b.request_id(), policy=policy)
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    response: pb.UpdateRefundPolicyResponse = await client.call(
        token, "UpdateRefundPolicy", request
    )
    return response.policy


async def get_policy(client: Client, token: str = "t-reader") -> refund_policy_pb2.RefundPolicy:
    response: pb.GetRefundPolicyResponse = await client.call(
        token, "GetRefundPolicy", pb.GetRefundPolicyRequest()
    )
    return response.policy


def thresholds(policy: refund_policy_pb2.RefundPolicy) -> dict[str, int]:
    return {
        t.max_amount.currency_code: t.max_amount.minor_units
        for t in policy.auto_approval_thresholds
    }


def tiers_of(policy: refund_policy_pb2.RefundPolicy) -> list[tuple[str, int, int]]:
    return [
        (t.min_amount.currency_code, t.min_amount.minor_units, t.required_approvals)
        for t in policy.approval_tiers
    ]


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


async def rpc_error(awaitable: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def audit_events(client: Client, entity_type: str, entity_id: str = "") -> list[Any]:
    response: pb.ListAuditEventsResponse = await client.call(
        "t-reader",
        "ListAuditEvents",
        pb.ListAuditEventsRequest(entity_type=entity_type, entity_id=entity_id, page_size=1000),
    )
    return list(response.audit_events)


def schedule_message(
    code: str,
    intervals: list[int] | None = None,
    max_attempts: int = 3,
    description: str = "",
) -> retry_schedule_pb2.RetrySchedule:
    return retry_schedule_pb2.RetrySchedule(
        code=code,
        description=description,
        intervals=[duration(timedelta(seconds=s)) for s in (intervals or [60, 600])],
        max_attempts=max_attempts,
    )


async def create_schedule(
    client: Client,
    schedule: retry_schedule_pb2.RetrySchedule,
    token: str = "t-ops",
    rid: str | None = None,
) -> retry_schedule_pb2.RetrySchedule:
    response: pb.CreateRetryScheduleResponse = await client.call(
        token,
        "CreateRetrySchedule",
        pb.CreateRetryScheduleRequest(request_id=rid or b.request_id(), schedule=schedule),
    )
    return response.schedule


async def update_schedule(
    client: Client,
    schedule: retry_schedule_pb2.RetrySchedule,
    mask: list[str] | None = None,
    token: str = "t-ops",
) -> retry_schedule_pb2.RetrySchedule:
    request = pb.UpdateRetryScheduleRequest(request_id=b.request_id(), schedule=schedule)
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    response: pb.UpdateRetryScheduleResponse = await client.call(
        token, "UpdateRetrySchedule", request
    )
    return response.schedule


async def list_schedules(
    client: Client, page_size: int = 0, page_token: str = ""
) -> pb.ListRetrySchedulesResponse:
    response: pb.ListRetrySchedulesResponse = await client.call(
        "t-reader",
        "ListRetrySchedules",
        pb.ListRetrySchedulesRequest(page_size=page_size, page_token=page_token),
    )
    return response


def seconds(schedule: retry_schedule_pb2.RetrySchedule) -> list[int]:
    return [int(i.ToTimedelta().total_seconds()) for i in schedule.intervals]


# -- the refund policy ------------------------------------------------------------------------


async def test_default_policy_is_version_0_without_auto_approval(client: Client) -> None:
    policy = await get_policy(client)
    assert policy.version == 0
    assert thresholds(policy) == {}
    assert tiers_of(policy) == []
    assert policy.refund_window.ToTimedelta() == timedelta(days=180)
    assert policy.updated_by == "system:migration"


async def test_admin_update_increments_version_and_records_the_caller(client: Client) -> None:
    first = await update_policy(
        client,
        policy_message(
            auto=[("USD", 5000)], tiers=[("USD", 100_000, 2)], window=timedelta(days=30)
        ),
    )
    assert first.version == 1
    assert first.updated_by == "admin@example.com"
    assert thresholds(first) == {"USD": 5000}
    assert tiers_of(first) == [("USD", 100_000, 2)]
    assert first.refund_window.ToTimedelta() == timedelta(days=30)
    assert first.HasField("update_time")

    stored = await get_policy(client)
    assert stored.version == 1
    assert thresholds(stored) == {"USD": 5000}
    assert tiers_of(stored) == [("USD", 100_000, 2)]
    assert stored.updated_by == "admin@example.com"

    second = await update_policy(client, policy_message(auto=[("EUR", 100)]))
    assert second.version == 2
    assert thresholds(second) == {"EUR": 100}
    assert tiers_of(second) == []


async def test_output_only_fields_in_the_request_are_ignored(client: Client) -> None:
    policy = policy_message(auto=[("USD", 700)])
    policy.version = 42
    policy.updated_by = "mallory@example.com"
    saved = await update_policy(client, policy)
    assert saved.version == 1
    assert saved.updated_by == "admin@example.com"


async def test_update_mask_replaces_only_the_named_field(client: Client) -> None:
    await update_policy(
        client,
        policy_message(auto=[("USD", 5000)], tiers=[("USD", 50_000, 2)], window=timedelta(days=90)),
    )
    masked = await update_policy(
        client,
        policy_message(auto=[("EUR", 1)], tiers=[("EUR", 9, 3)], window=timedelta(days=7)),
        mask=["refund_window"],
    )
    assert masked.version == 2
    assert masked.refund_window.ToTimedelta() == timedelta(days=7)
    assert thresholds(masked) == {"USD": 5000}
    assert tiers_of(masked) == [("USD", 50_000, 2)]

    masked = await update_policy(
        client, policy_message(auto=[("JPY", 3000)], window=None), mask=["auto_approval_thresholds"]
    )
    assert thresholds(masked) == {"JPY": 3000}
    assert masked.refund_window.ToTimedelta() == timedelta(days=7)
    assert tiers_of(masked) == [("USD", 50_000, 2)]
    stored = await get_policy(client)
    assert (stored.version, thresholds(stored)) == (3, {"JPY": 3000})


async def test_unknown_update_mask_path_is_invalid_argument_naming_update_mask(
    client: Client,
) -> None:
    error = await rpc_error(
        update_policy(client, policy_message(auto=[("USD", 1)]), mask=["version"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "update_mask" in (error.details() or "")
    assert bad_request_fields(error) == ["update_mask"]
    assert (await get_policy(client)).version == 0


@pytest.mark.parametrize("token", ["t-alice", "t-ops", "t-billing", "t-reader"])
async def test_non_admin_cannot_update_the_policy(client: Client, token: str) -> None:
    await rpc_error(
        update_policy(client, policy_message(auto=[("USD", 1_000_000)]), token=token),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert (await get_policy(client)).version == 0


@pytest.mark.parametrize("token", [None, "t-nobody"])
async def test_unauthenticated_caller_cannot_read_or_update_the_policy(
    client: Client, token: str | None
) -> None:
    await rpc_error(
        client.call(token, "GetRefundPolicy", pb.GetRefundPolicyRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await rpc_error(
        update_policy(client, policy_message(auto=[("USD", 1)]), token=token),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert (await get_policy(client)).version == 0


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        pytest.param(
            policy_message(auto=[("USD", -1)]),
            "policy.auto_approval_thresholds[0].max_amount.minor_units",
            id="negative-threshold",
        ),
        pytest.param(
            policy_message(auto=[("USD", 100), ("EUR", 5), ("USD", 200)]),
            "policy.auto_approval_thresholds[2].max_amount.currency_code",
            id="duplicate-currency",
        ),
        pytest.param(
            policy_message(auto=[("XYZ", 100)]),
            "policy.auto_approval_thresholds[0].max_amount.currency_code",
            id="unknown-currency",
        ),
        pytest.param(
            policy_message(tiers=[("USD", 1000, 2), ("USD", 5000, 0)]),
            "policy.approval_tiers[1].required_approvals",
            id="tier-zero-approvals",
        ),
        pytest.param(policy_message(window=timedelta(0)), "policy.refund_window", id="zero-window"),
        pytest.param(
            policy_message(window=timedelta(days=-1)), "policy.refund_window", id="negative-window"
        ),
        pytest.param(policy_message(window=None), "policy.refund_window", id="missing-window"),
    ],
)
async def test_bad_policy_is_invalid_argument_naming_the_field(
    client: Client, policy: refund_policy_pb2.RefundPolicy, field: str
) -> None:
    error = await rpc_error(update_policy(client, policy), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in (error.details() or "")
    assert bad_request_fields(error) == [field]
    assert (await get_policy(client)).version == 0
    assert await audit_events(client, "refund_policy") == []


async def test_policy_update_is_audited(client: Client) -> None:
    saved = await update_policy(
        client, policy_message(auto=[("USD", 5000)], tiers=[("USD", 10_000, 2)])
    )
    (event,) = await audit_events(client, "refund_policy")
    assert event.action == "refund_policy.updated"
    assert event.actor == "admin@example.com"
    assert event.entity_id == "refund-policy"
    assert event.data["version"] == saved.version == 1
    assert dict(event.data["auto_approve"]) == {"USD": 5000}
    assert event.data["refund_window_seconds"] == 180 * 86400


async def test_same_request_id_and_policy_replays_without_a_new_version(client: Client) -> None:
    rid = b.request_id()
    policy = policy_message(auto=[("USD", 5000)])
    first = await update_policy(client, policy, rid=rid)
    again = await update_policy(client, policy, rid=rid)
    assert first.version == again.version == 1
    assert thresholds(again) == {"USD": 5000}
    assert (await get_policy(client)).version == 1
    assert len(await audit_events(client, "refund_policy")) == 1


async def test_same_request_id_with_a_different_policy_is_already_exists(client: Client) -> None:
    rid = b.request_id()
    await update_policy(client, policy_message(auto=[("USD", 5000)]), rid=rid)
    await rpc_error(
        update_policy(client, policy_message(auto=[("USD", 9000)]), rid=rid),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    stored = await get_policy(client)
    assert (stored.version, thresholds(stored)) == (1, {"USD": 5000})


async def test_replay_after_a_later_update_returns_the_first_result(client: Client) -> None:
    """AIP-155 (the service's contract): the same id with the same request returns the first
    result, not whatever policy is current when the retry arrives."""
    rid = b.request_id()
    policy_a = policy_message(auto=[("USD", 5000)])
    first = await update_policy(client, policy_a, rid=rid)
    await update_policy(client, policy_message(auto=[("USD", 1)], window=timedelta(days=1)))
    replay = await update_policy(client, policy_a, rid=rid)
    assert replay.version == first.version == 1
    assert thresholds(replay) == {"USD": 5000}


async def test_replay_of_a_masked_update_after_another_update_is_not_refused(
    client: Client,
) -> None:
    """A retried request identical to the first one must never get ALREADY_EXISTS, even when
    another field of the policy changed in between."""
    rid = b.request_id()
    masked = policy_message(window=timedelta(days=30))
    await update_policy(client, masked, mask=["refund_window"], rid=rid)
    await update_policy(
        client, policy_message(auto=[("USD", 5000)], window=None), mask=["auto_approval_thresholds"]
    )
    replay = await update_policy(client, masked, mask=["refund_window"], rid=rid)
    assert replay.refund_window.ToTimedelta() == timedelta(days=30)


async def test_concurrent_masked_updates_of_different_fields_keep_both(client: Client) -> None:
    """Two admins changing different fields at once: neither change may be lost."""
    for round_no in range(1, 9):
        await asyncio.gather(
            update_policy(
                client,
                policy_message(auto=[("USD", round_no * 100)], window=None),
                mask=["auto_approval_thresholds"],
            ),
            update_policy(
                client, policy_message(window=timedelta(days=round_no)), mask=["refund_window"]
            ),
        )
        stored = await get_policy(client)
        assert thresholds(stored) == {"USD": round_no * 100}, f"round {round_no}"
        assert stored.refund_window.ToTimedelta() == timedelta(days=round_no), f"round {round_no}"


# -- the policy applied to refunds ------------------------------------------------------------


async def test_refunds_up_to_the_threshold_are_auto_approved(client: Client) -> None:
    await b.set_policy(client, auto={"USD": 5000})
    payment = await b.record_payment(client, items=[("plan", 20_000, 0)])

    small = await b.create_refund(client, payment.payment_id, amount=4000)
    assert small.status == RS.REFUND_STATUS_APPROVED
    assert small.auto_approved
    assert small.required_approvals == 0

    at_threshold = await b.create_refund(client, payment.payment_id, amount=5000)
    assert at_threshold.status == RS.REFUND_STATUS_APPROVED
    assert at_threshold.auto_approved

    large = await b.create_refund(client, payment.payment_id, amount=6000)
    assert large.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert not large.auto_approved
    assert large.required_approvals == 1

    summary = await b.run_job(client)
    assert summary.refunds_succeeded == 2
    assert (await b.get_refund(client, small.refund_id)).status == RS.REFUND_STATUS_SUCCEEDED
    assert (await b.get_refund(client, large.refund_id)).status == (
        RS.REFUND_STATUS_PENDING_APPROVAL
    )


async def test_threshold_applies_only_to_its_currency(client: Client) -> None:
    await b.set_policy(client, auto={"USD": 5000})
    payment = await b.record_payment(client, items=[("plan", 1000, 0)], currency="EUR")
    refund = await b.create_refund(client, payment.payment_id, amount=10, currency="EUR")
    assert refund.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert not refund.auto_approved


async def test_outside_the_refund_window_no_auto_approval_and_only_admin_approves(
    client: Client,
) -> None:
    await b.set_policy(client, auto={"USD": 5000}, window=timedelta(days=30))
    old = await b.record_payment(client, captured_at=datetime.now(UTC) - timedelta(days=60))
    refund = await b.create_refund(client, old.payment_id, amount=4000)
    assert refund.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert not refund.auto_approved

    error = await rpc_error(b.approve(client, refund.refund_id), grpc.StatusCode.PERMISSION_DENIED)
    assert "refund window" in (error.details() or "")
    unchanged = await b.get_refund(client, refund.refund_id)
    assert unchanged.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert list(unchanged.approvals) == []

    approved = await b.approve(client, refund.refund_id, token="t-admin")
    assert approved.status == RS.REFUND_STATUS_APPROVED
    assert [a.approver for a in approved.approvals] == ["admin@example.com"]


# -- retry schedules --------------------------------------------------------------------------


async def test_seeded_default_schedule_is_listed(client: Client) -> None:
    response = await list_schedules(client)
    by_code = {s.code: s for s in response.schedules}
    assert "refund-default" in by_code
    default = by_code["refund-default"]
    assert seconds(default) == [3600, 21600, 86400]
    assert default.max_attempts == 5
    assert response.next_page_token == ""


async def test_create_schedule_and_list_it(client: Client) -> None:
    created = await create_schedule(
        client, schedule_message("card-soft", [300, 3600], 4, "soft declines")
    )
    assert created.code == "card-soft"
    assert seconds(created) == [300, 3600]
    assert created.max_attempts == 4
    assert created.description == "soft declines"
    assert created.HasField("create_time")
    listed = {s.code: s for s in (await list_schedules(client)).schedules}
    assert set(listed) == {"card-soft", *SEEDED}
    assert seconds(listed["card-soft"]) == [300, 3600]
    (event,) = await audit_events(client, "retry_schedule", "card-soft")
    assert (event.action, event.actor) == ("retry_schedule.created", "ops@example.com")


async def test_create_duplicate_code_is_already_exists(client: Client) -> None:
    await create_schedule(client, schedule_message("dup", [60], 2, "first"))
    await rpc_error(
        create_schedule(client, schedule_message("dup", [120], 3, "second")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await rpc_error(
        create_schedule(client, schedule_message("refund-default")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    listed = {s.code: s for s in (await list_schedules(client)).schedules}
    assert listed["dup"].description == "first"
    assert seconds(listed["refund-default"]) == [3600, 21600, 86400]


async def test_create_replays_the_same_request_id(client: Client) -> None:
    rid = b.request_id()
    first = await create_schedule(client, schedule_message("replayed", [60], 2), rid=rid)
    again = await create_schedule(client, schedule_message("replayed", [60], 2), rid=rid)
    assert again.code == first.code
    assert again.create_time == first.create_time
    await rpc_error(
        create_schedule(client, schedule_message("other", [60], 2), rid=rid),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    codes = [s.code for s in (await list_schedules(client)).schedules]
    assert codes == sorted([*SEEDED, "replayed"])


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        pytest.param(schedule_message("Bad Code"), "schedule.code", id="bad-code"),
        pytest.param(schedule_message(""), "schedule.code", id="empty-code"),
        pytest.param(schedule_message("ok", max_attempts=0), "schedule.max_attempts", id="zero"),
        pytest.param(
            schedule_message("ok", [60, 0], max_attempts=3),
            "schedule.intervals[1]",
            id="zero-interval",
        ),
        pytest.param(
            retry_schedule_pb2.RetrySchedule(code="ok", max_attempts=3),
            "schedule.intervals",
            id="no-intervals",
        ),
    ],
)
async def test_invalid_schedule_is_invalid_argument_naming_the_field(
    client: Client, schedule: retry_schedule_pb2.RetrySchedule, field: str
) -> None:
    error = await rpc_error(create_schedule(client, schedule), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in (error.details() or "")
    assert bad_request_fields(error) == [field]
    codes = [s.code for s in (await list_schedules(client)).schedules]
    assert codes == sorted(SEEDED)


async def test_update_with_mask_changes_only_those_fields(client: Client) -> None:
    created = await create_schedule(client, schedule_message("masked", [60, 600], 3, "before"))
    updated = await update_schedule(
        client, schedule_message("masked", [5], 9, "after"), mask=["max_attempts"]
    )
    assert updated.max_attempts == 9
    assert updated.description == "before"
    assert seconds(updated) == [60, 600]
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    updated = await update_schedule(
        client, schedule_message("masked", [30, 90], 1, "after"), mask=["intervals", "description"]
    )
    assert (updated.max_attempts, updated.description, seconds(updated)) == (9, "after", [30, 90])
    (listed,) = [s for s in (await list_schedules(client)).schedules if s.code == "masked"]
    assert (listed.max_attempts, listed.description, seconds(listed)) == (9, "after", [30, 90])
    actions = [e.action for e in await audit_events(client, "retry_schedule", "masked")]
    assert actions == ["retry_schedule.created", "retry_schedule.updated", "retry_schedule.updated"]


async def test_update_without_mask_replaces_every_field(client: Client) -> None:
    await create_schedule(client, schedule_message("whole", [60], 2, "before"))
    updated = await update_schedule(client, schedule_message("whole", [120, 240], 4, "after"))
    assert (updated.max_attempts, updated.description, seconds(updated)) == (4, "after", [120, 240])


async def test_update_unknown_code_is_not_found(client: Client) -> None:
    await rpc_error(
        update_schedule(client, schedule_message("no-such-schedule"), mask=["max_attempts"]),
        grpc.StatusCode.NOT_FOUND,
    )
    codes = [s.code for s in (await list_schedules(client)).schedules]
    assert codes == sorted(SEEDED)


async def test_update_with_invalid_values_changes_nothing(client: Client) -> None:
    await create_schedule(client, schedule_message("strict", [60], 2, "kept"))
    error = await rpc_error(
        update_schedule(client, schedule_message("strict", max_attempts=0), mask=["max_attempts"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["schedule.max_attempts"]
    error = await rpc_error(
        update_schedule(client, schedule_message("strict"), mask=["code_name"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["update_mask"]
    (listed,) = [s for s in (await list_schedules(client)).schedules if s.code == "strict"]
    assert (listed.max_attempts, listed.description, seconds(listed)) == (2, "kept", [60])


async def test_paging_with_page_size_1_walks_every_schedule_once(client: Client) -> None:
    for code in ("b-weekly", "a-daily", "c-hourly", "z_last"):
        await create_schedule(client, schedule_message(code))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await list_schedules(client, page_size=1, page_token=token)
        pages += 1
        assert len(page.schedules) == 1
        seen += [s.code for s in page.schedules]
        token = page.next_page_token
        if not token:
            break
        assert pages < 20, "paging does not end"
    expected = sorted(["a-daily", "b-weekly", "c-hourly", *SEEDED, "z_last"])
    assert seen == expected
    assert pages == len(expected)


async def test_paging_with_page_size_2(client: Client) -> None:
    for code in ("z1", "z2", "z3"):
        await create_schedule(client, schedule_message(code))
    every = sorted([*SEEDED, "z1", "z2", "z3"])
    first = await list_schedules(client, page_size=2)
    assert [s.code for s in first.schedules] == every[:2]
    second = await list_schedules(client, page_size=2, page_token=first.next_page_token)
    assert [s.code for s in second.schedules] == every[2:4]
    third = await list_schedules(client, page_size=2, page_token=second.next_page_token)
    assert [s.code for s in third.schedules] == every[4:6]
    assert third.next_page_token == ""


@pytest.mark.parametrize("token", ["t-reader", "t-billing", "t-alice"])
async def test_callers_without_retry_manage_cannot_create_or_update(
    client: Client, token: str
) -> None:
    await rpc_error(
        create_schedule(client, schedule_message("sneaky"), token=token),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await rpc_error(
        update_schedule(client, schedule_message("refund-default", [1], 100), token=token),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    listed = {s.code: s for s in (await list_schedules(client)).schedules}
    assert set(listed) == SEEDED
    assert listed["refund-default"].max_attempts == 5


async def test_admin_may_manage_schedules(client: Client) -> None:
    created = await create_schedule(client, schedule_message("by-admin"), token="t-admin")
    assert created.code == "by-admin"
