"""Reading gateway notifications without a server: Adyen's HMAC against the example Adyen
documents, its unique key and parse errors; Stripe events mapped to the one vocabulary."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from service.gateways import adyen_notifications as adyen
from service.gateways import stripe_events
from service.gateways.base import OutcomeKind
from service.gateways.notifications import (
    ChargeReported,
    DisputeReported,
    DisputeStatus,
    InvalidSignature,
    MalformedNotification,
    NotHandled,
    RefundReported,
)

# The example of Adyen's "Verify HMAC signatures" documentation: this key signs this item.
DOC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
DOC_ITEM: dict[str, Any] = {
    "additionalData": {"hmacSignature": "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="},
    "amount": {"currency": "EUR", "value": 1130},
    "eventCode": "AUTHORISATION",
    "eventDate": "2019-06-28T18:03:50+01:00",
    "merchantAccountCode": "TestMerchant",
    "merchantReference": "TestPayment-1407325143704",
    "pspReference": "7914073381342284",
    "success": "true",
}


def body(*items: dict[str, Any]) -> bytes:
    wrapped = [{"NotificationRequestItem": item} for item in items]
    return json.dumps({"live": "false", "notificationItems": wrapped}).encode()


def test_adyens_documented_example_verifies() -> None:
    (item,) = adyen.parse(body(DOC_ITEM))
    keys = adyen.parse_hmac_keys(DOC_KEY)
    assert adyen.signing_string(item.fields) == (
        "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
    )
    assert adyen.verify(item, keys)
    assert adyen.verify(item, adyen.parse_hmac_keys(f"{'00' * 32}, {DOC_KEY}"))  # rotation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pspReference", "7914073381342285"),
        ("merchantReference", "TestPayment-other"),
        ("success", "false"),
        ("eventCode", "REFUND"),
    ],
)
def test_a_changed_signed_field_fails(field: str, value: str) -> None:
    (item,) = adyen.parse(body({**DOC_ITEM, field: value}))
    assert not adyen.verify(item, adyen.parse_hmac_keys(DOC_KEY))


def test_a_changed_amount_or_a_missing_signature_fails() -> None:
    keys = adyen.parse_hmac_keys(DOC_KEY)
    (changed,) = adyen.parse(body({**DOC_ITEM, "amount": {"currency": "EUR", "value": 1131}}))
    (unsigned,) = adyen.parse(body({**DOC_ITEM, "additionalData": {}}))
    assert not adyen.verify(changed, keys)
    assert not adyen.verify(unsigned, keys)
    assert not adyen.verify(adyen.parse(body(DOC_ITEM))[0], ())


def test_the_unique_key_is_event_code_reference_and_success() -> None:
    (item,) = adyen.parse(body(DOC_ITEM))
    assert item.event_id == "AUTHORISATION:7914073381342284:true"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b"[]",
        b'{"notificationItems": []}',
        b'{"notificationItems": [{"Other": {}}]}',
        json.dumps(
            {"notificationItems": [{"NotificationRequestItem": {"eventCode": "X"}}]}
        ).encode(),
        body({**DOC_ITEM, "success": "maybe"}),
    ],
)
def test_what_is_not_a_notification_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedNotification):
        adyen.parse(raw)


def test_hmac_keys_are_hex() -> None:
    assert adyen.parse_hmac_keys("") == ()
    assert adyen.parse_hmac_keys(" 0a0b , 0C0D ") == (b"\x0a\x0b", b"\x0c\x0d")
    with pytest.raises(ValueError, match="hexadecimal"):
        adyen.parse_hmac_keys("0a0b,xyz")


def test_adyen_items_are_read_into_effects() -> None:
    def effect_of(**fields: Any) -> Any:
        (item,) = adyen.parse(body({**DOC_ITEM, **fields}))
        return adyen.notification_of(item).effect

    refunded = effect_of(eventCode="REFUND", pspReference="R1", originalReference="P1")
    assert isinstance(refunded, RefundReported)
    assert (refunded.gateway_refund_id, refunded.outcome.kind) == ("R1", OutcomeKind.SUCCEEDED)
    refused = effect_of(eventCode="REFUND", pspReference="R1", success="false", reason="No")
    assert isinstance(refused, RefundReported)
    assert refused.outcome.kind is OutcomeKind.DECLINED
    assert not refused.outcome.retryable
    charged = effect_of(success="false", reason="Not enough balance")
    assert charged == ChargeReported("7914073381342284", False, "Not enough balance")
    disputed = effect_of(
        eventCode="CHARGEBACK",
        pspReference="D1",
        originalReference="P1",
        additionalData={"disputeStatus": "Lost"},
    )
    assert isinstance(disputed, DisputeReported)
    assert (disputed.transaction_ids, disputed.status, disputed.stage) == (
        ("P1",),
        DisputeStatus.LOST,
        2,
    )
    assert isinstance(effect_of(eventCode="CAPTURE"), NotHandled)


def test_an_authorisation_keeps_what_the_retry_job_reads_and_no_card_details() -> None:
    item = {
        **DOC_ITEM,
        "success": "false",
        "reason": "Not enough balance",
        "paymentMethod": "visa",
        "additionalData": {
            "refusalReasonRaw": "51 : Insufficient funds",
            "cardSummary": "1111",
            "expiryDate": "03/2030",
        },
    }
    (parsed,) = adyen.parse(body(item))
    facts = adyen.notification_of(parsed).facts
    stored = json.dumps(facts)
    assert "1111" not in stored
    assert "03/2030" not in stored
    outcome = adyen.charge_outcome(facts)
    assert outcome is not None
    assert (outcome.kind, outcome.decline_code, outcome.visa_response_code) == (
        OutcomeKind.DECLINED,
        "insufficient_funds",
        "51",
    )
    assert adyen.charge_outcome({}) is None


# -- Stripe ------------------------------------------------------------------------------------

SECRET = "whsec_unit"


def signed(payload: str, secret: str = SECRET) -> str:
    at = int(time.time())
    digest = hmac.new(secret.encode(), f"{at}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def event(event_type: str, obj: dict[str, Any]) -> Any:
    payload = json.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "type": event_type,
            "created": 1,
            "data": {"object": obj},
        }
    )
    return stripe_events.notification_of(
        stripe_events.verify(payload.encode(), signed(payload), SECRET)
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("succeeded", OutcomeKind.SUCCEEDED),
        ("pending", OutcomeKind.PENDING),
        ("failed", OutcomeKind.DECLINED),
        ("requires_action", OutcomeKind.REQUIRES_ACTION),
    ],
)
def test_a_refund_event_carries_the_refunds_outcome(status: str, kind: OutcomeKind) -> None:
    refund = {"id": "re_1", "object": "refund", "status": status, "failure_reason": None}
    if status == "failed":
        refund["failure_reason"] = "expired_or_canceled_card"
    n = event("refund.updated", refund)
    assert isinstance(n.effect, RefundReported)
    assert (n.event_id, n.object_id, n.effect.outcome.kind) == ("evt_1", "re_1", kind)


def test_a_refund_object_without_its_fields_is_not_used_nor_a_crash() -> None:
    effect = event("refund.failed", {"id": "re_1", "object": "refund", "status": "failed"}).effect
    assert isinstance(effect, NotHandled)
    assert "failure_reason" in effect.reason


@pytest.mark.parametrize(
    ("event_type", "status", "expected"),
    [
        ("charge.dispute.created", "needs_response", (0, DisputeStatus.OPEN)),
        ("charge.dispute.updated", "under_review", (1, DisputeStatus.OPEN)),
        ("charge.dispute.closed", "won", (2, DisputeStatus.WON)),
        ("charge.dispute.closed", "lost", (2, DisputeStatus.LOST)),
        ("charge.dispute.closed", "warning_closed", (2, DisputeStatus.CLOSED)),
        ("charge.dispute.closed", "something_new", (2, DisputeStatus.CLOSED)),
    ],
)
def test_a_dispute_event_has_a_stage_and_status(
    event_type: str, status: str, expected: tuple[int, DisputeStatus]
) -> None:
    obj = {
        "id": "dp_1",
        "object": "dispute",
        "status": status,
        "charge": "ch_1",
        "payment_intent": "pi_1",
        "amount": 700,
        "currency": "eur",
        "reason": "fraudulent",
    }
    effect = event(event_type, obj).effect
    assert isinstance(effect, DisputeReported)
    assert (effect.stage, effect.status) == expected
    assert effect.transaction_ids == ("pi_1", "ch_1")
    assert effect.amount is not None
    assert (effect.amount.currency, effect.amount.minor_units) == ("EUR", 700)


def test_payment_intent_events_report_the_charge() -> None:
    ok = event("payment_intent.succeeded", {"id": "pi_1", "object": "payment_intent"})
    failed = event(
        "payment_intent.payment_failed",
        {
            "id": "pi_2",
            "object": "payment_intent",
            "last_payment_error": {"code": "card_declined", "decline_code": "do_not_honor"},
        },
    )
    assert ok.effect == ChargeReported("pi_1", True)
    assert failed.effect == ChargeReported("pi_2", False, "do_not_honor")
    assert isinstance(event("refund.updated", {"id": "x", "object": "charge"}).effect, NotHandled)


@pytest.mark.parametrize(
    ("payload", "header", "secret"),
    [
        (b"{}", signed("{}"), ""),  # no secret configured
        (b"{}", None, SECRET),
        (b"{}", "garbage", SECRET),
        (b"{}", signed("{}", "whsec_other"), SECRET),
        (b"\xff{}", signed("{}"), SECRET),
    ],
)
def test_stripe_refuses_what_it_did_not_sign(
    payload: bytes, header: str | None, secret: str
) -> None:
    with pytest.raises(InvalidSignature):
        stripe_events.verify(payload, header, secret)
