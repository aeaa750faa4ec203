"""The dashboard page on the HTTP port, opened in headless Chromium (Debian's package, driven by
Playwright): its headline numbers, charts and table of refunds awaiting approval are what the
GetRecoveryMetrics and ListRefunds RPCs answer; it refreshes itself; it loads nothing from
outside the service; without a token it says one is needed. It saves the screenshot the README
shows (docs/dashboard.png). And the JSON list of refunds it reads, and the page's assets, over
plain HTTP."""

from __future__ import annotations

import importlib.resources
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from google.protobuf import json_format
from multidict import CIMultiDict
from playwright.async_api import Page

from refundretry.v1 import analytics_pb2, refund_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Connection
from service import analytics
from service.domain.money import currency_exponent
from service.server import Service
from tests.integration import builders as b
from tests.integration import retry_builders as rb
from tests.integration.browser import Traffic, chromium, page_on
from tests.integration.conftest import TOKENS, Client

PREFIX = "/api/billing/refund-retry-workflows"
DASHBOARD = f"{PREFIX}/dashboard"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
ZONE = "Europe/Berlin"  # the browser's; the service rolls it up besides UTC
CHARTS = (
    "chart-recovery",
    "chart-recovered",
    "chart-gateway",
    "chart-decline",
    "chart-refunds",
    "chart-refund-amounts",
)


@pytest.fixture
def config_overrides() -> dict[str, str]:
    writer = {"principal": "writer", "roles": ["refund:create"]}
    return {
        "REFUND_RETRY_TOKENS": json.dumps({**TOKENS, "t-writer": writer}),
        "REFUND_RETRY_ANALYTICS_TIME_ZONES": f"UTC,{ZONE}",
    }


def origin(service: Service) -> str:
    assert service.http is not None
    return f"http://127.0.0.1:{service.http.port}"


# -- realistic data ------------------------------------------------------------------------

GATEWAYS = {"stripe": 5, "adyen": 3, "sandbox": 2}  # weights
GATEWAY_SUCCESS = {"stripe": 1.0, "adyen": 0.85, "sandbox": 0.7}
CURRENCIES = {"USD": (6, 900, 9900), "EUR": (3, 900, 7900), "JPY": (1, 1000, 12000)}
# class: (weight, chance a retry succeeds, retries at most, decline codes)
CLASSES = {
    "SOFT": (6, 0.4, 4, ("insufficient_funds", "processing_error", "try_again_later")),
    "CUSTOMER_ACTION": (2, 0.25, 2, ("authentication_required",)),
    "HARD": (2, 0.08, 1, ("stolen_card", "pickup_card")),
}
REFUND_STATUSES = {"SUCCEEDED": 70, "REJECTED": 8, "CANCELED": 6, "FAILED": 4}
DAYS = 28


def pick(rng: random.Random, weights: dict[str, Any]) -> str:
    names = list(weights)
    values = [w if isinstance(w, int) else w[0] for w in weights.values()]
    return rng.choices(names, values)[0]


class FailedPayment:
    """A failed payment of random gateway, currency, amount and decline class, and its
    attempts: the failure, then the retries :meth:`attempt` adds."""

    def __init__(self, rng: random.Random, first: datetime) -> None:
        self.rng, self.first = rng, first
        self.plan_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        self.gateway = pick(rng, GATEWAYS)
        self.currency = pick(rng, CURRENCIES)
        self.decline_class = pick(rng, CLASSES)
        _, low, high = CURRENCIES[self.currency]
        self.amount = rng.randrange(low, high, 100)
        _, chance, self.retries, self.codes = CLASSES[self.decline_class]
        self.chance = chance * GATEWAY_SUCCESS[self.gateway]
        self.card = f"pm_{rng.getrandbits(32):08x}"
        self.attempts: list[tuple[object, ...]] = []
        self._add("FAILURE", first, "DECLINED", retried="")

    def attempt(self, source: str, at: datetime, succeeded: bool) -> None:
        self._add(source, at, "SUCCEEDED" if succeeded else "DECLINED", self.decline_class)

    def _add(self, source: str, at: datetime, outcome: str, retried: str) -> None:
        declined = outcome == "DECLINED"
        self.attempts.append(
            (
                uuid.UUID(int=self.rng.getrandbits(128), version=4),
                self.plan_id,
                len(self.attempts) + 1,
                source,
                at,
                self.card,
                outcome,
                self.rng.choice(self.codes) if declined else "",
                self.decline_class if declined else "",
                retried,
                at.hour,
                at.day,
                (at - self.first).days,
            )
        )


