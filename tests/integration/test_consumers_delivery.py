"""Delivery guarantees of the consumers: bad messages are dead-lettered with their reason and
the consumer keeps going; a redelivered message has no second effect; transient failures are
retried, then dead-lettered; the database going away mid-message and the broker restarting
lose nothing and double nothing. Real RabbitMQ (own vhost) and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from consumers.codec import JSON, PROTOBUF, encode
from refundretry.v1 import billing_events_pb2 as ev
from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from refundretry.v1 import retry_plan_pb2
from service.server import Service, start
from tests.conftest import ADMIN_URL
from tests.integration import builders as b
from tests.integration import conftest
from tests.integration import event_builders as e
from tests.integration.conftest import Client
from tests.integration.conftest_rabbitmq import (  # noqa: F401
    Broker,
    amqp_url,
    broker,
    broker_restart,
    rabbitmq_vhost,
)
from tests.integration.event_builders import live, plans_of  # noqa: F401  (fixture)

PS = retry_plan_pb2.RetryPlanStatus


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    # One message at a time: a message published after another is handled after it.
    return broker.settings(CONSUMER_PREFETCH="1", CONSUMER_DELIVERY_LIMIT="4")


def header(message: Any, name: str) -> str:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


# -- bad input ----------------------------------------------------------------------------------


def _json(message: Any, **changes: Any) -> bytes:
    body = json.loads(json_format.MessageToJson(message))
    body.update(changes)
    return json.dumps(body).encode()


async def test_bad_messages_are_dead_lettered_with_a_reason_and_the_consumer_goes_on(
    live: Service, broker: Broker, client: Client
) -> None:
    good = e.payment_failed()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"body": b"\xff\xfe not protobuf"}, "body is not a protobuf refundretry.v1.PaymentFailed"),
        (
            {"body": b'{"event_id": "evt_1", "payment_id": ', "content_type": JSON},
            "body is not the JSON of a refundretry.v1.PaymentFailed",
        ),
        (
            {"body": _json(e.payment_failed(), surprise="field"), "content_type": JSON},
            'no field named "surprise"',
        ),
        (
            {"body": encode(e.payment_failed()), "type": "payment.succeeded"},
            "event type 'payment.succeeded' on the queue of 'payment.failed' events",
        ),
        ({"body": encode(e.payment_failed()), "type": None}, "no event type"),
        (
            {"body": encode(e.payment_failed()), "content_type": "text/plain"},
            "content_type 'text/plain' is neither",
        ),
        (
            {"body": encode(e.payment_failed(eid="evt 1; DROP TABLE"))},
            "event_id: must be 1-128 letters",
        ),
        (
            {
                "body": _json(e.payment_failed(), amount={"currency_code": "XYZ"}),
                "content_type": JSON,
            },
            "amount.currency_code: 'XYZ' is not an ISO 4217 currency",
        ),
        (
            {"body": encode(ev.PaymentFailed(event_id=e.event_id(), payment_id="inv_1"))},
            "failure_time: is required",
        ),
    ]
    for case, _ in bad:
        options: dict[str, Any] = {"content_type": PROTOBUF, "type": "payment.failed", **case}
        await broker.publish_raw(options.pop("body"), routing_key="payment.failed", **options)
    await broker.publish("payment.failed", good)  # after all of them

    row = await e.handled(live, "payment.failed", good.event_id)
    assert row["outcome"] == "APPLIED"
    letters = await broker.dead_letters(len(bad))
    for message, (_, reason) in zip(letters, bad, strict=True):
        assert reason in header(message, "x-death-reason")
        assert header(message, "x-death-consumer") == "payment.failed"
        assert header(message, "x-original-routing-key") == "payment.failed"
        assert header(message, "x-original-exchange") == broker.billing_exchange
    # The body and properties are kept, so the message can be replayed once fixed.
    assert letters[0].body == b"\xff\xfe not protobuf"
    assert letters[0].content_type == PROTOBUF
    # Nothing of the bad messages reached the database.
    assert await e.count(live.db, "SELECT count(*) FROM inbox") == 1
    assert await e.count(live.db, "SELECT count(*) FROM retry_plan") == 1
    assert await broker.queue_depth(broker.queue("payment.failed")) == 0


async def test_an_event_refused_by_the_application_is_dead_lettered_naming_the_field(
    live: Service, broker: Broker
) -> None:
    event = e.payment_succeeded()
    event.payment.captured_amount.minor_units += 1  # not the items' sum
    later = e.payment_succeeded()
    await broker.publish("payment.succeeded", event, content_type=JSON)
    await broker.publish("payment.succeeded", later)
    await e.handled(live, "payment.succeeded", later.event_id)
    [letter] = await broker.dead_letters(1)
    assert header(letter, "x-death-reason").startswith("payment.captured_amount: ")
    assert header(letter, "x-event-id") == event.event_id
    assert header(letter, "x-death-consumer") == "payment.succeeded"
    assert await e.inbox_row(live.db, "payment.succeeded", event.event_id) is None


async def test_an_amqp_message_id_stands_in_for_a_missing_event_id(
    live: Service, broker: Broker, client: Client
) -> None:
    event = e.payment_failed(eid="")
    await broker.publish_raw(
        encode(event), routing_key="payment.failed", type="payment.failed", message_id="msg-77"
    )
    row = await e.handled(live, "payment.failed", "msg-77")
    assert row["outcome"] == "APPLIED"
    assert len(await plans_of(client, event.payment_id)) == 1


async def test_the_type_may_come_as_a_header(live: Service, broker: Broker) -> None:
    event = e.payment_failed()
    await broker.publish_raw(
        encode(event, JSON),
        routing_key="payment.failed",
        content_type="application/json; charset=utf-8",
        type=None,
        headers={"type": "payment.failed"},
    )
    assert (await e.handled(live, "payment.failed", event.event_id))["outcome"] == "APPLIED"


# -- redelivery ---------------------------------------------------------------------------------


async def test_the_same_message_delivered_twice_has_one_effect(
    live: Service, broker: Broker, client: Client
) -> None:
    """The second delivery is a no-op although the first effect has moved on since (the plan
    was canceled): the inbox, not the state, decides."""
    event = e.payment_failed()
    await broker.publish("payment.failed", event)
    await e.handled(live, "payment.failed", event.event_id)
    [plan] = await plans_of(client, event.payment_id)
    await client.call(
        "t-ops",
        "CancelRetryPlan",
        pb.CancelRetryPlanRequest(request_id=b.request_id(), plan_id=plan.plan_id, reason="paid"),
    )
    audit_rows = await e.count(live.db, "SELECT count(*) FROM audit_event")

    await broker.publish("payment.failed", event, content_type=JSON)  # the same event again
    marker = e.payment_failed()  # handled after it (one message at a time)
    await broker.publish("payment.failed", marker)
    await e.handled(live, "payment.failed", marker.event_id)

    plans = await plans_of(client, event.payment_id)
    assert [(p.plan_id, p.status, p.attempt_count) for p in plans] == [
        (plan.plan_id, PS.RETRY_PLAN_STATUS_CANCELED, 1)
    ]
    [marker_plan] = await plans_of(client, marker.payment_id)
    marker_rows = await e.count(
        live.db, "SELECT count(*) FROM audit_event WHERE entity_id = $1", marker_plan.plan_id
    )
    assert await e.count(live.db, "SELECT count(*) FROM audit_event") == audit_rows + marker_rows


# -- transient failures -------------------------------------------------------------------------


async def test_a_message_that_cannot_succeed_yet_is_retried_until_it_can(
    live: Service, broker: Broker, client: Client
) -> None:
    """A cancellation that names a payment whose payment.succeeded is still on its way (the
    queues are consumed independently) waits for it."""
    payment = e.payment_succeeded(
        subscription_id="sub_race",
        items=[
            e.period_item(
                "plan",
                9000,
                900,
                datetime.now(UTC) - timedelta(days=1),
                datetime.now(UTC) + timedelta(days=29),
            )
        ],
    )
    cancel = e.subscription_cancelled(
        "sub_race",
        datetime.now(UTC),
        ev.CANCELLATION_REFUND_POLICY_FULL,
        payment_id=payment.payment.payment_id,
    )
    await broker.publish("subscription.cancelled", cancel)
    await broker.publish("payment.succeeded", payment)
    row = await e.handled(live, "subscription.cancelled", cancel.event_id)
    assert row["outcome"] == "APPLIED"
    refunds = await client.call(
        "t-reader", "ListRefunds", pb.ListRefundsRequest(payment_id=payment.payment.payment_id)
    )
    assert [r.amount.minor_units for r in refunds.refunds] == [9900]


async def test_a_transient_failure_is_dead_lettered_at_the_delivery_limit(
    live: Service, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    cancel = e.subscription_cancelled("sub_x", datetime.now(UTC), payment_id="pay_never_recorded")
    await broker.publish("subscription.cancelled", cancel)
    [letter] = await broker.dead_letters(1)
    assert header(letter, "x-death-reason") == (
        "still failing after 4 deliveries: RetryLater: payment 'pay_never_recorded' does not exist"
    )
    assert header(letter, "x-deliveries") == "4"
    retries = [r for r in caplog.records if getattr(r, "action", "") == "consumer.retry"]
    assert [getattr(r, "delivery", 0) for r in retries] == [1, 2, 3]
    assert all(getattr(r, "event_id", "") == cancel.event_id for r in retries)
    assert await e.inbox_row(live.db, "subscription.cancelled", cancel.event_id) is None


async def _backends_waiting_on_a_lock(admin: asyncpg.Connection[Any], database: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        database,
    )
    return [r["pid"] for r in rows]


async def test_the_database_lost_mid_message_is_retried_then_succeeds(
    live: Service,
    broker: Broker,
    client: Client,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service's connections are terminated while it handles a message (it is waiting for
    a lock the test holds): the transaction is lost, the message is retried after a backoff and
    then applied exactly once."""
    database = database_url.rsplit("/", 1)[1]
    blocker = await asyncpg.connect(database_url)
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE retry_plan IN EXCLUSIVE MODE")
        event = e.payment_failed()
        await broker.publish("payment.failed", event)
        deadline = time.monotonic() + 30
        while not (waiting := await _backends_waiting_on_a_lock(admin, database)):
            assert time.monotonic() < deadline, "the consumer never reached the lock"
            await asyncio.sleep(0.02)
        others = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
            database,
            blocker.get_server_pid(),
        )
        assert set(waiting) <= {r["pid"] for r in others}
        terminated = [r["pid"] for r in others]
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", terminated
        )
        await lock.rollback()
        # The service's idle pool connections were terminated too. Until their sockets close and
        # the client has seen it, the pool may hand one out and it fails on first use
        # (asyncpg: "another operation is in progress"). That was this test polling too early,
        # not the consumer: wait until the backends have exited, then let the loop see it.
        while await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", terminated
        ):
            assert time.monotonic() < deadline, "the terminated backends never exited"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    finally:
        await blocker.close()
        await admin.close()

    row = await e.handled(live, "payment.failed", event.event_id)
    assert row["outcome"] == "APPLIED"
    [plan] = await plans_of(client, event.payment_id)
    assert plan.attempt_count == 1
    assert await e.count(live.db, "SELECT count(*) FROM retry_plan") == 1
    retried = [r for r in caplog.records if getattr(r, "action", "") == "consumer.retry"]
    assert [(getattr(r, "event_id", ""), getattr(r, "delivery", 0)) for r in retried] == [
        (event.event_id, 1)
    ]


