"""A refund at a gateway that cannot be asked about it (Adyen) waits for its notification
without the billing job syncing it on a schedule; with no notification in
``REFUND_NOTIFICATION_TIMEOUT_SECONDS`` it is REQUIRES_ACTION (``notification_overdue``) for an
operator, and a notification that comes later still settles it. A sync that learns nothing new,
at any gateway, writes no event and no audit row.

Real PostgreSQL, a real gRPC server and its webhook endpoint; the service's ``adyen`` and
``stripe`` gateways point at the local stubs (``tests/adyen_server.py``,
``tests/stripe_server.py``) through the real SDKs. Later times are reached as an operator would:
``RunBillingJob`` with a later ``range_end`` runs the work due by then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from refundretry.v1 import refund_pb2
from repository.database import Database
from service.auth import SYSTEM
from service.config import Config
from service.errors import ConfigError
from service.gateways.base import reads_refunds
from service.webhooks import with_reported_outcomes
from tests.adyen_server import AdyenStubServer
from tests.integration import builders as b
from tests.integration.conftest import Client
from tests.integration.conftest_adyen import adyen_server, adyen_settings  # noqa: F401
from tests.integration.webhook_builders import audit_actions, outbox_types, processing_adyen_refund
from tests.stripe_server import StripeStubServer

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus
TIMEOUT = timedelta(minutes=10)


@pytest.fixture
def config_overrides(
    adyen_server: AdyenStubServer, stripe_server: StripeStubServer
) -> dict[str, str]:
    return {
        **adyen_settings(adyen_server),
        "REFUND_RETRY_ADYEN_WEBHOOK_HMAC_KEYS": adyen_server.hmac_key,
        "REFUND_RETRY_STRIPE_API_KEY": stripe_server.api_key,
        "REFUND_RETRY_STRIPE_API_BASE": stripe_server.base_url,
        "REFUND_RETRY_REFUND_NOTIFICATION_TIMEOUT_SECONDS": str(int(TIMEOUT.total_seconds())),
    }


def webhook_url(client: Client) -> str:
    assert client.service.http is not None
    return f"http://127.0.0.1:{client.service.http.port}/webhooks/adyen"


async def run_at(client: Client, later: timedelta) -> Any:
    """A billing job run that takes the work due ``later`` from now."""
    return await b.run_job(client, end=datetime.now(UTC) + later)


async def trail(db: Database, refund_id: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The refund's outbox events and audit rows, in order."""
    return await outbox_types(db, refund_id), await audit_actions(db, refund_id)


