"""GetRecoveryMetrics and its roll-ups: the figures agree exactly with the raw tables (random
rows over several days, gateways, currencies and time zones, changed after a fold, committed
out of order), the service's own writes are rolled up, and bad requests name their field."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from refundretry.v1 import analytics_pb2, refund_pb2
from repository import analytics as analytics_repo
from repository.database import Database
from service import analytics
from service.domain.analytics import GroupBy, RecoveryMetrics, bucket_floor
from service.server import Service
from tests.integration import builders as b
from tests.integration import retry_builders as rb
from tests.integration.analytics_data import (
    WINDOW_DAYS,
    WINDOW_START,
    ZONES,
    Generator,
    expected,
    read_raw,
)
from tests.integration.conftest import Client

RANGES = (
    # Every row, and a range starting and ending mid-day.
    (WINDOW_START - timedelta(days=2), WINDOW_START + timedelta(days=WINDOW_DAYS + 2)),
    (WINDOW_START + timedelta(days=2, hours=7), WINDOW_START + timedelta(days=5, hours=3)),
)


async def assert_agrees_with_raw(db: Database, zones: tuple[str, ...] = ZONES) -> int:
    """Every grouping, zone, currency filter and range: the roll-ups' figures, and the same
    query on the raw tables in SQL, equal the figures computed in Python from the raw rows.
    Returns how many retry attempts were compared (so a test can tell it saw data)."""
    async with db.connection() as conn:
        raw = await read_raw(conn)
    seen = 0
    for zone in zones:
        for group_by in GroupBy:
            for currency in ("", "EUR"):
                for start, end in RANGES:
                    query = analytics.MetricsQuery(start, end, zone, group_by, currency)
                    got = await analytics.recovery_metrics(db, query, zones=zones)
                    want = expected(raw, zone, got.first_day, got.last_day, group_by, currency)
                    where = f"{zone} {group_by} {currency or 'all'} {start:%d %H:%M}"
                    assert (got.groups, got.total) == want, where
                    assert got.rolled_up_at is not None
                    from_raw = await analytics.recovery_metrics(db, query, zones=zones, raw=True)
                    assert (from_raw.groups, from_raw.total) == want, f"raw SQL: {where}"
                    seen += got.total.retry_attempts
    return seen


async def rollup_rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """The roll-up tables' rows with any figure, sorted (a row whose counts cancelled to 0
    means nothing)."""
    queries = {
        "payment": "SELECT * FROM analytics_payment_day WHERE retry_attempts <> 0 OR "
        "retry_successes <> 0 OR plans_recovered <> 0 OR plans_exhausted <> 0 OR "
        "plans_open <> 0 OR plans_canceled <> 0 OR amount_recovered <> 0 OR "
        "recovery_retries <> 0",
        "refund": "SELECT * FROM analytics_refund_day WHERE refunds <> 0 OR amount <> 0",
        "duration": "SELECT * FROM analytics_duration_day WHERE count <> 0",
        "plan_fact": "SELECT * FROM analytics_plan_fact",
        "refund_fact": "SELECT * FROM analytics_refund_fact",
    }
    async with db.connection() as conn:
        return {name: sorted(tuple(r) for r in await conn.fetch(q)) for name, q in queries.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rollups_agree_exactly_with_the_raw_tables(db: Database, seed: int) -> None:
    rng = random.Random(seed)
    async with db.connection() as conn:
        gen = Generator(conn, rng)
        payments = await gen.payments(12)
        await gen.plans(160)
        await gen.refunds(payments, 90)

    first = await analytics.fold(db, ZONES)  # builds from the raw tables
    assert first.initialized
    assert first.zones_added == ZONES
    assert await assert_agrees_with_raw(db) > 0

    async with db.connection() as conn:
        gen.conn = conn
        await gen.plans(120)
        await gen.refunds(payments, 60)
        await gen.late_changes()
    second = await analytics.fold(db, ZONES)  # folds the logs
    assert not second.initialized
    assert second.attempt_changes > 0
    assert second.plans > 0
    assert second.refunds > 0
    await assert_agrees_with_raw(db)

    # The incremental roll-ups hold exactly what a rebuild from the raw tables holds.
    folded = await rollup_rows(db)
    async with db.connection() as conn:
        await analytics_repo.reset(conn)
    assert (await analytics.fold(db, ZONES)).initialized
    assert await rollup_rows(db) == folded


async def test_a_change_committed_after_a_fold_started_is_folded_exactly_once(
    db: Database,
) -> None:
    await analytics.fold(db, ZONES)
    rng = random.Random(7)
    async with db.connection() as early, db.connection() as late:
        early_gen, late_gen = Generator(early, rng), Generator(late, rng)
        async with early.transaction():
            # Written first, committed last: its times are older than the other writer's.
            await early_gen.plans(30)
            payments = await late_gen.payments(3)
            await late_gen.plans(30)
            await late_gen.refunds(payments, 20)
            summary = await analytics.fold(db, ZONES)
            assert summary.plans == 30  # the late writer's only: the early one is running
            await assert_agrees_with_raw(db, ("UTC", "Asia/Kolkata"))
        await analytics.fold(db, ZONES)
        await assert_agrees_with_raw(db, ("UTC", "Asia/Kolkata"))
        assert (await analytics.fold(db, ZONES)).plans == 0  # nothing is folded twice
        await assert_agrees_with_raw(db, ("UTC", "Asia/Kolkata"))


async def test_leases_decisions_and_attempt_counts_log_nothing(db: Database) -> None:
    """The billing job's claims update hundreds of plans per statement: the change log is
    not written for them, only for changes a figure depends on."""
    async with db.connection() as conn:
        await Generator(conn, random.Random(3)).plans(50)
    await analytics.fold(db, ZONES)
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE retry_plan SET lease_owner = 'w', lease_expires_at = now(), "
            "attempt_count = attempt_count + 1, next_attempt_at = now(), updated_at = now() "
            "WHERE status <> 'RECOVERED'"
        )
        assert await conn.fetchval("SELECT count(*) FROM analytics_plan_change") == 0
        await conn.execute("UPDATE retry_plan SET status = 'CANCELED' WHERE status = 'ACTIVE'")
        assert await conn.fetchval("SELECT count(*) FROM analytics_plan_change") > 0


async def test_gateway_and_currency_of_a_plan_are_fixed(db: Database) -> None:
    async with db.connection() as conn:
        await Generator(conn, random.Random(4)).plans(3)
        with pytest.raises(asyncpg.CheckViolationError, match="fixed once recorded"):
            await conn.execute("UPDATE retry_plan SET currency = 'KWD'")
        await conn.execute("UPDATE retry_plan SET currency = currency, gateway = gateway")


async def test_zones_are_backfilled_when_added_and_dropped_when_removed(db: Database) -> None:
    async with db.connection() as conn:
        gen = Generator(conn, random.Random(11))
        payments = await gen.payments(5)
        await gen.plans(60)
        await gen.refunds(payments, 30)
    await analytics.fold(db, ("UTC",))
    async with db.connection() as conn:
        gen.conn = conn
        await gen.late_changes()
    added = await analytics.fold(db, ("UTC", "Pacific/Chatham"))
    assert added.zones_added == ("Pacific/Chatham",)
    await assert_agrees_with_raw(db, ("UTC", "Pacific/Chatham"))
    dropped = await analytics.fold(db, ("Pacific/Chatham",))
    assert dropped.zones_dropped == ("UTC",)
    query = analytics.MetricsQuery(WINDOW_START, WINDOW_START + timedelta(days=3))
    assert (await analytics.recovery_metrics(db, query, zones=("UTC",))).rolled_up_at is None


async def test_one_fold_at_a_time(db: Database) -> None:
    async with db.connection() as conn:
        await analytics_repo.try_lock(conn)  # another replica's fold
        assert (await analytics.fold(db, ZONES)).skipped
        await analytics_repo.unlock(conn)
    assert not (await analytics.fold(db, ZONES)).skipped


async def test_the_sql_bucket_is_the_python_bucket(db: Database) -> None:
    rng = random.Random(5)
    values = list(range(300)) + [rng.randrange(1 << rng.randrange(8, 40)) for _ in range(3000)]
    values += [(1 << k) + d for k in range(6, 40) for d in (-1, 0, 1)]
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT v, analytics_bucket(v) FROM unnest($1::bigint[]) v", values)
    assert {r[0]: r[1] for r in rows} == {v: bucket_floor(v) for v in values}


# -- through the service -------------------------------------------------------------------


@pytest.fixture
def config_overrides() -> dict[str, str]:
    return {"REFUND_RETRY_ANALYTICS_TIME_ZONES": "UTC,Asia/Kolkata"}


def metrics_request(**fields: Any) -> analytics_pb2.GetRecoveryMetricsRequest:
    """A request for the last two days and the next one; ``fields`` override (None: unset)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "start_time": now - timedelta(days=2),
        "end_time": now + timedelta(days=1),
        **fields,
    }
    request = analytics_pb2.GetRecoveryMetricsRequest()
    for name, value in values.items():
        if value is None:
            continue
        if name.endswith("_time"):
            getattr(request, name).CopyFrom(b.ts(value))
        else:
            setattr(request, name, value)
    return request


