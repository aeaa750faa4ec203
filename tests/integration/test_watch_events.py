"""WatchEvents: history then live events, in commit order, filtered, resumable without a gap,
from any replica, and never skipping an event whose transaction commits after a later one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from refundretry.v1 import payment_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from repository.outbox import EventFilter
from service.outbox import watch as watching
from service.outbox.feed import EventFeed
from service.server import Service, start
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.conftest import test_config as config_for
from tests.integration.outbox_events import (
    add_event_only,
    outbox_rows,
    record_refund_event,
    write_events,
)
from tests.integration.test_settings_rpcs import bad_request_fields

pytestmark = pytest.mark.integration

READ_SECONDS = 30  # a bound on each read, so a lost event fails the test instead of hanging


def open_stream(client: Client, token: str | None = "t-reader", **fields: Any) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return client.stub.WatchEvents(pb.WatchEventsRequest(**fields), metadata=metadata, timeout=120)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(READ_SECONDS * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never became true")


async def take(call: Any, count: int) -> list[pb.WatchEventsResponse]:
    got: list[pb.WatchEventsResponse] = []
    for _ in range(count):
        response = await asyncio.wait_for(call.read(), READ_SECONDS)
        assert isinstance(response, pb.WatchEventsResponse), f"ended after {len(got)} events"
        got.append(response)
    return got


async def caught_up(client: Client, **fields: Any) -> list[pb.WatchEventsResponse]:
    """Every matching event committed so far (the stream ends by itself)."""
    call = open_stream(client, until_caught_up=True, **fields)
    return [response async for response in call]


async def pay(client: Client, customer: str, subscription: str) -> payment_pb2.Payment:
    payment = b.payment_message(customer_id=customer)
    payment.subscription_id = subscription
    response = await client.call(
        "t-billing",
        "RecordPayment",
        pb.RecordPaymentRequest(request_id=b.request_id(), payment=payment),
    )
    return response.payment  # type: ignore[no-any-return]


def summary(responses: list[pb.WatchEventsResponse]) -> list[tuple[str, str]]:
    return [(r.event.type, r.event.aggregate_id) for r in responses]


async def test_history_then_live_events_in_commit_order(client: Client, db: Database) -> None:
    first = await pay(client, "cus_a", "sub_a")
    refund = await b.create_refund(client, first.payment_id, amount=100)
    call = open_stream(client)
    history = await take(call, 2)
    assert summary(history) == [
        ("payment.recorded", first.payment_id),
        ("refund.created", refund.refund_id),
    ]
    assert history[0].event.payment_recorded.payment.payment_id == first.payment_id

    second = await pay(client, "cus_b", "sub_b")
    await b.approve(client, refund.refund_id, token="t-bob")
    live = await take(call, 2)
    assert summary(live) == [
        ("payment.recorded", second.payment_id),
        ("refund.approved", refund.refund_id),
    ]
    rows = await outbox_rows(db)
    assert [r.cursor for r in history + live] == [str(r["position"]) for r in rows]
    assert [r.event.event_id for r in history + live] == [str(r["event_id"]) for r in rows]
    call.cancel()


async def test_filters_by_type_prefix_customer_payment_and_subscription(client: Client) -> None:
    a1 = await pay(client, "cus_a", "sub_a1")
    a2 = await pay(client, "cus_a", "sub_a2")
    other = await pay(client, "cus_b", "sub_b")
    r1 = await b.create_refund(client, a1.payment_id, amount=100)
    r2 = await b.create_refund(client, other.payment_id, amount=100)

    everything = await caught_up(client)
    assert [r.event.type for r in everything] == ["payment.recorded"] * 3 + ["refund.created"] * 2

    by_customer = await caught_up(client, customer_id="cus_a")
    assert summary(by_customer) == [
        ("payment.recorded", a1.payment_id),
        ("payment.recorded", a2.payment_id),
        ("refund.created", r1.refund_id),
    ]
    by_payment = await caught_up(client, payment_id=other.payment_id)
    assert summary(by_payment) == [
        ("payment.recorded", other.payment_id),
        ("refund.created", r2.refund_id),
    ]
    by_subscription = await caught_up(client, subscription_id="sub_a2")
    assert summary(by_subscription) == [("payment.recorded", a2.payment_id)]
    exact = await caught_up(client, event_types=["refund.created"], customer_id="cus_a")
    assert summary(exact) == [("refund.created", r1.refund_id)]
    prefix = await caught_up(client, event_types=["refund."])
    assert summary(prefix) == [("refund.created", r1.refund_id), ("refund.created", r2.refund_id)]
    both = await caught_up(client, event_types=["refund.", "payment.recorded"], customer_id="cus_b")
    assert summary(both) == [
        ("payment.recorded", other.payment_id),
        ("refund.created", r2.refund_id),
    ]
    assert await caught_up(client, event_types=["refund.approved"]) == []
    assert await caught_up(client, customer_id="cus_nobody") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_types": ["Refund.Created"]}, "event_types[0]"),
        ({"event_types": ["refund.created", "refund..x"]}, "event_types[1]"),
        ({"event_types": [""]}, "event_types[0]"),
        ({"after": "abc"}, "after"),
        ({"after": "-3"}, "after"),
        ({"after": "99999999999999999999"}, "after"),
        ({"customer_id": "cus\n1"}, "customer_id"),
        ({"payment_id": "p" * 201}, "payment_id"),
        ({"after": "3", "live_only": True}, "live_only"),
        ({"live_only": True, "until_caught_up": True}, "until_caught_up"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    client: Client, fields: dict[str, Any], field: str
) -> None:
    call = open_stream(client, **fields)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == [field]


async def test_watching_needs_a_token(client: Client) -> None:
    call = open_stream(client, token=None)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_resume_after_a_disconnect_misses_nothing_and_repeats_nothing(
    client: Client, db: Database
) -> None:
    await write_events(db, 4)
    call = open_stream(client)
    seen = await take(call, 3)
    call.cancel()  # the client goes away after the third event
    await write_events(db, 5)

    resumed = open_stream(client, after=seen[-1].cursor)
    rest = await take(resumed, 6)
    await write_events(db, 2)
    rest += await take(resumed, 2)
    resumed.cancel()
    rows = await outbox_rows(db)
    assert [r.event.event_id for r in seen + rest] == [str(r["event_id"]) for r in rows]

    tail = await caught_up(client, after=rest[-3].cursor)
    assert [r.cursor for r in tail] == [r.cursor for r in rest[-2:]]


async def test_live_only_starts_at_the_calls_time(
    client: Client, service: Service, db: Database
) -> None:
    await write_events(db, 3)
    call = open_stream(client, live_only=True)
    feed = service.feed
    assert feed is not None
    await until(lambda: len(feed.subscriptions) == 1)  # the stream is live
    await write_events(db, 2)
    got = await take(call, 2)
    rows = await outbox_rows(db)
    assert [r.cursor for r in got] == [str(r["position"]) for r in rows[3:]]
    call.cancel()


async def read_until(call: Any, aggregate_id: str) -> list[pb.WatchEventsResponse]:
    got: list[pb.WatchEventsResponse] = []
    while not got or got[-1].event.aggregate_id != aggregate_id:
        got += await take(call, 1)
    return got


@pytest.mark.parametrize("late_writer_has_the_newer_xid", [False, True])
async def test_a_transaction_that_commits_late_is_not_skipped(
    client: Client, service: Service, db: Database, late_writer_has_the_newer_xid: bool
) -> None:
    """Transaction A takes position p1 and stays open; B takes p2 > p1 and commits; the feed
    sees p2 committed while p1 is not. A watcher must still get p1, then p2, in order.

    In the second case B took its transaction id before A did, so A's id is newer than every
    finished one and does not even appear in a snapshot's list of running transactions."""
    feed = service.feed
    assert feed is not None
    first, late, early, last = (str(uuid.uuid4()) for _ in range(4))
    async with db.transaction() as conn:
        await record_refund_event(conn, first)
    call = open_stream(client)
    assert summary(await take(call, 1)) == [("refund.created", first)]  # the feed runs

    async with db.connection() as conn_a, db.connection() as conn_b:
        tx_a, tx_b = conn_a.transaction(), conn_b.transaction()
        await tx_b.start()
        if late_writer_has_the_newer_xid:
            await conn_b.fetchval("SELECT pg_current_xact_id()")
        await tx_a.start()
        try:
            await add_event_only(conn_a, late)  # written at once: outside a unit of work
            p1 = await conn_a.fetchval("SELECT max(position) FROM outbox")
            await add_event_only(conn_b, early)
            p2 = await conn_b.fetchval("SELECT max(position) FROM outbox")
            await tx_b.commit()
            assert p2 > p1
            await until(lambda: feed.seen_top >= p2)  # the feed saw p2 committed, p1 not
            seen_at = feed.rounds
            await until(lambda: feed.rounds >= seen_at + 2)  # and it looked again since
        finally:
            await tx_a.commit()
        await add_event_only(conn_a, last)

    got = await read_until(call, last)
    assert [(r.cursor, r.event.aggregate_id) for r in got[:2]] == [
        (str(p1), late),
        (str(p2), early),
    ]
    assert len(got) == 3
    call.cancel()