async def history(conn: Connection, rng: random.Random, now: datetime) -> None:
    """Three weeks of failed payments, their retries and refunds, written into the tables the
    way the service would have left them: recovered after a few retries (soft declines more
    often, hard ones rarely), exhausted, still retrying or canceled; refunds mostly executed,
    some rejected or canceled."""
    plans: list[tuple[object, ...]] = []
    attempts: list[tuple[object, ...]] = []
    for number in range(150):
        plan = FailedPayment(rng, now - timedelta(seconds=rng.uniform(3600, DAYS * 86_400)))
        status, at, next_at = "EXHAUSTED", plan.first, None
        if rng.random() < 0.04:
            status, at = "CANCELED", plan.first + timedelta(hours=rng.uniform(1, 30))
        else:
            for _ in range(plan.retries):
                at += timedelta(hours=rng.uniform(18, 60))
                if at > now:
                    status, next_at = "ACTIVE", at
                    break
                succeeded = rng.random() < plan.chance
                plan.attempt("RETRY_NOW" if rng.random() < 0.1 else "SCHEDULED", at, succeeded)
                if succeeded:
                    status = "RECOVERED"
                    break
        plans.append(
            (
                plan.plan_id,
                f"inv_{number:04d}",
                f"cus_{rng.randrange(1000, 1400)}",
                plan.currency,
                plan.amount,
                plan.gateway,
                status,
                plan.first,
                min(at, now),
                next_at,
                len(plan.attempts) - 1,
            )
        )
        attempts.extend(plan.attempts)
    await conn.executemany(
        """INSERT INTO retry_plan (plan_id, payment_id, customer_id, currency, amount, gateway,
                                   schedule_code, time_zone, status, first_failed_at, updated_at,
                                   next_attempt_at, attempt_count)
           VALUES ($1, $2, $3, $4, $5, $6, 'payment-fixed', 'UTC', $7, $8, $9, $10, $11)""",
        plans,
    )
    await conn.executemany(
        """INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source, attempted_at,
                                        payment_method_id, network, outcome, decline_code,
                                        decline_class, retry_of_class, idempotency_key,
                                        local_hour, day_of_month, days_since_failure)
           VALUES ($1, $2, $3, $4, $5, $6, 'VISA', $7, $8, $9, $10, $1::uuid::text,
                   $11, $12, $13)""",
        attempts,
    )
    payments, refunds, approvals = [], [], []
    for number in range(90):
        payment_id = f"pay_h{number:04d}"
        currency = pick(rng, CURRENCIES)
        _, low, high = CURRENCIES[currency]
        captured = rng.randrange(low * 2, high * 3, 100)
        created = now - timedelta(seconds=rng.uniform(2 * 3600, DAYS * 86_400))
        customer = f"cus_{rng.randrange(1000, 1400)}"
        payments.append(
            (payment_id, pick(rng, GATEWAYS), customer, currency, captured, created - timedelta(7))
        )
        refund_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        amount = captured if rng.random() < 0.5 else rng.randrange(100, captured, 100)
        status = pick(rng, REFUND_STATUSES)
        required = 0 if amount <= 5000 else 1
        refunds.append(
            (
                refund_id,
                payment_id,
                customer,
                currency,
                amount,
                status,
                required,
                not required,
                created,
            )
        )
        if required and status not in ("REJECTED", "CANCELED"):
            approvals.append((refund_id, created + timedelta(minutes=rng.uniform(10, 1800))))
    await conn.executemany(
        """INSERT INTO payment (payment_id, gateway, gateway_transaction_id, customer_id,
                                currency, captured_amount, captured_at)
           VALUES ($1, $2, $1, $3, $4, $5, $6)""",
        payments,
    )
    await conn.executemany(
        """INSERT INTO refund_event (refund_id, payment_id, customer_id, currency, amount, status,
                                     requested_by, required_approvals, auto_approved,
                                     created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, 'billing-service', $7, $8, $9, $9)""",
        refunds,
    )
    await conn.executemany(
        """INSERT INTO refund_approval (refund_id, approver, approved_at)
           VALUES ($1, 'bob@example.com', $2)""",
        approvals,
    )


