"""Fixtures for tests of the Stripe gateway against the local Stripe stub
(``tests/stripe_server.py``).

A plain module, not a conftest: import the fixtures where they are needed
(``from tests.integration.conftest_stripe import stripe_server``). ``stripe_server`` is a started
stub; ``make_stripe_gateway`` builds ``StripeGateway``s pointed at it (closed after the test);
``dead_port`` is a local port nothing listens on.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest

from service.gateways.stripe_gateway import StripeGateway
from tests.json_stub import running
from tests.stripe_server import StripeStubServer


@pytest.fixture
def stripe_server() -> Iterator[StripeStubServer]:
    """A started stub on 127.0.0.1 (a free port), stopped after the test."""
    with running(StripeStubServer()) as server:
        yield server


class MakeStripeGateway(Protocol):
    def __call__(
        self,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        max_attempts: int = 3,
        timeout_seconds: float = 5.0,
    ) -> StripeGateway: ...


@pytest.fixture
async def make_stripe_gateway(
    stripe_server: StripeStubServer,
) -> AsyncIterator[MakeStripeGateway]:
    """Build gateways talking to ``stripe_server`` (its key and address unless given)."""
    made: list[StripeGateway] = []

    def make(
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        max_attempts: int = 3,
        timeout_seconds: float = 5.0,
    ) -> StripeGateway:
        gateway = StripeGateway(
            api_key or stripe_server.api_key,
            api_base or stripe_server.base_url,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
        )
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port nothing listens on: bound (so no one else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