async def test_a_pending_adyen_refund_is_read_once_then_waits_without_syncs_or_events(
    client: Client, db: Database, adyen_server: AdyenStubServer
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    before = await trail(db, refund.refund_id)

    # One look soon after Adyen's answer was stored (for a notification that outran it) ...
    first_look = await run_at(client, timedelta(minutes=2))
    # ... then nothing is due until the deadline, however often the job runs.
    quiet = [await run_at(client, timedelta(minutes=m)) for m in (3, 5, 9)]

    assert first_look.refunds_claimed == first_look.refunds_pending_at_gateway == 1
    assert [run.refunds_claimed for run in quiet] == [0, 0, 0]
    assert await trail(db, refund.refund_id) == before  # no refund.processing per sync
    still = await b.get_refund(client, refund.refund_id)
    assert still.status == RS.REFUND_STATUS_PROCESSING
    assert still.details[0].gateway_refund_id == psp
    assert still.details[0].attempt_count == 1
    assert len(adyen_server.requests) == 1  # sent once, never asked about


@pytest.mark.parametrize(("success", "settled"), [(True, "SUCCEEDED"), (False, "FAILED")])
async def test_an_adyen_refund_without_notification_requires_action_until_a_late_one_settles_it(
    client: Client, db: Database, adyen_server: AdyenStubServer, success: bool, settled: str
) -> None:
    refund, psp = await processing_adyen_refund(client, adyen_server)
    await run_at(client, timedelta(minutes=2))  # the one early look: nothing stored

    overdue = await run_at(client, TIMEOUT + timedelta(minutes=1))

    assert overdue.refunds_requires_action == 1
    flagged = await b.get_refund(client, refund.refund_id)
    assert flagged.status == RS.REFUND_STATUS_REQUIRES_ACTION
    (detail,) = flagged.details
    assert detail.status == DS.REFUND_DETAIL_STATUS_REQUIRES_ACTION
    assert detail.gateway_refund_id == psp
    assert detail.last_error_code == "notification_overdue"
    assert psp in detail.last_error_message
    assert "adyen" in detail.last_error_message
    assert "webhooks" in detail.last_error_message
    outbox, audit = await trail(db, refund.refund_id)
    assert outbox[-1] == "refund.requires_action"
    assert audit[-1] == (SYSTEM.name, "refund.requires_action")
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.refundable_amount.minor_units == 3000  # still reserved

    # Checked no more: a later run neither takes it nor moves it back to PROCESSING.
    assert (await run_at(client, timedelta(days=3))).refunds_claimed == 0
    assert await trail(db, refund.refund_id) == (outbox, audit)
    unchanged = await b.get_refund(client, refund.refund_id)
    assert unchanged.status == RS.REFUND_STATUS_REQUIRES_ACTION

    # Adyen's notification arrives after all: it settles the refund.
    notification = adyen_server.settle_refund(psp, success=success, reason="Refused by test")
    assert await adyen_server.deliver(webhook_url(client), notification) == (200, "[accepted]")

    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.Value(f"REFUND_STATUS_{settled}")
    assert done.details[0].status == DS.Value(f"REFUND_DETAIL_STATUS_{settled}")
    outbox, audit = await trail(db, refund.refund_id)
    assert outbox[-1] == f"refund.{settled.lower()}"
    assert audit[-1] == ("webhook:adyen", f"refund.{settled.lower()}")
    payment = await b.get_payment(client, refund.payment_id)
    assert payment.refundable_amount.minor_units == (3000 if success else 5000)


async def test_a_stripe_sync_that_learns_nothing_writes_no_event(
    client: Client, db: Database, stripe_server: StripeStubServer
) -> None:
    recorded = await b.record_payment(client, gateway="stripe", items=[("plan", 5000, 0)])
    stripe_server.add_payment(
        recorded.gateway_transaction_id, amount=5000, behaviour="pending_then_succeed"
    )
    await b.set_policy(client, auto={"USD": 100000})
    refund = await b.create_refund(client, recorded.payment_id, amount=2000)
    assert (await b.run_job(client)).refunds_pending_at_gateway == 1
    before = await trail(db, refund.refund_id)
    gateway_id = (await b.get_refund(client, refund.refund_id)).details[0].gateway_refund_id

    # Stripe can be asked: the refund is synced every PENDING_SYNC_SECONDS, quietly.
    synced = [await run_at(client, timedelta(minutes=m)) for m in (2, 4)]

    assert [run.refunds_pending_at_gateway for run in synced] == [1, 1]
    reads = [r for r in stripe_server.requests if r.method == "GET" and gateway_id in r.path]
    assert len(reads) == 2
    assert await trail(db, refund.refund_id) == before
    assert (await b.get_refund(client, refund.refund_id)).status == RS.REFUND_STATUS_PROCESSING

    # A sync that learns something records it as before.
    stripe_server.settle(gateway_id)
    assert (await run_at(client, timedelta(minutes=6))).refunds_succeeded == 1
    outbox, audit = await trail(db, refund.refund_id)
    assert outbox == [*before[0], "refund.succeeded"]
    assert audit == [*before[1], (SYSTEM.name, "refund.succeeded")]


async def test_the_gateways_say_whether_they_read_refunds_through_their_wrappers(
    client: Client,
) -> None:
    service = client.service
    wrapped = with_reported_outcomes(service.gateways, service.db)

    assert {name: reads_refunds(g) for name, g in service.gateways.items()} == {
        "sandbox": True,
        "stripe": True,
        "adyen": False,
    }
    assert {name: reads_refunds(g) for name, g in wrapped.items()} == {
        "sandbox": True,
        "stripe": True,
        "adyen": False,
    }


@pytest.mark.parametrize("value", ["59", "2592001", "two days"])
def test_a_bad_notification_timeout_stops_start_up_naming_it(value: str) -> None:
    name = "REFUND_RETRY_REFUND_NOTIFICATION_TIMEOUT_SECONDS"
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})
