"""The circuit breaker on a fake clock: when it opens, what a refused call answers, the one
probe of the half-open state, and what counts as a failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from service.domain.money import Money
from service.gateways.base import (
    ChargeOutcome,
    ChargeRequest,
    OutcomeKind,
    RefundOutcome,
    RefundRequest,
)
from service.gateways.breaker import (
    CIRCUIT_OPEN,
    BreakerGateway,
    BreakerState,
    CircuitBreaker,
    breaker_states,
    with_breakers,
)

COOLDOWN = 30.0
UNREACHABLE = RefundOutcome(
    OutcomeKind.NOT_ATTEMPTED, error_code="gateway_unreachable", retryable=True
)
TIMED_OUT = RefundOutcome(OutcomeKind.UNKNOWN, error_code="timeout", retryable=True)
OK = RefundOutcome(OutcomeKind.SUCCEEDED, "re_1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeGateway:
    """Answers from a script (or raises it); counts the calls that reached it."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.refund_answer: RefundOutcome | Exception = OK
        self.charge_answer: ChargeOutcome = ChargeOutcome(OutcomeKind.SUCCEEDED, "ch_1")
        self.gate: asyncio.Event | None = None  # when set, calls wait for it
        self.closed = False

    async def _enter(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        await self._enter()
        if isinstance(self.refund_answer, Exception):
            raise self.refund_answer
        return self.refund_answer

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        await self._enter()
        assert not isinstance(self.refund_answer, Exception)
        return self.refund_answer

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        await self._enter()
        return self.charge_answer

    async def close(self) -> None:
        self.closed = True


REFUND = RefundRequest("pay_1", "pi_1", Money("USD", 100), "refund-d-attempt-1", 1)
CHARGE = ChargeRequest("plan_1", "cus_1", "pm_1", Money("USD", 100), "retry-p-attempt-2", 2)


def guarded(threshold: int = 3) -> tuple[BreakerGateway, FakeGateway, Clock]:
    clock = Clock()
    fake = FakeGateway()
    breaker = CircuitBreaker(
        "fake", failure_threshold=threshold, cooldown_seconds=COOLDOWN, clock=clock
    )
    return BreakerGateway(fake, breaker), fake, clock


def state_of(gateway: BreakerGateway) -> BreakerState:
    """The breaker's state now (a call, so the type checker does not carry it over)."""
    return gateway.breaker.state


async def fail(gateway: BreakerGateway, fake: FakeGateway, times: int) -> None:
    fake.refund_answer = TIMED_OUT
    for _ in range(times):
        await gateway.refund(REFUND)


async def test_consecutive_transient_failures_open_the_breaker() -> None:
    gateway, fake, _ = guarded(threshold=3)
    await fail(gateway, fake, 2)
    assert state_of(gateway) is BreakerState.CLOSED
    await fail(gateway, fake, 1)
    assert state_of(gateway) is BreakerState.OPEN
    assert fake.calls == 3


async def test_an_answer_between_failures_resets_the_count() -> None:
    gateway, fake, _ = guarded(threshold=3)
    await fail(gateway, fake, 2)
    fake.refund_answer = RefundOutcome(OutcomeKind.DECLINED, error_code="declined")
    await gateway.refund(REFUND)  # the gateway answered: it is up
    await fail(gateway, fake, 2)
    assert state_of(gateway) is BreakerState.CLOSED
    assert gateway.breaker.snapshot().consecutive_failures == 2


@pytest.mark.parametrize(
    "outcome",
    [
        UNREACHABLE,
        TIMED_OUT,
    ],
)
async def test_unreachable_and_unknown_retryable_count_as_failures(outcome: RefundOutcome) -> None:
    gateway, fake, _ = guarded(threshold=1)
    fake.refund_answer = outcome
    await gateway.refund(REFUND)
    assert state_of(gateway) is BreakerState.OPEN


@pytest.mark.parametrize(
    "outcome",
    [
        RefundOutcome(OutcomeKind.PENDING, "re_1"),
        RefundOutcome(OutcomeKind.REQUIRES_ACTION, "re_1"),
        RefundOutcome(OutcomeKind.DECLINED, error_code="rate_limited", retryable=True),
        RefundOutcome(OutcomeKind.UNKNOWN, "re_1", retryable=False),  # an answer, not a failure
        RefundOutcome(OutcomeKind.NOT_ATTEMPTED, error_code="bad_value", retryable=False),
    ],
)
async def test_answers_of_a_working_gateway_do_not_count(outcome: RefundOutcome) -> None:
    gateway, fake, _ = guarded(threshold=1)
    fake.refund_answer = outcome
    await gateway.refund(REFUND)
    assert state_of(gateway) is BreakerState.CLOSED


async def test_an_exception_counts_as_a_failure_and_is_raised() -> None:
    gateway, fake, _ = guarded(threshold=1)
    fake.refund_answer = RuntimeError("adapter bug")
    with pytest.raises(RuntimeError):
        await gateway.refund(REFUND)
    assert state_of(gateway) is BreakerState.OPEN


async def test_an_open_breaker_answers_without_calling_the_gateway() -> None:
    gateway, fake, clock = guarded(threshold=1)
    await fail(gateway, fake, 1)
    clock.advance(10)

    refund = await gateway.refund(REFUND)
    fetched = await gateway.fetch_refund("re_9", REFUND)
    charged = await gateway.charge(CHARGE)
    read = await gateway.charge(
        ChargeRequest(
            "plan_1", "cus_1", "pm_1", Money("USD", 100), "k", 2, gateway_charge_id="pi_9"
        )
    )

    assert fake.calls == 1  # only the failure that opened it
    assert (refund.kind, refund.error_code, refund.retryable) == (
        OutcomeKind.NOT_ATTEMPTED,
        CIRCUIT_OPEN,
        True,
    )
    assert "circuit breaker of gateway fake is open" in refund.error_message
    assert "20 s" in refund.error_message  # when it is tried again
    assert (fetched.kind, fetched.gateway_refund_id) == (OutcomeKind.NOT_ATTEMPTED, "re_9")
    assert (charged.kind, charged.retryable) == (OutcomeKind.NOT_ATTEMPTED, True)
    assert charged.message.startswith(CIRCUIT_OPEN)
    # A charge that exists is never NOT_ATTEMPTED: reading it is UNKNOWN, its id kept.
    assert (read.kind, read.gateway_charge_id, read.retryable) == (
        OutcomeKind.UNKNOWN,
        "pi_9",
        True,
    )
    snapshot = gateway.breaker.snapshot()
    assert (snapshot.state, snapshot.retry_in, snapshot.opened) == (BreakerState.OPEN, 20.0, 1)


async def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes() -> None:
    gateway, fake, clock = guarded(threshold=1)
    await fail(gateway, fake, 1)
    clock.advance(COOLDOWN)
    assert state_of(gateway) is BreakerState.HALF_OPEN
    fake.refund_answer = OK
    fake.gate = asyncio.Event()

    probe = asyncio.create_task(gateway.refund(REFUND))
    await asyncio.sleep(0)
    meanwhile = await gateway.refund(REFUND)  # the probe is still running
    fake.gate.set()
    answered = await probe

    assert meanwhile.kind is OutcomeKind.NOT_ATTEMPTED
    assert answered == OK
    assert fake.calls == 2
    assert state_of(gateway) is BreakerState.CLOSED
    assert (await gateway.refund(REFUND)) == OK


async def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    gateway, fake, clock = guarded(threshold=1)
    await fail(gateway, fake, 1)
    clock.advance(COOLDOWN + 5)
    await fail(gateway, fake, 1)  # the probe
    assert state_of(gateway) is BreakerState.OPEN
    clock.advance(COOLDOWN - 1)
    assert (await gateway.refund(REFUND)).kind is OutcomeKind.NOT_ATTEMPTED
    assert fake.calls == 2
    clock.advance(1)
    assert state_of(gateway) is BreakerState.HALF_OPEN
    assert gateway.breaker.snapshot().opened == 2


async def test_a_cancelled_probe_frees_the_probe() -> None:
    gateway, fake, clock = guarded(threshold=1)
    await fail(gateway, fake, 1)
    clock.advance(COOLDOWN)
    fake.gate = asyncio.Event()
    probe = asyncio.create_task(gateway.refund(REFUND))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    fake.gate = None
    fake.refund_answer = OK
    assert (await gateway.refund(REFUND)) == OK  # the next call is the probe
    assert state_of(gateway) is BreakerState.CLOSED


async def test_a_call_admitted_before_the_breaker_opened_does_not_close_it() -> None:
    gateway, fake, _ = guarded(threshold=1)
    gate = fake.gate = asyncio.Event()
    slow = asyncio.create_task(gateway.refund(REFUND))  # admitted while CLOSED, then waits
    await asyncio.sleep(0)
    fake.gate = None
    await fail(gateway, fake, 1)  # opens it meanwhile
    fake.refund_answer = OK
    gate.set()

    assert await slow == OK
    assert state_of(gateway) is BreakerState.OPEN  # only the probe may close it


async def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.gateways.breaker")
    gateway, fake, clock = guarded(threshold=2)
    await fail(gateway, fake, 2)
    clock.advance(COOLDOWN)
    fake.refund_answer = OK
    await gateway.refund(REFUND)
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert actions == [
        "gateway_breaker.opened",
        "gateway_breaker.half_open",
        "gateway_breaker.closed",
    ]
    opened = caplog.records[0]
    assert opened.levelno == logging.WARNING
    assert "2 consecutive calls failed" in opened.getMessage()


async def test_every_gateway_gets_its_own_breaker_and_its_state_is_readable() -> None:
    clock = Clock()
    one, two = FakeGateway(), FakeGateway()
    two.name = "other"
    gateways = with_breakers(
        {"one": one, "other": two}, failure_threshold=1, cooldown_seconds=COOLDOWN, clock=clock
    )
    one.refund_answer = TIMED_OUT
    await gateways["one"].refund(REFUND)
    states = breaker_states(gateways)
    assert {name: s.state for name, s in states.items()} == {
        "one": BreakerState.OPEN,
        "other": BreakerState.CLOSED,
    }
    await gateways["one"].close()
    assert one.closed


def test_settings_are_checked() -> None:
    make: Callable[..., CircuitBreaker] = CircuitBreaker
    with pytest.raises(ValueError, match="failure_threshold"):
        make("x", failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown"):
        make("x", cooldown_seconds=0)
