"""The sandbox gateway: every documented outcome, deterministic per idempotency key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.money import Money
from service.gateways.base import Gateway, OutcomeKind, RefundErrorCode, RefundRequest
from service.gateways.sandbox import OUTCOME_KEY, OUTCOMES, SandboxGateway, validate_outcome


def request(
    outcome: str | None = None, *, attempt: int = 1, key: str = "detail-1:1"
) -> RefundRequest:
    metadata = {} if outcome is None else {OUTCOME_KEY: outcome}
    return RefundRequest(
        payment_id="pay_1",
        gateway_transaction_id="txn_1",
        amount=Money("USD", 1050),
        idempotency_key=key,
        attempt=attempt,
        reason="requested_by_customer",
        metadata=metadata,
    )


@pytest.fixture
def gateway() -> SandboxGateway:
    return SandboxGateway()


def test_sandbox_implements_the_gateway_protocol() -> None:
    gw: Gateway = SandboxGateway()
    assert gw.name == "sandbox"


@pytest.mark.parametrize("outcome", [None, "succeed"])
async def test_succeed_is_the_default(gateway: SandboxGateway, outcome: str | None) -> None:
    result = await gateway.refund(request(outcome))
    assert result.kind is OutcomeKind.SUCCEEDED
    assert result.gateway_refund_id.startswith("sbre_")
    assert result.error_code == ""
    assert not result.retryable


async def test_pending_then_succeed(gateway: SandboxGateway) -> None:
    req = request("pending_then_succeed")
    first = await gateway.refund(req)
    assert first.kind is OutcomeKind.PENDING
    assert first.gateway_refund_id
    later = await gateway.fetch_refund(first.gateway_refund_id, req)
    assert later.kind is OutcomeKind.SUCCEEDED
    assert later.gateway_refund_id == first.gateway_refund_id


async def test_pending_then_fail(gateway: SandboxGateway) -> None:
    req = request("pending_then_fail")
    first = await gateway.refund(req)
    assert first.kind is OutcomeKind.PENDING
    later = await gateway.fetch_refund(first.gateway_refund_id, req)
    assert later.kind is OutcomeKind.DECLINED
    assert later.error_code == RefundErrorCode.DECLINED.value
    assert not later.retryable  # a final decline
    assert later.gateway_refund_id == first.gateway_refund_id


async def test_fail_is_a_final_decline(gateway: SandboxGateway) -> None:
    result = await gateway.refund(request("fail"))
    assert result.kind is OutcomeKind.DECLINED
    assert result.error_code == "card_expired_or_canceled"
    assert result.error_code == RefundErrorCode.CARD_EXPIRED_OR_CANCELED.value
    assert not result.retryable
    assert result.error_message


@pytest.mark.parametrize("failures", [1, 2, 5])
async def test_fail_then_succeed(gateway: SandboxGateway, failures: int) -> None:
    outcome = f"fail_then_succeed:{failures}"
    for attempt in range(1, failures + 1):
        result = await gateway.refund(request(outcome, attempt=attempt, key=f"d:{attempt}"))
        assert result.kind is OutcomeKind.DECLINED, attempt
        assert result.error_code == "insufficient_merchant_balance"
        assert result.retryable
    for attempt in (failures + 1, failures + 2):
        result = await gateway.refund(request(outcome, attempt=attempt, key=f"d:{attempt}"))
        assert result.kind is OutcomeKind.SUCCEEDED, attempt


async def test_fail_then_succeed_zero_succeeds_at_once(gateway: SandboxGateway) -> None:
    result = await gateway.refund(request("fail_then_succeed:0", attempt=1))
    assert result.kind is OutcomeKind.SUCCEEDED


async def test_requires_action(gateway: SandboxGateway) -> None:
    result = await gateway.refund(request("requires_action"))
    assert result.kind is OutcomeKind.REQUIRES_ACTION
    assert result.gateway_refund_id.startswith("sbre_")


@pytest.mark.parametrize("attempt", [1, 2, 10])
async def test_unavailable_every_time(gateway: SandboxGateway, attempt: int) -> None:
    result = await gateway.refund(request("unavailable", attempt=attempt, key=f"k{attempt}"))
    assert result.kind is OutcomeKind.NOT_ATTEMPTED
    assert result.error_code == RefundErrorCode.GATEWAY_UNREACHABLE.value
    assert result.retryable
    assert result.gateway_refund_id == ""  # nothing reached the gateway


async def test_fetch_of_a_succeeding_refund_succeeds(gateway: SandboxGateway) -> None:
    result = await gateway.fetch_refund("sbre_x", request())
    assert result.kind is OutcomeKind.SUCCEEDED
    assert result.gateway_refund_id == "sbre_x"


async def test_close(gateway: SandboxGateway) -> None:
    await gateway.close()


# --- determinism ---------------------------------------------------------------------------


async def test_same_key_same_refund_id_and_outcome(gateway: SandboxGateway) -> None:
    req = request("requires_action", key="detail-42:3")
    first = await gateway.refund(req)
    second = await gateway.refund(req)
    assert first == second
    # A fresh gateway instance (another replica) gives the same answer: no state is kept.
    assert await SandboxGateway().refund(req) == first


async def test_refund_id_depends_only_on_the_key(gateway: SandboxGateway) -> None:
    a = await gateway.refund(request("succeed", key="k"))
    b = await gateway.refund(request("requires_action", key="k", attempt=7))
    assert a.gateway_refund_id == b.gateway_refund_id


async def test_different_keys_different_refund_ids(gateway: SandboxGateway) -> None:
    ids = {
        (await gateway.refund(request(key=f"detail-{i}:1"))).gateway_refund_id for i in range(50)
    }
    assert len(ids) == 50


@given(key=st.text(min_size=1, max_size=40))
async def test_refund_id_shape_and_determinism(key: str) -> None:
    gateway = SandboxGateway()
    first = await gateway.refund(request(key=key))
    second = await gateway.refund(request(key=key))
    assert first.gateway_refund_id == second.gateway_refund_id
    assert first.gateway_refund_id.startswith("sbre_")
    suffix = first.gateway_refund_id.removeprefix("sbre_")
    assert len(suffix) == 24
    assert set(suffix) <= set("0123456789abcdef")


# --- validate_outcome ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "succeed",
        "pending_then_succeed",
        "pending_then_fail",
        "fail",
        "requires_action",
        "unavailable",
        "fail_then_succeed:0",
        "fail_then_succeed:3",
        "fail_then_succeed:12",
    ],
)
def test_valid_outcomes(value: str) -> None:
    assert validate_outcome(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bogus",
        "SUCCEED",
        "succeed ",
        "fail_then_succeed",
        "fail_then_succeed:",
        "fail_then_succeed:N",
        "fail_then_succeed:-1",
        "fail_then_succeed:1.5",
        "fail_then_succeed:x",
        "fail_then_succeed:1:2",
    ],
)
def test_invalid_outcomes(value: str) -> None:
    assert not validate_outcome(value)


def test_every_listed_outcome_except_the_template_is_valid() -> None:
    for outcome in OUTCOMES:
        if outcome == "fail_then_succeed:N":
            assert not validate_outcome(outcome)
        else:
            assert validate_outcome(outcome)


@given(n=st.integers(min_value=0, max_value=999))
def test_fail_then_succeed_with_any_count_is_valid(n: int) -> None:
    assert validate_outcome(f"fail_then_succeed:{n}")


# Superscript two and Arabic-Indic one: both are str.isdigit().
@pytest.mark.parametrize("digits", ["\u00b2", "\u0661"])
async def test_every_valid_outcome_is_one_the_gateway_can_run(
    gateway: SandboxGateway, digits: str
) -> None:
    # validate_outcome guards the metadata the sandbox later runs: what it accepts must not
    # crash refund().
    outcome = f"fail_then_succeed:{digits}"
    if validate_outcome(outcome):
        result = await gateway.refund(request(outcome, attempt=1))
        assert result.kind in (OutcomeKind.DECLINED, OutcomeKind.SUCCEEDED)
