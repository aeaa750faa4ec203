"""The RabbitMQ objects the consumers own, declared by the service itself at start-up.

- The billing system's topic exchange (``BILLING_EXCHANGE``): declared durable topic, which is
  a no-op when the billing system has declared it so already.
- One durable **quorum** queue per event type, ``<prefix>.<event type>``, bound to that
  exchange by the event type as routing key. Quorum queues are replicated and count deliveries:
  ``x-delivery-limit`` makes the broker dead-letter a message that keeps coming back (e.g. one
  that crashes the process every time), and ``x-dead-letter-exchange`` says where to.
- The dead-letter exchange (topic) and its quorum queue bound to ``#``: rejected messages keep
  their routing key, so an operator can move them back with a shovel once the cause is fixed.

RabbitMQ refuses to redeclare a queue with different arguments: changing the delivery limit of
an existing queue needs a policy (``rabbitmqctl set_policy ... '{"delivery-limit": N}'``) or a
new queue name (``CONSUMER_QUEUE_PREFIX``).
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from service.config import Config


@dataclass(frozen=True, slots=True)
class Topology:
    billing_exchange: str
    queue_prefix: str
    dead_letter_exchange: str
    dead_letter_queue: str
    delivery_limit: int

    @classmethod
    def from_config(cls, config: Config) -> Topology:
        return cls(
            billing_exchange=config.billing_exchange,
            queue_prefix=config.consumer_queue_prefix,
            dead_letter_exchange=config.dead_letter_exchange,
            dead_letter_queue=config.dead_letter_queue,
            delivery_limit=config.consumer_delivery_limit,
        )

    def queue_name(self, event_type: str) -> str:
        return f"{self.queue_prefix}.{event_type}"


@dataclass(frozen=True, slots=True)
class Declared:
    queues: dict[str, AbstractQueue]  # by event type
    dead_letter_queue: AbstractQueue


async def declare_dead_letter_exchange(
    channel: AbstractChannel, topology: Topology
) -> AbstractExchange:
    return await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )


async def declare(channel: AbstractChannel, topology: Topology, event_types: list[str]) -> Declared:
    billing = await channel.declare_exchange(
        topology.billing_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead_letters = await declare_dead_letter_exchange(channel, topology)
    dead_letter_queue = await channel.declare_queue(
        topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letter_queue.bind(dead_letters, routing_key="#")
    queues = {}
    for event_type in event_types:
        queue = await channel.declare_queue(
            topology.queue_name(event_type),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": topology.delivery_limit,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
            },
        )
        await queue.bind(billing, routing_key=event_type)
        queues[event_type] = queue
    return Declared(queues, dead_letter_queue)
