"""The consumers' metrics on ``/metrics``: messages by event type and outcome (a good one
applied, a bad one dead-lettered, a repeated one a duplicate). Real RabbitMQ (own vhost)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.metrics import Metrics
from service.server import Service
from tests.integration import event_builders as e
from tests.integration.conftest_rabbitmq import (  # noqa: F401  (fixtures)
    Broker,
    broker,
    rabbitmq_vhost,
)
from tests.integration.test_metrics import Samples, scrape, value

CONSUMED = "refund_retry_messages_consumed_total"


@pytest.fixture
def config_overrides(broker: Broker) -> dict[str, str]:
    return broker.settings(CONSUMER_PREFETCH="1")


async def scrape_until(service: Service, want: dict[str, float], seconds: float = 30) -> Samples:
    """A scrape once it shows ``want`` (payment.failed outcome -> count): a message is
    counted right after its ack, a moment after its effect is visible."""
    deadline = time.monotonic() + seconds
    while True:
        samples = await scrape(service)
        seen = {o: value(samples, CONSUMED, event_type="payment.failed", outcome=o) for o in want}
        if seen == want:
            return samples
        assert time.monotonic() < deadline, f"consumed {seen}, expected {want}"
        await asyncio.sleep(0.05)


async def test_consumed_messages_are_counted_by_event_type_and_outcome(
    service: Service, broker: Broker
) -> None:
    await e.consuming(service)
    good = e.payment_failed()
    await broker.publish_raw(
        b"\xff not protobuf", routing_key="payment.failed", type="payment.failed"
    )
    await broker.publish("payment.failed", good)
    await broker.publish("payment.failed", good)  # the billing system sent it twice

    samples = await scrape_until(service, {"applied": 1, "dead_lettered": 1, "duplicate": 1})

    assert (await e.handled(service, "payment.failed", good.event_id))["outcome"] == "APPLIED"
    assert len(await broker.dead_letters(1)) == 1
    assert value(samples, CONSUMED, event_type="payment.failed", outcome="retry") is None
    assert (
        value(samples, "refund_retry_messages_redelivered_total", event_type="payment.failed")
        is None
    )


def test_a_delivery_after_the_first_counts_as_redelivered() -> None:
    metrics = Metrics()
    metrics.consumer_outcome("payment.failed", "retry", delivery=1)
    metrics.consumer_outcome("payment.failed", "applied", delivery=2)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample(CONSUMED, event_type="payment.failed", outcome="retry") == 1
    assert sample(CONSUMED, event_type="payment.failed", outcome="applied") == 1
    assert sample("refund_retry_messages_redelivered_total", event_type="payment.failed") == 1
