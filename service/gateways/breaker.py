"""A circuit breaker per gateway: when a gateway keeps failing, stop calling it for a while.

Why: a gateway that is down answers every call with a timeout or an error after the SDK's own
retries, so a billing job run would spend seconds per refund and per charge learning the same
thing, and hammer the gateway as it comes back. The breaker learns it once.

States (``BreakerState``):

* **CLOSED**: calls go through. ``failure_threshold`` consecutive *transient* failures open it:
  an outcome NOT_ATTEMPTED or UNKNOWN that is ``retryable`` (the gateway unreachable, rate
  limiting, timeouts, 5xx), or an exception from the adapter. Any other answer (succeeded,
  pending, declined, requires action, a non-retryable unknown) shows the gateway is up and
  resets the count.
* **OPEN** for ``cooldown_seconds``: calls are refused without touching the network. A refund or
  a new charge is answered NOT_ATTEMPTED (retryable, ``error_code`` ``circuit_open``, a message
  naming the breaker): nothing reached the gateway, so the billing jobs keep the work scheduled
  and use up no attempt. Reading a charge that exists already is answered UNKNOWN (retryable,
  the charge id kept): the gateway interface says a read is never NOT_ATTEMPTED.
* **HALF_OPEN** after the cool-down: one call goes through as a probe (others are refused while
  it runs); its success closes the breaker, its failure opens it for another cool-down.

State lives in the process: each replica learns a gateway's health by itself, which is what a
breaker is for (nothing another replica needs is lost). ``CircuitBreaker.snapshot`` is what the
metrics read; transitions are logged (``action`` ``gateway_breaker.opened`` / ``.half_open`` /
``.closed``). The clock is injectable, so the state machine is tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from service.gateways.base import (
    ChargeOutcome,
    ChargeRequest,
    ChargingGateway,
    OutcomeKind,
    RefundOutcome,
    RefundRequest,
    reads_refunds,
)

log = logging.getLogger(__name__)

_O = TypeVar("_O", RefundOutcome, ChargeOutcome)

# The error code of a call the breaker refused (a RefundOutcome's ``error_code``; a charge
# outcome's message starts with it).
CIRCUIT_OPEN = "circuit_open"


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state for metrics and health: ``retry_in`` is the time left in the cool-down
    (0 unless OPEN); ``opened`` counts how often it has opened since the process started."""

    gateway: str
    state: BreakerState
    consecutive_failures: int
    retry_in: float
    opened: int


class _Pass(StrEnum):
    """How a call was let through: as a normal call (CLOSED) or as the half-open probe."""

    NORMAL = "NORMAL"
    PROBE = "PROBE"


