"""The sandbox gateway's charges: every documented outcome, deterministic, and the decider hook."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.money import Money
from service.gateways.base import (
    CardNetwork,
    ChargeOutcome,
    ChargeRequest,
    ChargingGateway,
    OutcomeKind,
    RefundRequest,
)
from service.gateways.sandbox import (
    CHARGE_OUTCOME_KEY,
    VISA_DECLINE_CODES,
    SandboxGateway,
    validate_charge_outcome,
)


def request(
    outcome: str | None = None, *, attempt: int = 1, key: str = "plan-1:attempt-1"
) -> ChargeRequest:
    metadata = {} if outcome is None else {CHARGE_OUTCOME_KEY: outcome}
    return ChargeRequest(
        plan_id="plan-1",
        customer_id="cus_1",
        payment_method="pm_1",
        amount=Money("USD", 1999),
        idempotency_key=key,
        attempt=attempt,
        metadata=metadata,
    )


def charge_id(key: str) -> str:
    return "sbpi_" + hashlib.sha256(key.encode()).hexdigest()[:24]


@pytest.fixture
def gateway() -> SandboxGateway:
    return SandboxGateway()


def test_sandbox_implements_the_charging_gateway_protocol() -> None:
    gw: ChargingGateway = SandboxGateway()
    assert gw.name == "sandbox"


@pytest.mark.parametrize("outcome", [None, "succeed"])
async def test_succeed_is_the_default(gateway: SandboxGateway, outcome: str | None) -> None:
    result = await gateway.charge(request(outcome))
    assert result == ChargeOutcome(OutcomeKind.SUCCEEDED, charge_id("plan-1:attempt-1"))


@pytest.mark.parametrize("code", ["insufficient_funds", "do_not_honor", "expired_card"])
async def test_decline_with_a_code(gateway: SandboxGateway, code: str) -> None:
    result = await gateway.charge(request(f"decline:{code}"))
    assert result.kind is OutcomeKind.DECLINED
    assert result.decline_code == code
    assert result.gateway_charge_id == charge_id("plan-1:attempt-1")
    assert result.network == ""  # CardNetwork.UNKNOWN
    assert result.visa_response_code == result.mc_advice_code == ""
    assert not result.retryable
    assert code in result.message


async def test_decline_then_succeed(gateway: SandboxGateway) -> None:
    outcome = "decline_then_succeed:2:insufficient_funds"
    results = [
        await gateway.charge(request(outcome, attempt=n, key=f"k-{n}")) for n in (1, 2, 3, 4)
    ]
    assert [r.kind for r in results] == [
        OutcomeKind.DECLINED,
        OutcomeKind.DECLINED,
        OutcomeKind.SUCCEEDED,
        OutcomeKind.SUCCEEDED,
    ]
    assert [r.decline_code for r in results] == ["insufficient_funds"] * 2 + [""] * 2
    assert [r.gateway_charge_id for r in results] == [charge_id(f"k-{n}") for n in (1, 2, 3, 4)]


async def test_decline_then_succeed_zero_times_succeeds(gateway: SandboxGateway) -> None:
    result = await gateway.charge(request("decline_then_succeed:0:do_not_honor"))
    assert result.kind is OutcomeKind.SUCCEEDED


@pytest.mark.parametrize(
    ("response_code", "decline_code"),
    [
        ("51", "insufficient_funds"),
        ("05", "do_not_honor"),
        ("N7", "incorrect_cvc"),
        ("R1", "revocation_of_authorization"),
        ("12", "generic_decline"),
        ("93", "generic_decline"),
    ],
)
async def test_visa_response_code(
    gateway: SandboxGateway, response_code: str, decline_code: str
) -> None:
    result = await gateway.charge(request(f"visa:{response_code}"))
    assert result.kind is OutcomeKind.DECLINED
    assert result.network == CardNetwork.VISA
    assert result.visa_response_code == response_code
    assert result.decline_code == decline_code
    assert result.mc_advice_code == ""
    assert result.gateway_charge_id.startswith("sbpi_")


async def test_visa_1a_is_authentication_required(gateway: SandboxGateway) -> None:
    result = await gateway.charge(request("visa:1A"))
    assert result.kind is OutcomeKind.REQUIRES_ACTION
    assert result.decline_code == "authentication_required"
    assert result.visa_response_code == "1A"


def test_the_visa_table_uses_two_character_codes() -> None:
    assert all(validate_charge_outcome(f"visa:{code}") for code in VISA_DECLINE_CODES)


@pytest.mark.parametrize(
    ("outcome", "advice", "decline_code"),
    [
        ("mastercard:03", "03", "generic_decline"),
        ("mastercard:24", "24", "generic_decline"),
        ("mastercard:01:expired_card", "01", "expired_card"),
    ],
)
async def test_mastercard_advice_code(
    gateway: SandboxGateway, outcome: str, advice: str, decline_code: str
) -> None:
    result = await gateway.charge(request(outcome))
    assert result.kind is OutcomeKind.DECLINED
    assert result.network == CardNetwork.MASTERCARD
    assert result.mc_advice_code == advice
    assert result.decline_code == decline_code
    assert result.visa_response_code == ""


async def test_requires_action(gateway: SandboxGateway) -> None:
    result = await gateway.charge(request("requires_action"))
    assert result.kind is OutcomeKind.REQUIRES_ACTION
    assert result.decline_code == "authentication_required"
    assert result.gateway_charge_id == charge_id("plan-1:attempt-1")
    assert not result.retryable


async def test_unavailable_is_not_attempted_and_retryable(gateway: SandboxGateway) -> None:
    result = await gateway.charge(request("unavailable"))
    assert result.kind is OutcomeKind.NOT_ATTEMPTED
    assert result.retryable
    assert result.gateway_charge_id == ""


async def test_timeout_is_unknown_and_retryable(gateway: SandboxGateway) -> None:
    result = await gateway.charge(request("timeout"))
    assert result.kind is OutcomeKind.UNKNOWN
    assert result.retryable
    assert result.gateway_charge_id == ""


@pytest.mark.parametrize("outcome", ["nonsense", "visa:5", "mastercard:3", "decline:"])
async def test_an_unrecognised_outcome_is_not_attempted_and_final(
    gateway: SandboxGateway, outcome: str
) -> None:
    result = await gateway.charge(request(outcome))
    assert result.kind is OutcomeKind.NOT_ATTEMPTED
    assert not result.retryable
    assert CHARGE_OUTCOME_KEY in result.message


@pytest.mark.parametrize(
    "outcome",
    [
        "succeed",
        "decline:insufficient_funds",
        "decline_then_succeed:3:do_not_honor",
        "visa:51",
        "visa:N7",
        "mastercard:02",
        "mastercard:21:stop_payment_order",
        "requires_action",
        "unavailable",
        "timeout",
    ],
)
async def test_the_same_request_always_gives_the_same_outcome(outcome: str) -> None:
    # Stateless: two gateways, called twice each, agree.
    results = [await SandboxGateway().charge(request(outcome)) for _ in range(2)]
    results += [await SandboxGateway().charge(request(outcome)) for _ in range(2)]
    assert len(set(results)) == 1
    assert validate_charge_outcome(outcome)


@given(key=st.text(min_size=1, max_size=40))
async def test_charge_ids_depend_only_on_the_key(key: str) -> None:
    one = await SandboxGateway().charge(request("succeed", key=key))
    two = await SandboxGateway().charge(request("visa:51", key=key, attempt=9))
    assert one.gateway_charge_id == two.gateway_charge_id == charge_id(key)
    suffix = one.gateway_charge_id.removeprefix("sbpi_")
    assert len(suffix) == 24
    assert all(c in "0123456789abcdef" for c in suffix)


async def test_different_keys_different_charge_ids(gateway: SandboxGateway) -> None:
    ids = {(await gateway.charge(request(key=f"plan-1:{i}"))).gateway_charge_id for i in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize(
    "value",
    [
        "decline",
        "decline:Insufficient",
        "decline_then_succeed:1",
        "decline_then_succeed:x:do_not_honor",
        "decline_then_succeed:1234:do_not_honor",
        "visa:",
        "visa:511",
        "visa:5a",
        "mastercard:",
        "mastercard:1",
        "mastercard:02:",
        "fail",
        "succeed:1",
        "",
    ],
)
def test_validate_charge_outcome_rejects(value: str) -> None:
    assert not validate_charge_outcome(value)


# -- the decider hook ---------------------------------------------------------------------------


async def test_a_decider_decides_every_charge() -> None:
    seen: list[ChargeRequest] = []

    def decider(req: ChargeRequest) -> ChargeOutcome:
        seen.append(req)
        if req.attempt < 3:
            return ChargeOutcome(
                OutcomeKind.DECLINED, decline_code="insufficient_funds", network="VISA"
            )
        return ChargeOutcome(OutcomeKind.SUCCEEDED, "gw_custom")

    gateway = SandboxGateway(charge_decider=decider)
    # The metadata outcome is ignored when a decider is given.
    first = await gateway.charge(request("timeout", attempt=1, key="k-1"))
    third = await gateway.charge(request("timeout", attempt=3, key="k-3"))

    assert [r.attempt for r in seen] == [1, 3]
    assert first.kind is OutcomeKind.DECLINED
    assert first.decline_code == "insufficient_funds"
    assert first.gateway_charge_id == charge_id("k-1")  # filled in by the sandbox
    assert third == ChargeOutcome(OutcomeKind.SUCCEEDED, "gw_custom")  # kept as given


@pytest.mark.parametrize("kind", [OutcomeKind.NOT_ATTEMPTED, OutcomeKind.UNKNOWN])
async def test_a_decider_outcome_without_a_charge_gets_no_id(kind: OutcomeKind) -> None:
    gateway = SandboxGateway(charge_decider=lambda _: ChargeOutcome(kind, retryable=True))
    result = await gateway.charge(request())
    assert result == ChargeOutcome(kind, retryable=True)


async def test_refunds_are_unaffected_by_a_decider() -> None:
    def decider(_: ChargeRequest) -> ChargeOutcome:
        raise AssertionError("refunds never ask the charge decider")

    gateway = SandboxGateway(charge_decider=decider)
    refund = await gateway.refund(
        RefundRequest(
            payment_id="pay_1",
            gateway_transaction_id="txn_1",
            amount=Money("USD", 100),
            idempotency_key="rf-1",
            attempt=1,
        )
    )
    assert refund.kind is OutcomeKind.SUCCEEDED
