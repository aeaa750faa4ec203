"""WatchEvents requests: filters, cursor and options validated, bad fields named."""

from __future__ import annotations

from typing import Any

import pytest

from repository.outbox import EventFilter, StoredEvent
from service.errors import InvalidArgument
from service.outbox.watch import parse_request


def parse(**fields: Any) -> Any:
    request: dict[str, Any] = {
        "event_types": [],
        "customer_id": "",
        "payment_id": "",
        "subscription_id": "",
        "after": "",
        "live_only": False,
        "until_caught_up": False,
    }
    request.update(fields)
    return parse_request(**request)


def event(event_type: str, customer: str | None = "cus_1", payment: str | None = "pay_1") -> Any:
    return StoredEvent(1, event_type, customer, payment, "sub_1", b"")


def test_exact_types_and_prefixes_are_told_apart() -> None:
    request = parse(event_types=["refund.", "payment.recorded", "retry.attempted"])
    assert request.wanted.types == frozenset({"payment.recorded", "retry.attempted"})
    assert request.wanted.prefixes == ("refund.",)
    assert request.after is None


def test_empty_filters_match_everything() -> None:
    wanted = parse().wanted
    assert wanted == EventFilter()
    assert wanted.matches(event("refund.created", None, None))


def test_a_filter_matches_by_type_or_prefix_and_every_id_given() -> None:
    wanted = parse(event_types=["refund.", "payment.recorded"], customer_id="cus_1").wanted
    assert wanted.matches(event("refund.failed"))
    assert wanted.matches(event("payment.recorded"))
    assert not wanted.matches(event("payment.recovered"))
    assert not wanted.matches(event("refund.failed", customer="cus_2"))
    assert not wanted.matches(event("refund.failed", customer=None))
    by_payment = parse(payment_id="pay_1", customer_id="cus_1").wanted
    assert by_payment.matches(event("retry.attempted"))
    assert not by_payment.matches(event("retry.attempted", payment="pay_2"))


def test_the_cursor_is_a_position() -> None:
    assert parse(after="42").after == 42
    assert parse(after=str(2**63 - 1)).after == 2**63 - 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_types": ["refund"] * 51}, "event_types"),
        ({"event_types": ["refund.created", "REFUND"]}, "event_types[1]"),
        ({"event_types": [".refund"]}, "event_types[0]"),
        ({"event_types": ["refund created"]}, "event_types[0]"),
        ({"event_types": ["r" * 101]}, "event_types[0]"),
        ({"customer_id": "c" * 201}, "customer_id"),
        ({"subscription_id": "sub\t1"}, "subscription_id"),
        ({"after": "1.5"}, "after"),
        ({"after": "٣"}, "after"),  # a digit, but not an ASCII one
        ({"after": str(2**63)}, "after"),
        ({"after": "7", "live_only": True}, "live_only"),
        ({"live_only": True, "until_caught_up": True}, "until_caught_up"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse(**fields)
    assert raised.value.field == field
