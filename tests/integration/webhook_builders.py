"""Gateway webhooks as the gateways send them: bodies, signatures made here exactly as each
gateway documents them (not with the service's own code), and posting them to a running
service's HTTP port."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from repository.database import Database
from service.server import Service
from tests.adyen_server import AdyenStubServer
from tests.integration import builders as b
from tests.integration.conftest import Client

STRIPE_SECRET = "whsec_test_4f1c2d9e8b7a6c5d4e3f2a1b0c9d8e7f"
ADYEN_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
ADYEN_OLD_KEY = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
ADYEN_MERCHANT = "RefundRetryTestMerchant"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    text: str


async def post(
    service: Service, path: str, body: str | bytes, headers: dict[str, str] | None = None
) -> Answer:
    assert service.http is not None
    url = f"http://127.0.0.1:{service.http.port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as response,
    ):
        return Answer(response.status, await response.text())


# -- Stripe ------------------------------------------------------------------------------------


def stripe_signature(payload: str, secret: str = STRIPE_SECRET, at: int | None = None) -> str:
    """``Stripe-Signature`` as Stripe makes it: ``t=<unix time>,v1=<hex HMAC-SHA256 of
    "<t>.<payload>" under the endpoint secret>``."""
    timestamp = int(time.time()) if at is None else at
    signed = f"{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def stripe_event(event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> str:
    """An event body as Stripe sends it (API version 2024-12-18.acacia)."""
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2024-12-18.acacia",
            "created": int(time.time()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
    )


def stripe_refund(
    refund_id: str,
    status: str,
    *,
    amount: int = 1000,
    payment_intent: str = "pi_x",
    failure_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "charge": f"ch_{payment_intent[3:]}",
        "created": int(time.time()),
        "currency": "usd",
        "failure_reason": failure_reason,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "status": status,
    }


def stripe_dispute(
    dispute_id: str,
    status: str,
    *,
    charge: str,
    payment_intent: str | None,
    amount: int = 5000,
    reason: str = "fraudulent",
) -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "charge": charge,
        "created": int(time.time()),
        "currency": "usd",
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": reason,
        "status": status,
    }


async def post_stripe(
    service: Service, body: str, signature: str | None = None, *, raw: bytes | None = None
) -> Answer:
    """POST ``body`` to /webhooks/stripe, signed with the test secret unless ``signature`` is
    given (``""``: no header); ``raw`` is sent instead of ``body`` when given."""
    header = stripe_signature(body) if signature is None else signature
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if header:
        headers["Stripe-Signature"] = header
    return await post(service, "/webhooks/stripe", raw if raw is not None else body, headers)


# -- Adyen -------------------------------------------------------------------------------------


def adyen_item(
    event_code: str,
    psp_reference: str,
    *,
    success: bool = True,
    original_reference: str = "",
    value: int = 1000,
    currency: str = "EUR",
    reason: str = "",
    merchant_reference: str = "order-1",
    additional: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One NotificationRequestItem as Adyen sends it (strings for flags, minor units)."""
    item: dict[str, Any] = {
        "additionalData": dict(additional or {}),
        "amount": {"currency": currency, "value": value},
        "eventCode": event_code,
        "eventDate": "2026-11-24T10:00:00+01:00",
        "merchantAccountCode": ADYEN_MERCHANT,
        "merchantReference": merchant_reference,
        "paymentMethod": "visa",
        "pspReference": psp_reference,
        "reason": reason,
        "success": "true" if success else "false",
    }
    if original_reference:
        item["originalReference"] = original_reference
    return item


def adyen_sign(item: dict[str, Any], hex_key: str = ADYEN_KEY) -> dict[str, Any]:
    """``item`` with ``additionalData.hmacSignature`` as Adyen computes it: HMAC-SHA256 with the
    hex-decoded key over pspReference:originalReference:merchantAccountCode:merchantReference:
    value:currency:eventCode:success (empty for a missing field), base64."""
    amount = item.get("amount", {})
    parts = [
        item.get("pspReference", ""),
        item.get("originalReference", ""),
        item.get("merchantAccountCode", ""),
        item.get("merchantReference", ""),
        str(amount.get("value", "")),
        amount.get("currency", ""),
        item.get("eventCode", ""),
        item.get("success", ""),
    ]
    mac = hmac.new(bytes.fromhex(hex_key), ":".join(parts).encode(), hashlib.sha256)
    signed: dict[str, Any] = json.loads(json.dumps(item))
    signed.setdefault("additionalData", {})["hmacSignature"] = base64.b64encode(
        mac.digest()
    ).decode()
    return signed


def adyen_body(*items: dict[str, Any], live: str = "false") -> str:
    return json.dumps(
        {"live": live, "notificationItems": [{"NotificationRequestItem": i} for i in items]}
    )


async def post_adyen(service: Service, body: str, *, auth: tuple[str, str] | None = None) -> Answer:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return await post(service, "/webhooks/adyen", body, headers)


# -- what the service stored -------------------------------------------------------------------


async def webhook_rows(db: Database, gateway: str) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT event_id, event_type, object_id, status, note FROM webhook_event"
            " WHERE gateway = $1 ORDER BY received_at, event_id",
            gateway,
        )
    return [dict(r) for r in rows]


async def outbox_types(db: Database, aggregate_id: str) -> list[str]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY position",
            aggregate_id,
        )
    return [r["event_type"] for r in rows]


async def audit_actions(db: Database, entity_id: str) -> list[tuple[str, str]]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT actor, action FROM audit_event WHERE entity_id = $1 ORDER BY sequence",
            entity_id,
        )
    return [(r["actor"], r["action"]) for r in rows]


async def table_counts(db: Database) -> dict[str, int]:
    """Rows of every table a webhook may change: equal before and after means nothing changed."""
    tables = (
        "webhook_event",
        "refund_event",
        "refund_event_detail",
        "payment",
        "payment_dispute",
        "journal_entry",
        "outbox",
        "audit_event",
        "retry_plan",
    )
    async with db.connection() as conn:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}


async def snapshot(db: Database) -> list[tuple[Any, ...]]:
    """Statuses and balances of refunds, details and payments: equal means nothing moved."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT 'refund', refund_id::text, status, 0 FROM refund_event"
            " UNION ALL SELECT 'detail', detail_id::text, status, attempt_count"
            " FROM refund_event_detail"
            " UNION ALL SELECT 'payment', payment_id, '', refunded_amount + pending_refund_amount"
            " FROM payment"
            " ORDER BY 1, 2"
        )
    return [tuple(r) for r in rows]


async def processing_adyen_refund(client: Client, server: AdyenStubServer) -> tuple[Any, str]:
    """A refund of 2000 of a 5000 Adyen payment that Adyen received (PROCESSING): the refund
    and Adyen's pspReference of it."""
    payment = server.add_payment(amount=5000)
    recorded = await b.record_payment(
        client, gateway="adyen", transaction_id=payment.psp_reference, items=[("plan", 5000, 0)]
    )
    await b.set_policy(client, auto={"USD": 100000})
    refund = await b.create_refund(client, recorded.payment_id, amount=2000)
    assert (await b.run_job(client)).refunds_pending_at_gateway == 1
    (received,) = server.refunds
    return refund, received.psp_reference
