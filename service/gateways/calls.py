"""What the HTTP gateways (Stripe, Adyen) share around one call to the gateway: the class of a
transient error, the record of what a call's tries did, and the retries under the same
idempotency key. Each gateway says which errors are transient (``Classify``) and which
exceptions its SDK raises."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from service.gateways.base import RefundErrorCode

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Transient:
    """A transient error: its code, and whether the attempt may have moved money."""

    code: RefundErrorCode
    may_have_moved_money: bool


# The transient class of an error, or None when retrying cannot help.
Classify = Callable[[BaseException], Transient | None]


class CallAttempts:
    """What the tries of one call have done so far."""

    def __init__(self) -> None:
        self.count = 0
        self.may_have_moved_money = False

    def failed(self, transient: Transient | None) -> None:
        if transient is not None and transient.may_have_moved_money:
            self.may_have_moved_money = True


@dataclass(frozen=True, slots=True)
class Retries:
    """How one gateway retries: ``errors`` are its SDK's exceptions (others propagate at
    once), ``classify`` says which are transient; ``error_fields`` adds what an error carries
    to the retry's log line."""

    gateway: str  # for log lines: "Stripe", "Adyen"
    log: logging.Logger
    classify: Classify
    errors: tuple[type[BaseException], ...]
    max_attempts: int
    error_fields: Callable[[BaseException], Mapping[str, object]] = lambda exc: {}

    async def run(
        self,
        operation: Callable[[], Awaitable[_T]],
        attempts: CallAttempts,
        action: str,
        log_ids: Mapping[str, object],
    ) -> _T:
        """Run ``operation``, retrying transient errors (with the same idempotency key, which
        ``operation`` carries); ``attempts`` records what the tries did."""

        async def attempt() -> _T:
            attempts.count += 1
            try:
                return await operation()
            except self.errors as exc:
                attempts.failed(self.classify(exc))
                raise

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "%s call failed with a transient error; retrying with the same key",
                self.gateway,
                extra={
                    "action": f"{action}_retry",
                    **log_ids,
                    "call_attempt": state.attempt_number,
                    "error": type(exc).__name__,
                    **(self.error_fields(exc) if exc is not None else {}),
                },
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception(lambda exc: self.classify(exc) is not None),
            before_sleep=before_sleep,
            reraise=True,
        )
        result: _T = await retrying(attempt)
        return result