async def test_a_watcher_on_another_replica_sees_events_written_through_this_one(
    client: Client, database_url: str
) -> None:
    other = await start(config_for(database_url), run_billing_loop=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc

            remote = Client(pb_grpc.RefundRetryServiceStub(channel), other)
            call = open_stream(remote, live_only=True)
            feed = other.feed
            assert feed is not None
            await until(lambda: len(feed.subscriptions) == 1)
            marker = await pay(client, "cus_remote", "sub_remote")
            (got,) = await take(call, 1)
            assert got.event.aggregate_id == marker.payment_id
            assert got.event.type == "payment.recorded"
            assert got.event.payment_recorded.payment.customer_id == "cus_remote"
            call.cancel()
    finally:
        await other.stop()


async def test_a_slow_watcher_catches_up_from_the_table(database_url: str, db: Database) -> None:
    """A watcher that does not read while many events commit overflows its small buffer;
    it then reads what it missed from the table, and still gets every event once, in
    order."""
    feed = EventFeed(database_url, buffer=10)
    try:
        async with db.transaction() as conn:
            await record_refund_event(conn, "opening")
        request = watching.WatchRequest(EventFilter(), None, False, False)
        stream = watching.events(feed, db, request)
        first = await anext(stream)  # subscribed; now it stops reading
        (subscription,) = feed.subscriptions
        await write_events(db, 60, per_transaction=1)
        last = (await outbox_rows(db))[-1]["position"]
        while not subscription.overflowed:  # the feed handed out more than the buffer holds
            await asyncio.wait_for(feed.settled(), READ_SECONDS)
        assert subscription.queue.qsize() <= 10
        got = [first]
        while got[-1].position != last:
            got.append(await asyncio.wait_for(anext(stream), READ_SECONDS))
        await stream.aclose()  # type: ignore[attr-defined]
        assert [e.position for e in got] == [r["position"] for r in await outbox_rows(db)]
    finally:
        await feed.close()


async def test_streams_end_with_unavailable_when_the_service_stops(
    client: Client, service: Service, db: Database
) -> None:
    await write_events(db, 1)
    call = open_stream(client)
    await take(call, 1)
    await service.stop()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), READ_SECONDS)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_every_refund_failure_event_says_whether_and_when_it_is_retried(
    client: Client,
) -> None:
    await b.set_policy(client, auto={"USD": 100_000})
    outcomes = ["fail_then_succeed:1", "fail", "requires_action"]
    refunds = {}
    for outcome in outcomes:
        payment = await b.record_payment(client, metadata={"sandbox_refund_outcome": outcome})
        refund = await b.create_refund(client, payment.payment_id, amount=100)
        refunds[refund.refund_id] = outcome
    await b.run_job(client)
    failures = await caught_up(client, event_types=["refund.attempt_failed", "refund.failed"])
    failures += await caught_up(client, event_types=["refund.requires_action"])
    by_outcome = {refunds[r.event.aggregate_id]: r.event for r in failures}
    assert set(by_outcome) == set(outcomes)

    attempt = by_outcome["fail_then_succeed:1"].refund_attempt_failed
    assert attempt.will_retry is True
    assert attempt.HasField("next_retry_time")
    final = by_outcome["fail"].refund_failed
    assert final.will_retry is False
    assert final.error_code != ""
    waiting = by_outcome["requires_action"].refund_requires_action
    assert waiting.will_retry is False
    assert waiting.HasField("next_check_time")  # the gateway has it: it is asked again