# -- the broker restarting ----------------------------------------------------------------------


async def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(
    live: Service,
    broker: Broker,
    client: Client,
    broker_restart: Any,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker restarts while a message is being handled (held on a lock the test owns)
    and others wait in the queue: the one in hand commits after its channel is gone, so its
    ack is lost and the broker delivers it again (a duplicate for the inbox); the queued ones
    survive the restart; the consumer reconnects by itself and takes new ones too."""
    caplog.set_level(logging.INFO, logger="consumers")
    database = database_url.rsplit("/", 1)[1]
    before = [e.payment_failed() for _ in range(30)]
    blocker = await asyncpg.connect(database_url)
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE retry_plan IN EXCLUSIVE MODE")
        channel = await broker.channel()
        for event in before:
            await broker.publish("payment.failed", event, channel=channel)
        await broker.close()
        deadline = time.monotonic() + 30
        while not await _backends_waiting_on_a_lock(admin, database):
            assert time.monotonic() < deadline, "the consumer never reached the lock"
            await asyncio.sleep(0.02)
        await broker_restart()
        await lock.rollback()
    finally:
        await blocker.close()
        await admin.close()

    after = [e.payment_failed() for _ in range(10)]
    channel = await broker.channel()
    for event in after:
        await broker.publish("payment.failed", event, content_type=JSON, channel=channel)
    for event in before + after:
        row = await e.handled(live, "payment.failed", event.event_id, seconds=60)
        assert row["outcome"] == "APPLIED"
    assert await e.count(live.db, "SELECT count(*) FROM retry_plan") == 40
    assert await e.count(live.db, "SELECT count(*) FROM payment_attempt") == 40
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert {"consumer.disconnected", "consumer.reconnected"} <= set(actions)
    duplicates = [r for r in caplog.records if getattr(r, "action", "") == "consumer.duplicate"]
    assert [getattr(r, "event_id", "") for r in duplicates] == [before[0].event_id]


async def test_a_broker_down_at_start_up_holds_up_nothing(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service serves gRPC while the consumers keep trying to connect, and stops
    promptly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    settings = {
        "REFUND_RETRY_CONSUMERS": "true",
        "REFUND_RETRY_RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{dead_port}/",
    }
    service = await start(conftest.test_config(database_url, **settings), run_billing_loop=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.RefundRetryServiceStub(channel)
            policy = await stub.GetRefundPolicy(
                pb.GetRefundPolicyRequest(), metadata=(("authorization", "Bearer t-reader"),)
            )
        assert policy.policy.refund_window.seconds > 0
        deadline = time.monotonic() + 30
        while not any(getattr(r, "action", "") == "consumer.setup_failed" for r in caplog.records):
            assert time.monotonic() < deadline, "the consumers never tried to connect"
            await asyncio.sleep(0.05)
        assert service.consumers is not None
        assert not service.consumers.ready.is_set()
    finally:
        await service.stop()


async def test_a_virtual_host_the_broker_refuses_is_named_in_the_logs(
    database_url: str, rabbitmq_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL naming a virtual host the broker does not have (a typo, a vhost not created yet)
    says so, for the consumers and for the relay, instead of a protocol frame's repr."""
    missing = f"{rabbitmq_vhost}-missing"  # this run's prefix; never created
    caplog.set_level(logging.WARNING)
    settings = {
        "REFUND_RETRY_CONSUMERS": "true",
        "REFUND_RETRY_RELAY": "true",
        "REFUND_RETRY_RABBITMQ_URL": amqp_url(missing),
    }
    service = await start(conftest.test_config(database_url, **settings), run_billing_loop=False)
    try:
        deadline = time.monotonic() + 30
        wanted = {"consumer.setup_failed", "relay.broker_down"}
        while not wanted <= {getattr(r, "action", "") for r in caplog.records}:
            assert time.monotonic() < deadline, "the consumers or the relay never said why"
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    said = [r.getMessage() for r in caplog.records if getattr(r, "action", "") in wanted]
    for action in wanted:
        line = next(r.getMessage() for r in caplog.records if getattr(r, "action", "") == action)
        assert f"RabbitMQ refused the virtual host '{missing}'" in line, said
        assert "user 'guest'" in line
        assert "object at 0x" not in line
