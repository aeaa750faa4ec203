"""Whom an event concerns: the ids WatchEvents filters by, found in any payload by one rule."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from refundretry.v1 import events_pb2, payment_pb2, refund_pb2, retry_plan_pb2
from service.outbox import subjects
from service.outbox.subjects import ID_FIELDS, Subjects


def test_a_refund_event_names_the_refunds_customer_payment_and_subscription() -> None:
    payload = events_pb2.RefundCreated(
        refund=refund_pb2.RefundEvent(
            refund_id="r1", customer_id="cus_1", payment_id="pay_1", subscription_id="sub_1"
        )
    )
    assert subjects.of_payload(payload) == Subjects("cus_1", "pay_1", "sub_1")


def test_a_plan_event_names_the_plans_ids() -> None:
    payload = events_pb2.RetryAttempted(
        plan=retry_plan_pb2.RetryPlan(plan_id="p1", customer_id="cus_2", payment_id="inv_2"),
        will_retry=True,
    )
    assert subjects.of_payload(payload) == Subjects("cus_2", "inv_2", None)


def test_own_fields_come_before_the_embedded_snapshots() -> None:
    payload = events_pb2.DunningNotice(
        customer_id="cus_own",
        subscription_id="sub_own",
        plan=retry_plan_pb2.RetryPlan(
            customer_id="cus_plan", payment_id="inv_plan", subscription_id="sub_plan"
        ),
    )
    assert subjects.of_payload(payload) == Subjects("cus_own", "inv_plan", "sub_own")


def test_settings_events_concern_nobody_and_empty_ids_are_absent() -> None:
    assert subjects.of_payload(events_pb2.RefundPolicyUpdated()) == Subjects()
    assert subjects.of_payload(events_pb2.DunningExclusionChanged(customer_id="cus_3")) == (
        Subjects(customer_id="cus_3")
    )
    empty = events_pb2.PaymentRecorded(payment=payment_pb2.Payment(payment_id="", customer_id=""))
    assert subjects.of_payload(empty) == Subjects()


def test_of_event_reads_the_payload_of_its_type() -> None:
    event = events_pb2.Event(
        type="payment.recorded",
        payment_recorded=events_pb2.PaymentRecorded(
            payment=payment_pb2.Payment(payment_id="pay_9", customer_id="cus_9")
        ),
    )
    assert subjects.of_event(event) == Subjects("cus_9", "pay_9", None)
    assert subjects.of_event(events_pb2.Event()) == Subjects()


def _payload_types() -> list[type[Message]]:
    oneof = events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"]
    types = [field.message_type for field in oneof.fields]
    return [getattr(events_pb2, t.name) for t in types if t is not None]


@pytest.mark.parametrize("payload_type", _payload_types(), ids=lambda t: t.__name__)
def test_every_payload_that_carries_an_id_yields_it(payload_type: type[Message]) -> None:
    """Whatever payload a new event type brings, an id it (or a snapshot it embeds) declares
    is found: the rule needs no list of event types."""
    payload = payload_type()
    expected: dict[str, str] = {}
    holders = [payload] + [
        getattr(payload, f.name)
        for f in payload.DESCRIPTOR.fields
        if f.message_type is not None and not f.is_repeated
    ]
    for name in ID_FIELDS:
        for holder in holders:
            if name in holder.DESCRIPTOR.fields_by_name:
                setattr(holder, name, f"{name}-{holder.DESCRIPTOR.name}")
                expected.setdefault(name, f"{name}-{holder.DESCRIPTOR.name}")
    assert subjects.of_payload(payload) == Subjects(**expected)
