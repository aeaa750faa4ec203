"""The ``stripe_server`` fixture: a local Stripe stub for one test (``tests/stripe_server.py``).

A plain module, not a conftest: import the fixture where it is needed
(``from tests.integration.conftest_stripe import stripe_server``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stripe_server import StripeStubServer


@pytest.fixture
def stripe_server() -> Iterator[StripeStubServer]:
    """A started stub on 127.0.0.1 (a free port), stopped after the test."""
    server = StripeStubServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.errors, f"the Stripe stub failed: {server.errors}"