async def test_the_services_own_writes_are_rolled_up(client: Client, service: Service) -> None:
    """Failures recorded, retried by the billing job through the sandbox gateway, refunds
    created and approved: GetRecoveryMetrics over gRPC shows what the raw tables say."""
    await rb.schedule(client, "test-fast", [60, 60], 4)
    outcomes = ["succeed", "decline:insufficient_funds", "requires_action", "succeed"]
    for index, outcome in enumerate(outcomes * 3):
        at = datetime.now(UTC) - timedelta(hours=index)
        # A card each: the card networks' per-card limits would make retries depend on order.
        failure = rb.failure(outcome=outcome, at=at, amount=1000 + index, card=f"pm_{index}")
        await rb.record(client, failure)
    for _ in range(3):
        await rb.run_retries(client, ahead=timedelta(days=1))
    await b.set_policy(client, auto={"USD": 500}, tiers=[("USD", 1000, 2)])
    payment = await b.record_payment(client)
    small = await b.create_refund(client, payment.payment_id, amount=300)
    large = await b.create_refund(client, payment.payment_id, amount=2000)
    await b.approve(client, large.refund_id, token="t-bob")
    await b.approve(client, large.refund_id, token="t-carol")
    await b.create_refund(client, payment.payment_id, amount=1500)  # left waiting
    await b.run_job(client)
    assert (
        await b.get_refund(client, small.refund_id)
    ).status == refund_pb2.REFUND_STATUS_SUCCEEDED

    before = await client.call("t-reader", "GetRecoveryMetrics", metrics_request())
    assert not before.HasField("rolled_up_time")  # no fold yet: nothing to show
    summary = await analytics.fold(service.db, service.config.analytics_time_zones)
    assert summary.initialized

    async with service.db.connection() as conn:
        raw = await read_raw(conn)
    for zone in ("UTC", "Asia/Kolkata"):
        for group_by in (GroupBy.DAY, GroupBy.DECLINE_CLASS, GroupBy.GATEWAY):
            proto_group = analytics.PROTO_OF_GROUP_BY[group_by]
            response = await client.call(
                "t-reader",
                "GetRecoveryMetrics",
                metrics_request(time_zone=zone, group_by=proto_group),
            )
            first = datetime.fromisoformat(response.first_day).date()
            last = datetime.fromisoformat(response.last_day).date()
            groups, total = expected(raw, zone, first, last, group_by, "")
            assert total.retry_attempts > 0
            assert total.plans_recovered > 0
            assert total.pending_count["USD"] == 1
            assert total.approvals_measured == 1
            want = analytics.response_message(
                RecoveryMetrics(zone, first, last, group_by, groups, total, rolled_up_at=None)
            )
            response.ClearField("rolled_up_time")
            assert response == want


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"start_time": None}, "start_time"),
        ({"end_time": None}, "end_time"),
        ({"end_time": datetime(2020, 1, 1, tzinfo=UTC)}, "end_time"),
        ({"start_time": datetime(2024, 1, 1, tzinfo=UTC)}, "end_time"),  # over 366 days
        ({"start_time": datetime(1900, 1, 1, tzinfo=UTC)}, "start_time"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "Europe/Paris"}, "time_zone"),  # a zone, but not rolled up
        ({"currency_code": "usd"}, "currency_code"),
        ({"group_by": 42}, "group_by"),
    ],
)
async def test_a_bad_request_is_invalid_argument_naming_the_field(
    client: Client, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.call("t-reader", "GetRecoveryMetrics", metrics_request(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == [field], caught.value.details()


async def test_reading_metrics_needs_a_token(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.call(None, "GetRecoveryMetrics", metrics_request())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