class CircuitBreaker:
    """The state machine of one gateway's breaker. Single event loop: no lock needed."""

    def __init__(
        self,
        gateway: str,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_seconds <= 0:
            raise ValueError("cooldown_seconds must be positive")
        self.gateway = gateway
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._open = False
        self._opened_at = 0.0
        self._failures = 0
        self._probing = False
        self._opened_count = 0
        self._announced_half_open = False

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown_seconds:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        retry_in = 0.0
        if state is BreakerState.OPEN:
            retry_in = max(self.cooldown_seconds - (self._clock() - self._opened_at), 0.0)
        return BreakerSnapshot(self.gateway, state, self._failures, retry_in, self._opened_count)

    def admit(self) -> _Pass | None:
        """May a call go to the gateway now? None: refuse it; else how it was let through (give
        it back to :meth:`record`)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return _Pass.NORMAL
        if state is BreakerState.OPEN or self._probing:
            return None
        self._probing = True
        if not self._announced_half_open:
            self._announced_half_open = True
            log.info(
                "gateway %s: circuit breaker half-open, one call goes through as a probe",
                self.gateway,
                extra={"action": "gateway_breaker.half_open", "gateway": self.gateway},
            )
        return _Pass.PROBE

    def record(self, admitted: _Pass, *, failed: bool) -> None:
        """The result of a call :meth:`admit` let through."""
        if admitted is _Pass.PROBE:
            self._probing = False
            if failed:
                self._trip(f"the probe call failed; refused for another {self.cooldown_seconds} s")
            else:
                self._close()
            return
        if self._open:  # a call that started before the breaker opened: the probe decides
            return
        if not failed:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._trip(
                f"{self._failures} consecutive calls failed; refused for {self.cooldown_seconds} s"
            )

    def abandon(self, admitted: _Pass) -> None:
        """A call :meth:`admit` let through ended without an answer (cancelled): a probe's
        place is free again, and nothing is counted."""
        if admitted is _Pass.PROBE:
            self._probing = False

    def _trip(self, why: str) -> None:
        self._open = True
        self._opened_at = self._clock()
        self._opened_count += 1
        self._announced_half_open = False
        log.warning(
            "gateway %s: circuit breaker opened: %s",
            self.gateway,
            why,
            extra={
                "action": "gateway_breaker.opened",
                "gateway": self.gateway,
                "consecutive_failures": self._failures,
                "cooldown_seconds": self.cooldown_seconds,
            },
        )

    def _close(self) -> None:
        self._open = False
        self._failures = 0
        log.info(
            "gateway %s: circuit breaker closed: the probe call succeeded",
            self.gateway,
            extra={"action": "gateway_breaker.closed", "gateway": self.gateway},
        )


def _transient(kind: OutcomeKind, retryable: bool) -> bool:
    """An outcome that says the gateway could not be reached or did not answer."""
    return kind in (OutcomeKind.NOT_ATTEMPTED, OutcomeKind.UNKNOWN) and retryable


class BreakerGateway:
    """A gateway behind its circuit breaker: the same interface (refunds, charges), so the
    billing jobs need not know it is there."""

    def __init__(self, gateway: ChargingGateway, breaker: CircuitBreaker) -> None:
        self.inner = gateway
        self.breaker = breaker
        self.name = gateway.name
        self.reads_refunds = reads_refunds(gateway)

    def __repr__(self) -> str:
        return f"BreakerGateway({self.inner!r}, {self.breaker.state})"

    def probing(self) -> bool:
        """HALF_OPEN: one call goes through as the probe, the others are refused."""
        return self.breaker.state is BreakerState.HALF_OPEN

    def accepting_calls(self) -> bool:
        """False while OPEN (in the cool-down); HALF_OPEN takes calls (one goes through as
        the probe, the others are refused as NOT_ATTEMPTED)."""
        return self.breaker.state is not BreakerState.OPEN

    def _refusal(self) -> str:
        left = self.breaker.snapshot().retry_in
        return (
            f"{CIRCUIT_OPEN}: the circuit breaker of gateway {self.name} is open after "
            f"repeated failures; the call was not sent (the gateway is tried again in "
            f"{left:.0f} s)"
        )

    async def refund(self, request: RefundRequest) -> RefundOutcome:
        refused = RefundOutcome(
            OutcomeKind.NOT_ATTEMPTED,
            error_code=CIRCUIT_OPEN,
            error_message=self._refusal(),
            retryable=True,
        )
        return await self._guarded(lambda: self.inner.refund(request), refused, _refund_failed)

    async def fetch_refund(self, gateway_refund_id: str, request: RefundRequest) -> RefundOutcome:
        if not self.reads_refunds:
            # Nothing is sent (the gateway cannot read a refund): nothing to guard, and its
            # answer says nothing about the gateway's health (it must not close the breaker).
            return await self.inner.fetch_refund(gateway_refund_id, request)
        refused = RefundOutcome(
            OutcomeKind.NOT_ATTEMPTED,
            gateway_refund_id,
            error_code=CIRCUIT_OPEN,
            error_message=self._refusal(),
            retryable=True,
        )
        return await self._guarded(
            lambda: self.inner.fetch_refund(gateway_refund_id, request), refused, _refund_failed
        )

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        if request.gateway_charge_id:  # a read of a charge that exists: never NOT_ATTEMPTED
            refused = ChargeOutcome(
                OutcomeKind.UNKNOWN,
                request.gateway_charge_id,
                message=self._refusal(),
                retryable=True,
            )
        else:
            refused = ChargeOutcome(
                OutcomeKind.NOT_ATTEMPTED, message=self._refusal(), retryable=True
            )
        return await self._guarded(lambda: self.inner.charge(request), refused, _charge_failed)

    async def close(self) -> None:
        await self.inner.close()

    async def _guarded(
        self,
        call: Callable[[], Awaitable[_O]],
        refused: _O,
        failed: Callable[[_O], bool],
    ) -> _O:
        admitted = self.breaker.admit()
        if admitted is None:
            return refused
        try:
            outcome = await call()
        except asyncio.CancelledError:  # the caller gave up: says nothing about the gateway
            self.breaker.abandon(admitted)
            raise
        except Exception:  # an adapter bug, or the gateway's library raised: a failure
            self.breaker.record(admitted, failed=True)
            raise
        self.breaker.record(admitted, failed=failed(outcome))
        return outcome


def _refund_failed(outcome: RefundOutcome) -> bool:
    return _transient(outcome.kind, outcome.retryable)


def _charge_failed(outcome: ChargeOutcome) -> bool:
    return _transient(outcome.kind, outcome.retryable)


def with_breakers(
    gateways: Mapping[str, ChargingGateway],
    *,
    failure_threshold: int,
    cooldown_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, ChargingGateway]:
    """Each gateway behind a breaker of its own."""
    return {
        name: BreakerGateway(
            gateway,
            CircuitBreaker(
                name,
                failure_threshold=failure_threshold,
                cooldown_seconds=cooldown_seconds,
                clock=clock,
            ),
        )
        for name, gateway in gateways.items()
    }


def breaker_states(gateways: Mapping[str, object]) -> dict[str, BreakerSnapshot]:
    """The breakers' states of the gateways that have one (what the metrics read)."""
    return {
        name: gateway.breaker.snapshot()
        for name, gateway in gateways.items()
        if isinstance(gateway, BreakerGateway)
    }
