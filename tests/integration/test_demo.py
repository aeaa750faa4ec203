"""``refund-retry demo`` as a user runs it (the console script, in a subprocess) against a real
service: what it records can be read back through the RPCs, the dashboard's figures are
non-zero, a second run with the same seed adds nothing, and a service it cannot reach or a
token the service does not know end it with one line."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from refundretry.v1 import analytics_pb2, refund_pb2, retry_plan_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from service import analytics
from service.demo.population import marker_payment_id, population
from service.server import Service, start
from tests.certs import Authority
from tests.integration.cli import cli_env, run_cli
from tests.integration.conftest import TOKENS, Client
from tests.integration.conftest import test_config as make_config

SEED = 33  # 40 customers: recoveries, exhaustions, refunds of every kind (checked below)
CUSTOMERS = 40
DAYS = 30
# Minor units per major unit, written out here rather than read from the code under test.
MINOR_PER_MAJOR = {"USD": 100, "EUR": 100, "GBP": 100, "JPY": 1}
PLAN_PRICES = {  # major units a month, as the demo's price list says
    "USD": {"starter": 19, "pro": 49, "business": 199},
    "EUR": {"starter": 17, "pro": 45, "business": 179},
    "GBP": {"starter": 15, "pro": 39, "business": 159},
    "JPY": {"starter": 2200, "pro": 5500, "business": 22000},
}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS), "utf-8")
    return path


@pytest.fixture
async def rollups(service: Service) -> AsyncIterator[None]:
    """The analytics roll-up as ``serve`` runs it (the test service does not), every 0.5 s."""
    task = asyncio.create_task(
        analytics.rollup_loop(service.db, service.config.analytics_time_zones, 0.5)
    )
    yield
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def demo(service: Service, token_file: Path, *args: str) -> tuple[int, str, str]:
    assert service.http is not None
    return await run_cli(
        cli_env(),
        "demo",
        "--target",
        f"127.0.0.1:{service.port}",
        "--plaintext",
        "--token-file",
        str(token_file),
        "--http-url",
        f"http://127.0.0.1:{service.http.port}",
        "--metrics-wait",
        "30",
        *args,
        seconds=110,
    )


async def all_plans(client: Client) -> list[retry_plan_pb2.RetryPlan]:
    response = await client.call(
        "t-reader", "ListRetryPlans", pb.ListRetryPlansRequest(page_size=1000)
    )
    assert not response.next_page_token
    return list(response.plans)


async def all_refunds(client: Client) -> list[refund_pb2.RefundEvent]:
    response = await client.call("t-reader", "ListRefunds", pb.ListRefundsRequest(page_size=1000))
    assert not response.next_page_token
    return list(response.refunds)


async def audit_rows(client: Client) -> int:
    count, token = 0, ""
    while True:
        response = await client.call(
            "t-reader",
            "ListAuditEvents",
            pb.ListAuditEventsRequest(page_size=1000, page_token=token),
        )
        count += len(response.audit_events)
        token = response.next_page_token
        if not token:
            return count


async def state(client: Client) -> tuple[Any, ...]:
    """Everything a run could add or move: plans with their attempts, refunds, the audit."""
    plans = sorted(
        (p.plan_id, p.status, len(p.attempts), len(p.decisions)) for p in await all_plans(client)
    )
    refunds = sorted((r.refund_id, r.status, len(r.approvals)) for r in await all_refunds(client))
    return plans, refunds, await audit_rows(client)


async def test_demo_fills_the_service_and_a_second_run_adds_nothing(
    service: Service, client: Client, token_file: Path, rollups: None
) -> None:
    code, out, err = await demo(service, token_file, "--seed", str(SEED), "--customers", "40")
    assert code == 0, err
    assert "Traceback" not in err
    # Not a terminal: the progress is lines of counts, the last one complete.
    progress = err.strip().splitlines()
    assert all(line.startswith("refund-retry demo: ") for line in progress), err
    done, total = progress[-1].removeprefix("refund-retry demo: ").split(" calls")[0].split("/")
    assert progress[-1].endswith("; done")
    assert done == total
    assert int(total) > 100
    assert service.http is not None
    assert out.rstrip().endswith(
        f"dashboard             http://127.0.0.1:{service.http.port}"
        "/api/billing/refund-retry-workflows/dashboard#token=t-reader"
    ), out

    # Every payment of the population, at its amount in minor units; every failure a plan.
    marker = await client.call(
        "t-reader", "GetPayment", pb.GetPaymentRequest(payment_id=marker_payment_id(SEED))
    )
    anchor = datetime.fromisoformat(marker.payment.metadata["demo_anchor"])
    assert datetime.now(UTC) - timedelta(minutes=5) < anchor <= datetime.now(UTC)
    customers = population(SEED, CUSTOMERS, DAYS, anchor)
    plans = {p.payment_id: p for p in await all_plans(client)}
    currencies: Counter[str] = Counter()
    for customer in customers:
        for invoice in customer.invoices:
            if invoice.failure is not None:
                assert invoice.payment_id in plans
                assert plans[invoice.payment_id].amount.minor_units == invoice.total
                continue
            payment = (
                await client.call(
                    "t-reader", "GetPayment", pb.GetPaymentRequest(payment_id=invoice.payment_id)
                )
            ).payment
            assert payment.customer_id == customer.customer_id
            assert payment.captured_amount.currency_code == customer.currency
            assert payment.captured_amount.minor_units == invoice.total
            assert (
                anchor - timedelta(days=DAYS)
                <= payment.capture_time.ToDatetime(tzinfo=UTC)
                < anchor
            )
            plan_item = payment.items[0]
            price = PLAN_PRICES[customer.currency].get(plan_item.item_id.removesuffix("-plan"))
            if price is not None:  # a renewal: the plan at its price, in minor units
                assert plan_item.amount.minor_units == price * MINOR_PER_MAJOR[customer.currency]
            currencies[customer.currency] += 1
    assert set(currencies) == {"USD", "EUR", "GBP", "JPY"}
    invoices = sum(len(c.invoices) for c in customers)
    assert 0.08 <= len(plans) / invoices <= 0.3  # about 12 % of the payments fail

    # Retry plans: recovered by retries (RetryNow), exhausted, and a hard decline.
    statuses = Counter(p.status for p in plans.values())
    recovered_by_retry = [
        p
        for p in plans.values()
        if p.status == retry_plan_pb2.RETRY_PLAN_STATUS_RECOVERED
        and any(
            a.source == retry_plan_pb2.ATTEMPT_SOURCE_RETRY_NOW
            and a.outcome == retry_plan_pb2.ATTEMPT_OUTCOME_SUCCEEDED
            for a in p.attempts
        )
    ]
    assert len(recovered_by_retry) >= 3, statuses
    assert statuses[retry_plan_pb2.RETRY_PLAN_STATUS_EXHAUSTED] >= 2, statuses
    assert any(
        p.attempts[0].decline_class == retry_plan_pb2.DECLINE_CLASS_HARD
        and p.status == retry_plan_pb2.RETRY_PLAN_STATUS_EXHAUSTED
        for p in plans.values()
    )
    assert {p.gateway for p in plans.values()} == {"sandbox"}

    # Refunds: run by the billing job, waiting for approval, approved by another person,
    # rejected.
    refunds = await all_refunds(client)
    by_status = Counter(r.status for r in refunds)
    assert by_status[refund_pb2.REFUND_STATUS_SUCCEEDED] >= 1, by_status
    assert by_status[refund_pb2.REFUND_STATUS_PENDING_APPROVAL] >= 1, by_status
    assert by_status[refund_pb2.REFUND_STATUS_REJECTED] >= 1, by_status
    assert any(r.auto_approved and r.status == refund_pb2.REFUND_STATUS_SUCCEEDED for r in refunds)
    approved = [r for r in refunds if r.approvals]
    assert approved
    assert all(a.approver != r.requested_by for r in approved for a in r.approvals)
    totals = {i.payment_id: i.total for c in customers for i in c.invoices}
    assert any(r.amount.minor_units < totals[r.payment_id] for r in refunds)  # partial ones

    # What the dashboard shows: GetRecoveryMetrics over the demo's days.
    await analytics.fold(service.db, service.config.analytics_time_zones)
    request = analytics_pb2.GetRecoveryMetricsRequest(time_zone="UTC")
    request.start_time.FromDatetime(anchor - timedelta(days=DAYS + 1))
    request.end_time.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
    metrics = (await client.call("t-reader", "GetRecoveryMetrics", request)).total
    assert metrics.recovery_rate > 0
    assert metrics.plans_recovered == statuses[retry_plan_pb2.RETRY_PLAN_STATUS_RECOVERED]
    assert metrics.retry_successes >= len(recovered_by_retry)
    assert metrics.pending_approvals == by_status[refund_pb2.REFUND_STATUS_PENDING_APPROVAL]
    recovered_line = next(line for line in out.splitlines() if "recovered  " in line)
    assert recovered_line.split()[1] == str(statuses[retry_plan_pb2.RETRY_PLAN_STATUS_RECOVERED])

    # The same seed again: the same requests, answered from the first run; nothing new.
    before = await state(client)
    code, again, err = await demo(service, token_file, "--seed", str(SEED), "--customers", "40")
    assert code == 0, err
    assert f"seed {SEED} was first run at" in again
    assert await state(client) == before

    # The same seed with other days would change the requests: refused before any write.
    code, _, err = await demo(service, token_file, "--seed", str(SEED), "--days", "7")
    assert code == 2
    assert err.strip().splitlines() == [
        f"refund-retry demo: seed {SEED} was run with --days {DAYS}: run it with the same "
        "--days, or use another --seed"
    ]
    assert await state(client) == before


async def test_a_service_that_is_not_there_is_one_line(token_file: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await run_cli(
        cli_env(),
        "demo",
        "--target",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--connect-timeout",
        "1",
    )
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"refund-retry demo: cannot reach the service at 127.0.0.1:{port} over plaintext within "
        "1 s: is it running (scripts/serve)? (--tls if it is served over TLS)"
    ]


async def test_a_token_the_service_does_not_know_is_one_line_and_writes_nothing(
    service: Service, client: Client, tmp_path: Path
) -> None:
    tokens = dict(TOKENS)
    tokens["t-bob-old"] = tokens.pop("t-bob")  # a token the service does not have
    path = tmp_path / "old-tokens.json"
    path.write_text(json.dumps(tokens), "utf-8")
    code, out, err = await demo(service, path, "--customers", "5")
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"refund-retry demo: the service at 127.0.0.1:{service.port} does not accept the token "
        f"of bob@example.com from {path} (unknown bearer token): use the server's tokens "
        "(--token-file)"
    ]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.call(
            "t-reader", "GetPayment", pb.GetPaymentRequest(payment_id=marker_payment_id(1))
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert await all_plans(client) == []


async def test_over_tls_trusting_the_services_ca(
    database_url: str, token_file: Path, tmp_path: Path
) -> None:
    ca = Authority("refund-retry demo test CA")
    cert, key = ca.issue("refund-retry", server=True).write(tmp_path, "server")
    ca_file = ca.write(tmp_path, "ca")
    service = await start(
        make_config(
            database_url,
            REFUND_RETRY_PLAINTEXT="false",
            REFUND_RETRY_TLS_CERT_FILE=str(cert),
            REFUND_RETRY_TLS_KEY_FILE=str(key),
        ),
        run_billing_loop=False,
    )
    try:
        target = f"127.0.0.1:{service.port}"
        args = ("demo", "--target", target, "--token-file", str(token_file), "--customers", "3")
        code, out, err = await run_cli(
            cli_env(), *args, "--tls", "--ca-file", str(ca_file), "--metrics-wait", "0"
        )
        assert code == 0, err
        assert "payments recorded     " in out
        # Plaintext (the default for a loopback target) to a TLS port: one line, no write.
        code, out, err = await run_cli(cli_env(), *args, "--connect-timeout", "1")
        assert code == 1
        assert err.strip().splitlines() == [
            f"refund-retry demo: cannot reach the service at {target} over plaintext within "
            "1 s: is it running (scripts/serve)? (--tls if it is served over TLS)"
        ]
    finally:
        await service.stop()
