"""Fixtures for tests of the Adyen gateway against the local Adyen stub
(``tests/adyen_server.py``).

A plain module, not a conftest: import the fixtures where they are needed
(``from tests.integration.conftest_adyen import adyen_server``). ``adyen_server`` is a started
stub; ``make_adyen_gateway`` builds ``AdyenGateway``s pointed at it (closed after the test);
``adyen_settings`` are the service's settings that enable the ``adyen`` gateway against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest

from service.gateways.adyen_gateway import AdyenGateway
from tests.adyen_server import AdyenStubServer
from tests.json_stub import running


@pytest.fixture
def adyen_server() -> Iterator[AdyenStubServer]:
    """A started stub on 127.0.0.1 (a free port), stopped after the test."""
    with running(AdyenStubServer()) as server:
        yield server


def adyen_settings(server: AdyenStubServer) -> dict[str, str]:
    """The environment that enables the ``adyen`` gateway of a service against ``server``."""
    return {
        "REFUND_RETRY_ADYEN_API_KEY": server.api_key,
        "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT": server.merchant_account,
        "REFUND_RETRY_ADYEN_API_BASE": server.base_url,
    }


class MakeAdyenGateway(Protocol):
    def __call__(
        self,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        max_attempts: int = 3,
        timeout_seconds: float = 5.0,
        recurring_processing_model: str = "Subscription",
    ) -> AdyenGateway: ...


@pytest.fixture
async def make_adyen_gateway(
    adyen_server: AdyenStubServer,
) -> AsyncIterator[MakeAdyenGateway]:
    """Build gateways talking to ``adyen_server`` (its key and address unless given)."""
    made: list[AdyenGateway] = []

    def make(
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        max_attempts: int = 3,
        timeout_seconds: float = 5.0,
        recurring_processing_model: str = "Subscription",
    ) -> AdyenGateway:
        gateway = AdyenGateway(
            api_key or adyen_server.api_key,
            adyen_server.merchant_account,
            api_base=api_base or adyen_server.base_url,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            recurring_processing_model=recurring_processing_model,
        )
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()