async def pending_refund(
    client: Client, currency: str, amount: int, gateway: str, customer: str, token: str
) -> Any:
    payment = await b.record_payment(
        client,
        items=[("pro-plan", amount * 2, amount // 5)],
        currency=currency,
        gateway=gateway,
        customer_id=customer,
    )
    return await b.create_refund(
        client, payment.payment_id, amount=amount, currency=currency, token=token
    )


async def realistic(client: Client, service: Service) -> list[str]:
    """Today's work through the RPCs (refunds waiting for one or two approvers, a small one
    auto-approved and executed, failed payments retried by the billing job) on top of three
    weeks of history; the roll-ups folded. Returns the pending refunds' ids."""
    await b.set_policy(
        client,
        auto={"USD": 5000, "EUR": 5000, "JPY": 5000},
        tiers=[("USD", 50_000, 2), ("EUR", 50_000, 2)],
    )
    pending = [
        await pending_refund(client, "USD", 12_900, "stripe", "cus_1042", "t-alice"),
        await pending_refund(client, "EUR", 64_000, "adyen", "cus_1187", "t-billing"),
        await pending_refund(client, "JPY", 18_000, "stripe", "cus_1311", "t-billing"),
        await pending_refund(client, "USD", 7_450, "sandbox", "cus_1203", "t-alice"),
    ]
    await b.approve(client, pending[1].refund_id, token="t-bob")  # 1 of 2
    small = await b.record_payment(client, customer_id="cus_1077")
    await b.create_refund(client, small.payment_id, amount=1500)  # auto-approved
    await rb.schedule(client, "test-fast", [60, 60], 4)
    for index, outcome in enumerate(["succeed", "decline:insufficient_funds", "succeed"]):
        await rb.record(
            client, rb.failure(outcome=outcome, amount=4900 + index, card=f"pm_{index}")
        )
    await rb.run_retries(client, ahead=timedelta(days=1))  # also executes the small refund
    now = datetime.now(UTC)
    async with service.db.connection() as conn:
        await history(conn, random.Random(6), now)
        for refund, hours in zip(pending, (3, 27, 51, 6), strict=True):  # waiting for a while
            await conn.execute(
                "UPDATE refund_event SET created_at = $2 WHERE refund_id = $1",
                uuid.UUID(refund.refund_id),
                now - timedelta(hours=hours, minutes=17),
            )
    await analytics.fold(service.db, service.config.analytics_time_zones)
    return [r.refund_id for r in pending]


# -- what the RPCs answer, and how the page shows it -----------------------------------------


@dataclass
class Rpc:
    by_day: analytics_pb2.GetRecoveryMetricsResponse
    by_gateway: analytics_pb2.GetRecoveryMetricsResponse
    by_class: analytics_pb2.GetRecoveryMetricsResponse
    pending: pb.ListRefundsResponse


async def rpc_answers(client: Client, first: date, last: date, zone: str) -> Rpc:
    """The RPCs' answers for the page's days: from the first day's midnight to the one after
    the last day, in the page's zone."""
    tz = ZoneInfo(zone)
    answers = []
    for group_by in ("DAY", "GATEWAY", "DECLINE_CLASS"):
        request = analytics_pb2.GetRecoveryMetricsRequest(
            start_time=b.ts(datetime.combine(first, time(), tz)),
            end_time=b.ts(datetime.combine(last + timedelta(days=1), time(), tz)),
            time_zone=zone,
            group_by=analytics_pb2.MetricsGroupBy.Value(f"METRICS_GROUP_BY_{group_by}"),
        )
        answers.append(await client.call("t-reader", "GetRecoveryMetrics", request))
    pending = await client.call(
        "t-reader",
        "ListRefunds",
        pb.ListRefundsRequest(status=refund_pb2.REFUND_STATUS_PENDING_APPROVAL, page_size=50),
    )
    by_day, by_gateway, by_class = answers
    return Rpc(by_day, by_gateway, by_class, pending)


SYMBOLS = {"USD": "$", "EUR": "€", "JPY": "¥"}


def money_text(code: str, minor: int) -> str:
    """As Intl.NumberFormat shows it in en-US, from the digits."""
    exponent = currency_exponent(code)
    assert exponent is not None
    return f"{SYMBOLS[code]}{Decimal(minor).scaleb(-exponent):,.{exponent}f}"


def money_value(amounts: Any) -> str:
    return " ".join(f"{m.currency_code}:{m.minor_units}" for m in amounts)


def percent_text(rate: float) -> str:
    """Intl's percent with one decimal, rounding half away from zero (from the shortest
    decimal that reads back as the double, as JavaScript prints it)."""
    value = (Decimal(repr(rate)) * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)
    return f"{value}%"


def seconds_text(seconds: int) -> str:
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 60:
        return f"{seconds} s"
    if minutes < 60:
        return f"{minutes} min"
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d {hours % 24} h"


READ_PAGE = """() => {
  const figures = {};
  for (const element of document.querySelectorAll("[data-testid]")) {
    if ("value" in element.dataset) {
      figures[element.dataset.testid] = {text: element.textContent, value: element.dataset.value};
    }
  }
  const charts = {};
  for (const div of document.querySelectorAll(".chart")) {
    charts[div.id] = div.data.map(
      (t) => ({name: t.name, x: t.x, y: t.y, customdata: t.customdata}));
  }
  const rows = [...document.querySelectorAll('[data-testid="pending-row"]')].map(
    (row) => [...row.cells].map((cell) => cell.dataset.value ?? cell.textContent));
  const period = document.querySelector('[data-testid="period"]').dataset;
  const {first, last, zone} = period;
  return {figures, charts, rows, period: {first, last, zone}};
}"""


async def wait_for_charts(page: Page) -> None:
    """Until the figures are shown and plotly has drawn every chart."""
    await page.wait_for_function(
        """(ids) => document.querySelector('[data-testid="updated"]').dataset.value
             && ids.every((id) => document.getElementById(id).querySelector(".main-svg"))""",
        arg=list(CHARTS),
    )


def check_headline(figures: dict[str, Any], total: Any) -> None:
    def figure(name: str) -> tuple[str, str]:
        return figures[name]["text"], figures[name]["value"]

    assert total.plans_recovered > 0
    assert total.retry_attempts > 0
    text, value = figure("recovery-rate")
    assert (float(value), text) == (total.recovery_rate, percent_text(total.recovery_rate))
    failed = total.plans_recovered + total.plans_exhausted + total.plans_open
    assert figure("recovery-counts") == (
        f"{total.plans_recovered} of {failed} failed payments",
        f"{total.plans_recovered}/{failed}",
    )
    text, value = figure("amount-recovered")
    assert value == money_value(total.amount_recovered)
    assert text == "\n".join(
        money_text(m.currency_code, m.minor_units) for m in total.amount_recovered
    )
    text, value = figure("attempts-per-recovery")
    assert float(value) == total.attempts_per_recovery
    rounded = Decimal(repr(total.attempts_per_recovery)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(text) == rounded
    text, value = figure("payment-success")
    assert float(value) == total.payment_success_rate
    assert text == (
        f"{percent_text(total.payment_success_rate)} of {total.retry_attempts} retries succeeded"
    )
    for name, duration in (
        ("time-to-recover-p50", total.time_to_recover_p50),
        ("time-to-recover-p90", total.time_to_recover_p90),
    ):
        assert figure(name) == (seconds_text(duration.seconds), str(duration.seconds))
    assert figure("pending-approvals") == (str(total.pending_approvals),) * 2
    text, value = figure("pending-amount")
    assert value == money_value(total.pending_approval_amount)
    assert text == " · ".join(
        money_text(m.currency_code, m.minor_units) for m in total.pending_approval_amount
    )


def per_currency(traces: list[dict[str, Any]], keys: list[str], amounts_of: Any) -> None:
    """One trace per currency, the exact minor units of each key in customdata."""
    codes = sorted({m.currency_code for key in keys for m in amounts_of(key)})
    assert [t["name"] for t in traces] == codes
    for trace, code in zip(traces, codes, strict=True):
        assert trace["customdata"] == [
            str(sum(m.minor_units for m in amounts_of(key) if m.currency_code == code))
            for key in keys
        ]


def check_charts(charts: dict[str, list[dict[str, Any]]], rpc: Rpc) -> None:
    days = list(rpc.by_day.groups)
    keys = [g.key for g in days]
    recovered, open_, exhausted, rate = charts["chart-recovery"]
    assert recovered["x"] == keys
    assert recovered["y"] == [g.plans_recovered for g in days]
    assert open_["y"] == [g.plans_open for g in days]
    assert exhausted["y"] == [g.plans_exhausted for g in days]
    assert rate["y"] == [
        g.recovery_rate * 100 if g.plans_recovered + g.plans_open + g.plans_exhausted else None
        for g in days
    ]
    by_key = {g.key: g for g in days}
    per_currency(charts["chart-recovered"], keys, lambda k: by_key[k].amount_recovered)

    for chart, answer in (("chart-gateway", rpc.by_gateway), ("chart-decline", rpc.by_class)):
        tried = [g for g in answer.groups if g.retry_attempts]
        [trace] = charts[chart]
        assert trace["customdata"] == [
            [g.key, str(g.retry_attempts), str(g.retry_successes)] for g in tried
        ]
        assert trace["y"] == [g.payment_success_rate * 100 for g in tried]

    statuses = list(rpc.by_day.total.refunds_by_status)
    [counts] = charts["chart-refunds"]
    assert counts["customdata"] == [
        refund_pb2.RefundStatus.Name(s.status).removeprefix("REFUND_STATUS_") for s in statuses
    ]
    assert counts["y"] == [s.count for s in statuses]
    labels = [name.lower().replace("_", " ") for name in counts["customdata"]]
    amounts = dict(zip(labels, (s.amount for s in statuses), strict=True))
    per_currency(charts["chart-refund-amounts"], labels, lambda k: amounts[k])


def check_table(rows: list[list[str]], pending: pb.ListRefundsResponse) -> None:
    assert rows == [
        [
            r.refund_id,
            r.payment_id,
            r.customer_id,
            f"{r.amount.currency_code}:{r.amount.minor_units}",
            r.requested_by,
            f"{len(r.approvals)} of {r.required_approvals}",
            json_format.MessageToDict(r)["createTime"],
        ]
        for r in pending.refunds
    ]


def check_offline(traffic: Traffic, token: str, refused: frozenset[int] = frozenset()) -> None:
    """Nothing was asked of another host, the token was in no URL, no script failed, and no
    answer was an error (but those of ``refused`` statuses, from the JSON endpoints)."""
    assert traffic.blocked == []
    assert traffic.requests
    assert all(url.startswith(f"{traffic.origin}/") for url in traffic.requests)
    assert not [url for url in traffic.requests if token in url]
    assert traffic.errors == []
    assert [path for status, path in traffic.failed if status not in refused] == []
    assert {path for _, path in traffic.failed} <= {
        f"{PREFIX}/recovery-metrics",
        f"{PREFIX}/refunds",
    }


# -- the page in a browser -------------------------------------------------------------------


async def test_the_dashboard_shows_what_the_rpcs_answer(client: Client, service: Service) -> None:
    pending_ids = await realistic(client, service)
    async with (
        chromium() as browser,
        page_on(browser, origin(service), locale="en-US", timezone_id=ZONE) as (page, traffic),
    ):
        # "/" leads to the dashboard; the fragment (the token) stays in the browser.
        opened = datetime.now(ZoneInfo(ZONE)).date()
        await page.goto(f"{origin(service)}/#token=t-reader&refresh=1")
        await wait_for_charts(page)
        assert page.url == f"{origin(service)}{DASHBOARD}#refresh=1"  # the token left the URL

        shown = await page.evaluate(READ_PAGE)
        period = shown["period"]
        assert period["zone"] == ZONE
        first, last = date.fromisoformat(period["first"]), date.fromisoformat(period["last"])
        assert (last - first).days == 29  # the default range: the last 30 days
        assert opened <= last <= datetime.now(ZoneInfo(ZONE)).date()  # today
        rpc = await rpc_answers(client, first, last, ZONE)
        check_headline(shown["figures"], rpc.by_day.total)
        check_charts(shown["charts"], rpc)
        check_table(shown["rows"], rpc.pending)
        # Enough of everything for the charts to mean something (and the screenshot).
        assert len([g for g in rpc.by_day.groups if g.plans_recovered]) >= 10
        assert len([g for g in rpc.by_gateway.groups if g.retry_attempts]) == 3
        assert len([g for g in rpc.by_class.groups if g.retry_attempts]) == 3
        assert len(rpc.by_day.total.amount_recovered) == 3
        # The longest waiting first.
        assert [row[0] for row in shown["rows"]] == [pending_ids[i] for i in (2, 1, 3, 0)]

        # It refreshes itself: a refund requested now shows up without a reload.
        before = int(shown["figures"]["pending-approvals"]["value"])
        new = await pending_refund(client, "EUR", 8_200, "adyen", "cus_1256", "t-alice")
        await page.wait_for_selector(f'[data-refund-id="{new.refund_id}"]')
        await page.wait_for_function(
            """(n) => document.querySelector('[data-testid="pending-approvals"]')
                        .dataset.value === String(n)""",
            arg=before + 1,
        )
        shown = await page.evaluate(READ_PAGE)
        rpc = await rpc_answers(client, first, last, ZONE)
        check_headline(shown["figures"], rpc.by_day.total)
        check_table(shown["rows"], rpc.pending)

        check_offline(traffic, "t-reader")

        # The README's screenshot, of the page as a person opens it (refreshing every 10 s).
        await page.goto("about:blank")
        await page.goto(f"{origin(service)}{DASHBOARD}#token=t-reader")
        await wait_for_charts(page)
        assert await page.inner_text("#interval") == "10"
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 50_000


async def test_the_range_and_time_zone_change_what_is_shown(
    client: Client, service: Service
) -> None:
    await realistic(client, service)
    async with (
        chromium() as browser,
        page_on(browser, origin(service), locale="en-US", timezone_id=ZONE) as (page, traffic),
    ):
        await page.goto(f"{origin(service)}{DASHBOARD}#token=t-reader")
        await wait_for_charts(page)
        await page.select_option('[data-testid="range-select"]', "7")
        await page.select_option('[data-testid="zone-select"]', "UTC")
        await page.wait_for_function(
            """() => document.querySelector('[data-testid="period"]').dataset.zone === "UTC" """
        )
        shown = await page.evaluate(READ_PAGE)
        first, last = (date.fromisoformat(shown["period"][k]) for k in ("first", "last"))
        assert (last - first).days == 6
        rpc = await rpc_answers(client, first, last, "UTC")
        check_headline(shown["figures"], rpc.by_day.total)
        check_charts(shown["charts"], rpc)
        check_offline(traffic, "t-reader")


async def test_a_zone_the_service_does_not_roll_up_falls_back_to_utc(service: Service) -> None:
    async with (
        chromium() as browser,
        page_on(browser, origin(service), locale="en-US", timezone_id="Asia/Tokyo") as (
            page,
            traffic,
        ),
    ):
        await page.goto(f"{origin(service)}{DASHBOARD}#token=t-reader")
        await wait_for_charts(page)
        assert (await page.get_attribute('[data-testid="period"]', "data-zone")) == "UTC"
        notice = await page.inner_text('[data-testid="notice"]')
        assert notice.startswith("Showing UTC: the service does not roll up Asia/Tokyo")
        assert "Europe/Berlin" in notice  # the zones it does roll up
        check_offline(traffic, "t-reader", refused=frozenset({400}))


async def test_without_a_good_token_the_page_says_one_is_needed(service: Service) -> None:
    async with (
        chromium() as browser,
        page_on(browser, origin(service), locale="en-US") as (
            page,
            traffic,
        ),
    ):
        await page.goto(f"{origin(service)}{DASHBOARD}")
        notice = page.get_by_test_id("notice")
        await notice.wait_for()
        assert (await notice.inner_text()).startswith("Token needed")
        assert await page.get_by_test_id("token-form").is_visible()
        assert not await page.locator("#content").is_visible()

        await page.goto(f"{origin(service)}{DASHBOARD}#token=not-a-token")
        await page.wait_for_function(
            """() => document.querySelector('[data-testid="notice"]').textContent
                       .includes("refused the token")"""
        )
        assert (await notice.inner_text()).startswith("Token needed: the service refused")
        assert not await page.locator("#content").is_visible()

        # A token without the read role is told so; then a good one shows the figures.
        await page.fill("#token-input", "t-writer")
        await page.click("#token-form button")
        await page.wait_for_function(
            """() => document.querySelector('[data-testid="notice"]').textContent
                       .includes("read role")"""
        )
        await page.fill("#token-input", "t-reader")
        await page.click("#token-form button")
        await wait_for_charts(page)  # an empty database: every chart says so
        assert await page.get_by_test_id("pending-approvals").inner_text() == "0"
        assert not await page.get_by_test_id("notice").is_visible()
        check_offline(traffic, "t-reader", refused=frozenset({401, 403}))
        assert {status for status, _ in traffic.failed} == {401, 403}


# -- the JSON and the assets over HTTP -------------------------------------------------------


async def http_get(
    url: str, *, token: str | None = None, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    all_headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=all_headers, **kw) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


async def test_the_refunds_json_is_what_list_refunds_answers(
    client: Client, service: Service
) -> None:
    ids = [
        await pending_refund(client, "USD", 9_000 + n, "sandbox", f"cus_{n}", "t-billing")
        for n in range(3)
    ]
    await b.set_policy(client, auto={"USD": 1000})
    payment = await b.record_payment(client, customer_id="cus_7")
    await b.create_refund(client, payment.payment_id, amount=700, token="t-billing")  # approved
    url = f"{origin(service)}{PREFIX}/refunds"
    for status in ("PENDING_APPROVAL", "REFUND_STATUS_PENDING_APPROVAL"):
        code, _, body = await http_get(url, token="t-reader", params={"status": status})
        assert code == 200
        rpc = await client.call(
            "t-reader",
            "ListRefunds",
            pb.ListRefundsRequest(status=refund_pb2.REFUND_STATUS_PENDING_APPROVAL),
        )
        assert json.loads(body) == json_format.MessageToDict(rpc, preserving_proto_field_name=True)
        assert [r["refund_id"] for r in json.loads(body)["refunds"]] == [r.refund_id for r in ids]

    # Pages, as the RPC's.
    params = {"status": "PENDING_APPROVAL", "page_size": "2"}
    _, _, body = await http_get(url, token="t-reader", params=params)
    first = json.loads(body)
    assert len(first["refunds"]) == 2
    assert first["next_page_token"]
    params["page_token"] = first["next_page_token"]
    _, _, body = await http_get(url, token="t-reader", params=params)
    assert [r["refund_id"] for r in json.loads(body)["refunds"]] == [ids[2].refund_id]
    # Every refund without a status; by customer.
    _, _, body = await http_get(url, token="t-reader")
    assert len(json.loads(body)["refunds"]) == 4
    _, _, body = await http_get(url, token="t-reader", params={"customer_id": "cus_1"})
    assert [r["refund_id"] for r in json.loads(body)["refunds"]] == [ids[1].refund_id]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "LOST"}, "status"),
        ({"page_size": "many"}, "page_size"),
        ({"page_size": "-1"}, "page_size"),
        ({"page_token": "garbage"}, "page_token"),
        ({"create_time_start": "yesterday"}, "create_time_start"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_refund_parameters_are_400_naming_the_field(
    service: Service, params: dict[str, str], field: str
) -> None:
    code, headers, body = await http_get(
        f"{origin(service)}{PREFIX}/refunds", token="t-reader", params=params
    )
    assert code == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["field"] == field
    assert json.loads(body)["error"].startswith(f"{field}:")


async def test_the_refunds_json_needs_the_read_role(service: Service) -> None:
    url = f"{origin(service)}{PREFIX}/refunds"
    assert (await http_get(url))[0] == 401
    assert (await http_get(url, token="not-a-token"))[0] == 401
    code, _, body = await http_get(url, token="t-writer")
    assert code == 403
    assert "error" in json.loads(body)


async def test_the_page_and_its_assets(service: Service) -> None:
    base = origin(service)
    code, headers, _ = await http_get(f"{base}/", allow_redirects=False)
    assert (code, headers["Location"]) == (302, DASHBOARD)

    code, headers, body = await http_get(f"{base}{DASHBOARD}")
    assert code == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    html = body.decode()
    assert "$" not in html  # every placeholder filled
    exponents = json.loads(re.findall(r'id="currency-exponents">([^<]*)<', html)[0])
    assert (exponents["USD"], exponents["JPY"], exponents["KWD"]) == (2, 0, 3)
    scripts = re.findall(r'src="(dashboard/assets/[^"]+)"', html)
    plotly_js = next(s for s in scripts if s.startswith("dashboard/assets/plotly-"))
    assert "//" not in "".join(scripts)  # nothing from another host

    # plotly.js as the plotly wheel ships it, compressed, cached for a year.
    code, headers, body = await http_get(f"{base}{PREFIX}/{plotly_js}")
    assert code == 200
    shipped = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    assert body == shipped.read_bytes()
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"

    # Our own assets are revalidated: the same ETag answers 304.
    code, headers, body = await http_get(f"{base}{DASHBOARD}/assets/dashboard.js")
    assert code == 200
    assert headers["Cache-Control"] == "no-cache"
    assert b"Plotly.react" in body
    etag = headers["ETag"]
    code, _, _ = await http_get(
        f"{base}{DASHBOARD}/assets/dashboard.js", headers={"If-None-Match": etag}
    )
    assert code == 304
    assert (await http_get(f"{base}{DASHBOARD}/assets/secrets.txt"))[0] == 404
    assert (await http_get(f"{base}{DASHBOARD}/assets/..%2Fdashboard.py"))[0] == 404
