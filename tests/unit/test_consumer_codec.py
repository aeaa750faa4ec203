"""Reading consumed messages (both encodings, the type, the event id) and what a failure
deserves, without a broker."""

from __future__ import annotations

import asyncpg
import pytest

from consumers.codec import JSON, PROTOBUF, Envelope, decode, encode, media_type
from consumers.failures import Malformed, RetryLater, Verdict, verdict
from consumers.handlers import request_id_of
from consumers.runner import retry_delay
from refundretry.v1 import billing_events_pb2 as ev
from service.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

EVENT = ev.PaymentFailed(event_id="evt_1", payment_id="inv_1")


def envelope(body: bytes, content_type: str | None = PROTOBUF, **kwargs: object) -> Envelope:
    fields: dict[str, object] = {"type": "payment.failed", "headers": {}, "message_id": None}
    fields.update(kwargs)
    return Envelope(body=body, content_type=content_type, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON, "application/json; charset=utf-8"])
def test_both_encodings_decode_to_the_same_event(content_type: str) -> None:
    body = encode(EVENT, content_type)
    assert decode(envelope(body, content_type), "payment.failed", ev.PaymentFailed) == (
        "evt_1",
        EVENT,
    )


def test_json_accepts_the_proto_field_names_too() -> None:
    body = b'{"event_id": "evt_1", "payment_id": "inv_1"}'
    assert decode(envelope(body, JSON), "payment.failed", ev.PaymentFailed)[1] == EVENT


def test_the_type_may_be_a_header_and_the_message_id_the_event_id() -> None:
    body = encode(ev.PaymentFailed(payment_id="inv_1"))
    event_id, _ = decode(
        envelope(body, type=None, headers={"type": b"payment.failed"}, message_id="m-1"),
        "payment.failed",
        ev.PaymentFailed,
    )
    assert event_id == "m-1"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (envelope(b"\xff\xff"), "body is not a protobuf refundretry.v1.PaymentFailed"),
        (envelope(b"{", JSON), "body is not the JSON of a refundretry.v1.PaymentFailed"),
        (envelope(b"\xff", JSON), "body is not the JSON"),
        (envelope(b'{"eventId": "e", "nope": 1}', JSON), 'no field named "nope"'),
        (envelope(encode(EVENT), "text/plain"), "content_type 'text/plain' is neither"),
        (envelope(encode(EVENT), None), "content_type None is neither"),
        (envelope(encode(EVENT), type=None), "no event type"),
        (envelope(encode(EVENT), type="payment.succeeded"), "event type 'payment.succeeded'"),
        (envelope(encode(ev.PaymentFailed())), "event_id: is required"),
        (envelope(encode(ev.PaymentFailed(event_id="a b"))), "event_id: must be 1-128"),
    ],
)
def test_unreadable_messages_are_malformed(message: Envelope, reason: str) -> None:
    with pytest.raises(Malformed) as raised:
        decode(message, "payment.failed", ev.PaymentFailed)
    assert reason in str(raised.value)


def test_media_type() -> None:
    assert media_type("Application/JSON ; charset=utf-8") == JSON
    assert media_type(None) == ""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Malformed("x"), Verdict.DEAD_LETTER),
        (InvalidArgument("amount", "x"), Verdict.DEAD_LETTER),
        (NotFound("x"), Verdict.DEAD_LETTER),
        (FailedPrecondition("x"), Verdict.DEAD_LETTER),
        (Unavailable("x"), Verdict.RETRY),
        (RetryLater("x"), Verdict.RETRY),
        (asyncpg.exceptions.ConnectionDoesNotExistError("x"), Verdict.RETRY),
        (asyncpg.exceptions.AdminShutdownError("x"), Verdict.RETRY),
        (asyncpg.exceptions.DeadlockDetectedError("x"), Verdict.RETRY),
        (asyncpg.exceptions.SerializationError("x"), Verdict.RETRY),
        (ConnectionRefusedError(), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (KeyError("a bug"), Verdict.RETRY),  # unexpected: retried, then dead-lettered
    ],
)
def test_verdicts(error: Exception, expected: Verdict) -> None:
    assert verdict(error) is expected


def test_retry_delay_doubles_up_to_thirty_seconds() -> None:
    assert [retry_delay(0.5, d) for d in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(0.5, 20) == 30.0
    assert retry_delay(0, 5) == 0


def test_request_ids_of_events_fit_the_limit() -> None:
    assert request_id_of("payment.failed", "evt_1") == "payment.failed:evt_1"
    long = request_id_of("payment.failed", "e" * 128)
    assert len(long) <= 128
    assert long.startswith("payment.failed:sha256:")
