"""StripeGateway through the real ``stripe`` SDK against the local Stripe stub.

Nothing here reaches the internet: the stub listens on 127.0.0.1 (``tests/stripe_server.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import httpx
import pytest

from service.domain.money import Money
from service.gateways.base import OutcomeKind, RefundErrorCode, RefundRequest
from service.gateways.stripe_gateway import StripeGateway
from tests.integration.conftest_stripe import (  # noqa: F401  (fixtures)
    MakeStripeGateway,
    dead_port,
    make_stripe_gateway,
    stripe_server,
)
from tests.stripe_server import RecordedRequest, StripeStubServer


@pytest.fixture
async def gateway(make_stripe_gateway: MakeStripeGateway) -> StripeGateway:
    return make_stripe_gateway()


def refund_request(
    transaction_id: str,
    minor_units: int,
    *,
    key: str = "refund-detail-1:attempt-1",
    attempt: int = 1,
    reason: str = "",
    metadata: Mapping[str, str] | None = None,
) -> RefundRequest:
    return RefundRequest(
        payment_id="pay_1",
        gateway_transaction_id=transaction_id,
        amount=Money("USD", minor_units),
        idempotency_key=key,
        attempt=attempt,
        reason=reason,
        metadata=metadata or {},
    )


def refund_posts(server: StripeStubServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.method == "POST" and r.path == "/v1/refunds"]


# -- refunds that succeed ------------------------------------------------------------------------


async def test_full_refund_succeeds(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_full", amount=5000)

    outcome = await gateway.refund(
        refund_request("pi_full", 5000, attempt=2, metadata={"refund_id": "rf_9"})
    )

    assert outcome.kind is OutcomeKind.SUCCEEDED
    (refund,) = stripe_server.refunds
    assert outcome.gateway_refund_id == refund["id"]
    assert refund["id"].startswith("re_")
    assert refund["amount"] == 5000
    assert refund["currency"] == "usd"
    assert refund["payment_intent"] == "pi_full"
    assert refund["metadata"] == {"refund_id": "rf_9", "payment_id": "pay_1", "attempt": "2"}
    assert stripe_server.refunded_amount("pi_full") == 5000
    (post,) = refund_posts(stripe_server)
    assert post.idempotency_key == "refund-detail-1:attempt-1"
    assert post.params["amount"] == "5000"
    assert "charge" not in post.params


async def test_partial_refunds_until_the_charge_is_fully_refunded(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_partial", amount=5000)

    first = await gateway.refund(refund_request("pi_partial", 2000, key="k-1"))
    second = await gateway.refund(refund_request("pi_partial", 3000, key="k-2"))
    third = await gateway.refund(refund_request("pi_partial", 1, key="k-3"))

    assert first.kind is second.kind is OutcomeKind.SUCCEEDED
    assert first.gateway_refund_id != second.gateway_refund_id
    assert [r["amount"] for r in stripe_server.refunds] == [2000, 3000]
    assert third.kind is OutcomeKind.DECLINED
    assert third.error_code == RefundErrorCode.ALREADY_REFUNDED
    assert third.retryable is False


async def test_a_charge_id_is_sent_as_charge(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("ch_legacy", amount=1200)

    outcome = await gateway.refund(refund_request("ch_legacy", 1200))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    (post,) = refund_posts(stripe_server)
    assert post.params["charge"] == "ch_legacy"
    assert "payment_intent" not in post.params
    (refund,) = stripe_server.refunds
    assert refund["charge"] == "ch_legacy"
    assert refund["payment_intent"] is None


@pytest.mark.parametrize(
    ("reason", "sent"),
    [
        ("requested_by_customer", "requested_by_customer"),
        ("duplicate", "duplicate"),
        ("the customer changed their mind", None),
        ("", None),
    ],
)
async def test_only_stripes_reasons_are_sent(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    reason: str,
    sent: str | None,
) -> None:
    stripe_server.add_payment("pi_reason", amount=700)

    outcome = await gateway.refund(refund_request("pi_reason", 700, reason=reason))

    assert outcome.kind is OutcomeKind.SUCCEEDED
    (post,) = refund_posts(stripe_server)
    assert post.params.get("reason") == sent
    assert stripe_server.refunds[0]["reason"] == sent


# -- pending refunds -----------------------------------------------------------------------------


async def test_pending_refund_is_fetched_until_it_succeeds(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_slow_bank", amount=4000, behaviour="pending_then_succeed")
    request = refund_request("pi_slow_bank", 4000)

    created = await gateway.refund(request)
    assert created.kind is OutcomeKind.PENDING
    assert created.gateway_refund_id

    still = await gateway.fetch_refund(created.gateway_refund_id, request)
    assert still.kind is OutcomeKind.PENDING

    stripe_server.settle(created.gateway_refund_id)
    settled = await gateway.fetch_refund(created.gateway_refund_id, request)
    assert settled.kind is OutcomeKind.SUCCEEDED
    assert settled.gateway_refund_id == created.gateway_refund_id
    assert stripe_server.refunded_amount("pi_slow_bank") == 4000


async def test_pending_refund_settles_after_some_retrieves(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment(
        "pi_retrieves", amount=900, behaviour="pending_then_succeed", settle_after_retrieves=2
    )
    request = refund_request("pi_retrieves", 900)
    created = await gateway.refund(request)

    kinds = [(await gateway.fetch_refund(created.gateway_refund_id, request)).kind for _ in "ab"]

    assert kinds == [OutcomeKind.PENDING, OutcomeKind.SUCCEEDED]


@pytest.mark.parametrize(
    ("failure_reason", "code", "retryable"),
    [
        ("expired_or_canceled_card", RefundErrorCode.CARD_EXPIRED_OR_CANCELED, False),
        ("lost_or_stolen_card", RefundErrorCode.LOST_OR_STOLEN_CARD, False),
        ("insufficient_funds", RefundErrorCode.INSUFFICIENT_MERCHANT_BALANCE, True),
        ("declined", RefundErrorCode.DECLINED, False),
        ("merchant_request", RefundErrorCode.UNKNOWN, False),
    ],
)
async def test_pending_refund_that_fails_is_declined_with_its_reason(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    failure_reason: str,
    code: RefundErrorCode,
    retryable: bool,
) -> None:
    stripe_server.add_payment(
        "pi_fails", amount=3000, behaviour="pending_then_fail", failure_reason=failure_reason
    )
    request = refund_request("pi_fails", 3000)
    created = await gateway.refund(request)
    assert created.kind is OutcomeKind.PENDING
    assert stripe_server.refunded_amount("pi_fails") == 3000

    stripe_server.settle(created.gateway_refund_id)
    failed = await gateway.fetch_refund(created.gateway_refund_id, request)

    assert failed.kind is OutcomeKind.DECLINED
    assert failed.error_code == code
    assert failed.retryable is retryable
    assert failed.gateway_refund_id == created.gateway_refund_id
    # A failed refund gives its amount back: the whole payment can be refunded again.
    assert stripe_server.refunded_amount("pi_fails") == 0
    again = await gateway.refund(refund_request("pi_fails", 3000, key="k-attempt-2", attempt=2))
    assert again.kind is OutcomeKind.PENDING
    assert again.gateway_refund_id != created.gateway_refund_id


async def test_refund_that_requires_action(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_action", amount=100, behaviour="requires_action")

    outcome = await gateway.refund(refund_request("pi_action", 100))

    assert outcome.kind is OutcomeKind.REQUIRES_ACTION
    assert outcome.gateway_refund_id == stripe_server.refunds[0]["id"]


# -- idempotency ---------------------------------------------------------------------------------


async def test_the_same_key_twice_makes_one_refund(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_twice", amount=5000)
    request = refund_request("pi_twice", 2500)

    first = await gateway.refund(request)
    second = await gateway.refund(request)

    assert first.kind is second.kind is OutcomeKind.SUCCEEDED
    assert second.gateway_refund_id == first.gateway_refund_id
    assert len(stripe_server.refunds) == 1
    assert stripe_server.refunded_amount("pi_twice") == 2500
    assert [p.replayed for p in refund_posts(stripe_server)] == [False, True]


async def test_the_same_key_with_another_amount_is_an_invalid_request(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_reused", amount=5000)
    await gateway.refund(refund_request("pi_reused", 1000, key="reused"))

    outcome = await gateway.refund(refund_request("pi_reused", 2000, key="reused"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.INVALID_REQUEST
    assert outcome.retryable is False
    assert "same parameters" in outcome.error_message
    assert [r["amount"] for r in stripe_server.refunds] == [1000]


# -- refused refunds -----------------------------------------------------------------------------


async def test_refund_above_what_is_left_is_amount_too_large(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_small", amount=1000)
    await gateway.refund(refund_request("pi_small", 600, key="k-1"))

    outcome = await gateway.refund(refund_request("pi_small", 500, key="k-2"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.AMOUNT_TOO_LARGE
    assert outcome.retryable is False
    assert stripe_server.refunded_amount("pi_small") == 600
    assert len(stripe_server.refunds) == 1


@pytest.mark.parametrize("transaction_id", ["pi_nobody", "ch_nobody"])
async def test_unknown_payment_is_transaction_not_found(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    transaction_id: str,
) -> None:
    stripe_server.add_payment("pi_somebody", amount=1000)

    outcome = await gateway.refund(refund_request(transaction_id, 100))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.TRANSACTION_NOT_FOUND
    assert outcome.retryable is False
    assert stripe_server.refunds == []


async def test_wrong_api_key_is_authentication_failed_and_never_shown(
    make_stripe_gateway: MakeStripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_payment("pi_auth", amount=1000)
    wrong_key = "sk_test_wrong_0123456789abcdef"
    gateway = make_stripe_gateway(api_key=wrong_key)

    with caplog.at_level(logging.DEBUG):
        outcome = await gateway.refund(refund_request("pi_auth", 1000))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.error_code == RefundErrorCode.AUTHENTICATION_FAILED
    assert outcome.retryable is False
    assert len(refund_posts(stripe_server)) == 1  # not retried
    assert stripe_server.refunds == []
    assert wrong_key not in outcome.error_message
    assert wrong_key not in caplog.text
    assert wrong_key not in repr(gateway)


# -- transient errors ----------------------------------------------------------------------------


async def test_500_twice_then_success_is_retried_with_the_same_key(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_flaky", amount=5000, behaviour="fail_with_500:2")
    request = refund_request("pi_flaky", 5000, key="flaky-key")

    outcome = await gateway.refund(request)

    assert outcome.kind is OutcomeKind.SUCCEEDED
    posts = refund_posts(stripe_server)
    assert [p.status for p in posts] == [500, 500, 200]
    assert [p.idempotency_key for p in posts] == ["flaky-key"] * 3
    (refund,) = stripe_server.refunds
    assert outcome.gateway_refund_id == refund["id"]


async def test_500_every_time_is_unknown_and_retryable(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_server.add_payment("pi_down", amount=5000, behaviour="fail_with_500:100")

    with caplog.at_level(logging.DEBUG):
        outcome = await gateway.refund(refund_request("pi_down", 5000))

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.error_code == RefundErrorCode.GATEWAY_ERROR
    assert outcome.retryable is True
    assert len(refund_posts(stripe_server)) == 3  # max_attempts
    assert stripe_server.api_key not in caplog.text
    assert "stripe_refund_create_retry" in {getattr(r, "action", "") for r in caplog.records}


async def test_429_every_time_is_not_attempted_rate_limited(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    stripe_server.add_payment("pi_busy", amount=5000, behaviour="rate_limit:100")

    outcome = await gateway.refund(refund_request("pi_busy", 5000))

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.error_code == RefundErrorCode.RATE_LIMITED
    assert outcome.retryable is True
    assert [p.status for p in refund_posts(stripe_server)] == [429, 429, 429]


async def test_429_after_a_500_is_unknown_not_not_attempted(
    gateway: StripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    # The 500 may have come after the refund was made: a new key could refund twice.
    stripe_server.add_payment("pi_mixed", amount=5000, behaviour="fail_with_500:1,rate_limit:100")

    outcome = await gateway.refund(refund_request("pi_mixed", 5000))

    assert [p.status for p in refund_posts(stripe_server)] == [500, 429, 429]
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.error_code == RefundErrorCode.RATE_LIMITED
    assert outcome.retryable is True


async def test_nothing_listening_is_not_attempted_unreachable(
    make_stripe_gateway: MakeStripeGateway, dead_port: int
) -> None:
    gateway = make_stripe_gateway(api_base=f"http://127.0.0.1:{dead_port}")

    outcome = await gateway.refund(refund_request("pi_anything", 5000))

    assert outcome.kind is OutcomeKind.NOT_ATTEMPTED
    assert outcome.error_code == RefundErrorCode.GATEWAY_UNREACHABLE
    assert outcome.retryable is True


async def test_fetch_when_unreachable_is_unknown_never_not_attempted(
    make_stripe_gateway: MakeStripeGateway, dead_port: int
) -> None:
    gateway = make_stripe_gateway(api_base=f"http://127.0.0.1:{dead_port}")

    outcome = await gateway.fetch_refund("re_123", refund_request("pi_anything", 5000))

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.gateway_refund_id == "re_123"
    assert outcome.error_code == RefundErrorCode.GATEWAY_UNREACHABLE
    assert outcome.retryable is True


async def test_fetch_of_an_unknown_refund_is_unknown_and_not_retryable(
    gateway: StripeGateway,
) -> None:
    outcome = await gateway.fetch_refund("re_missing", refund_request("pi_anything", 5000))

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.error_code == RefundErrorCode.TRANSACTION_NOT_FOUND
    assert outcome.retryable is False


async def test_timeout_is_unknown_and_a_replay_with_the_key_finds_the_refund(
    make_stripe_gateway: MakeStripeGateway,
    stripe_server: StripeStubServer,
) -> None:
    # The stub takes 0.6 s on the first POST: the answer is lost, the refund is still made.
    stripe_server.add_payment("pi_timeout", amount=5000, behaviour="slow:0.6:1")
    request = refund_request("pi_timeout", 5000, key="timeout-key")
    impatient = make_stripe_gateway(max_attempts=1, timeout_seconds=0.2)

    lost = await impatient.refund(request)

    assert lost.kind is OutcomeKind.UNKNOWN
    assert lost.error_code == RefundErrorCode.TIMEOUT
    assert lost.retryable is True
    assert await asyncio.to_thread(stripe_server.wait_for_refunds, 1)

    replayed = await make_stripe_gateway().refund(request)

    assert replayed.kind is OutcomeKind.SUCCEEDED
    (refund,) = stripe_server.refunds
    assert replayed.gateway_refund_id == refund["id"]
    assert stripe_server.refunded_amount("pi_timeout") == 5000
    assert refund_posts(stripe_server)[-1].replayed is True


# -- the stub itself follows Stripe where the gateway relies on it -------------------------------


async def test_stub_answers_like_stripe(stripe_server: StripeStubServer) -> None:
    stripe_server.add_payment("pi_raw", amount=1000)
    auth = {"Authorization": f"Bearer {stripe_server.api_key}"}
    async with httpx.AsyncClient(base_url=stripe_server.base_url) as client:
        no_key = await client.post("/v1/refunds", data={"payment_intent": "pi_raw"})
        unknown = await client.post(
            "/v1/refunds", data={"payment_intent": "pi_raw", "colour": "red"}, headers=auth
        )
        keyed = {**auth, "Idempotency-Key": "raw-1"}
        first = await client.post("/v1/refunds", data={"payment_intent": "pi_raw"}, headers=keyed)
        again = await client.post("/v1/refunds", data={"payment_intent": "pi_raw"}, headers=keyed)
        fetched = await client.get(f"/v1/refunds/{first.json()['id']}", headers=auth)

    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "parameter_unknown"
    assert first.status_code == 200
    assert first.json()["amount"] == 1000  # no amount: what is left
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert fetched.json()["object"] == "refund"
    assert fetched.json()["status"] == "succeeded"
