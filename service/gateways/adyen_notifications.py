"""Adyen's standard webhooks (notifications): parsed, verified by their HMAC signature as Adyen
documents it, and read into the notification vocabulary (``notifications``).

**The request.** A JSON body ``{"live": "false", "notificationItems": [{"NotificationRequestItem":
{...}}]}`` (one item per request for JSON webhooks; several are accepted). Adyen expects HTTP 200
with the body ``[accepted]``; anything else and it sends the request again later.

**The signature** is per item, in ``additionalData.hmacSignature``: HMAC-SHA256, keyed with the
HMAC key the Customer Area shows (hex: the key is its bytes, decoded from hex), over the item's

    pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success

(``value`` and ``currency`` from ``amount``; a missing field is empty), base64-encoded. Compared
in constant time. Adyen asks merchants to accept the previous key for a while after generating a
new one, so several keys may be configured; an item signed by any of them is genuine.

**The unique key** of an event: ``eventCode``, ``pspReference`` and ``success`` (Adyen may send
the same notification more than once; the same code and reference with the other ``success`` is
another event).

**Events read** (anything else is stored and ignored):

==================================  ===========================================================
``REFUND``                          the refund ``pspReference`` (the refund request's reference;
                                    ``originalReference`` is the payment's) succeeded, or with
                                    ``success`` false was refused (``reason``)
``REFUND_FAILED``                   a refund accepted earlier failed after all
``AUTHORISATION``                   the payment ``pspReference`` (a retry attempt's charge) was
                                    authorised or refused
``NOTIFICATION_OF_CHARGEBACK``,     a dispute ``pspReference`` of the payment
``CHARGEBACK``                      ``originalReference``; ``additionalData.disputeStatus`` says
                                    whether it is decided
==================================  ===========================================================

A refund's and a payment's outcome are mapped by the gateway module (``adyen_gateway``'s
``outcome_for_refund_notification`` / ``outcome_for_authorisation_notification``: one mapping).
The Checkout API cannot read a refund or a payment afterwards, so what those need is kept in the
stored facts (:func:`refund_outcome`, :func:`charge_outcome` read it back for the billing jobs);
no card details are kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from service.domain.money import Money
from service.gateways.base import ChargeOutcome, RefundOutcome
from service.gateways.notifications import (
    ChargeReported,
    DisputeReported,
    DisputeStatus,
    Effect,
    MalformedNotification,
    NotHandled,
    Notification,
    RefundReported,
)

GATEWAY: Final = "adyen"
ACCEPTED: Final = "[accepted]"  # the body Adyen expects in the answer
SIGNED_FIELDS: Final = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "value",
    "currency",
    "eventCode",
    "success",
)
DISPUTE_EVENTS: Final = {"NOTIFICATION_OF_CHARGEBACK": 0, "CHARGEBACK": 1}  # -> stage
# Where an AUTHORISATION's outcome is kept in the stored facts (read by ``charge_outcome``), and
# the ``additionalData`` keys a refusal is normalised from.
AUTHORISATION_FACT: Final = "authorisation"
REFUND_FACT: Final = "refund"
_REFUSAL_DATA: Final = ("refusalReasonRaw", "merchantAdviceCode", "paymentMethod")
# ``additionalData.disputeStatus`` of a decided dispute -> our status.
_DECIDED: Final = {
    "Won": DisputeStatus.WON,
    "Lost": DisputeStatus.LOST,
    "Accepted": DisputeStatus.LOST,  # the merchant accepted the chargeback
    "Expired": DisputeStatus.LOST,  # the defence period ended without a defence
}


@dataclass(frozen=True, slots=True)
class NotificationItem:
    """One ``NotificationRequestItem``, as sent (``fields``) and read."""

    fields: Mapping[str, Any]

    @property
    def event_code(self) -> str:
        return _text(self.fields, "eventCode")

    @property
    def psp_reference(self) -> str:
        return _text(self.fields, "pspReference")

    @property
    def original_reference(self) -> str:
        return _text(self.fields, "originalReference")

    @property
    def success(self) -> bool:
        return _signed_value(self.fields, "success") == "true"

    @property
    def reason(self) -> str:
        return _text(self.fields, "reason")

    @property
    def additional_data(self) -> Mapping[str, Any]:
        data = self.fields.get("additionalData")
        return data if isinstance(data, dict) else {}

    @property
    def signature(self) -> str:
        return _text(self.additional_data, "hmacSignature")

    @property
    def event_id(self) -> str:
        """Adyen's unique key of the event: eventCode, pspReference and success."""
        return f"{self.event_code}:{self.psp_reference}:{_signed_value(self.fields, 'success')}"

    @property
    def amount(self) -> Money | None:
        amount = self.fields.get("amount")
        if not isinstance(amount, dict):
            return None
        value, currency = amount.get("value"), amount.get("currency")
        if type(value) is not int or not isinstance(currency, str) or len(currency) != 3:
            return None
        return Money(currency.upper(), value)


def parse(body: bytes) -> list[NotificationItem]:
    """The items of a notification request; :class:`MalformedNotification` when the body is not
    one (not JSON, no items, an item without its event code, reference or outcome)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedNotification(f"adyen: the body is not JSON: {exc}") from exc
    entries = document.get("notificationItems") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise MalformedNotification("adyen: the body has no notificationItems")
    items = []
    for index, entry in enumerate(entries):
        fields = entry.get("NotificationRequestItem") if isinstance(entry, dict) else None
        if not isinstance(fields, dict):
            raise MalformedNotification(f"adyen: notificationItems[{index}] is not an item")
        item = NotificationItem(fields)
        if not item.event_code or not item.psp_reference:
            raise MalformedNotification(
                f"adyen: notificationItems[{index}] has no eventCode or pspReference"
            )
        if _signed_value(fields, "success") not in ("true", "false"):
            raise MalformedNotification(f"adyen: notificationItems[{index}].success is not a flag")
        items.append(item)
    return items


def parse_hmac_keys(text: str) -> tuple[bytes, ...]:
    """The HMAC keys of a setting: hex, separated by commas (the current key first, then keys
    still accepted while Adyen switches over)."""
    keys = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            keys.append(binascii.unhexlify(part))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("each key must be hexadecimal, as Adyen shows it") from exc
    return tuple(keys)


def signing_string(fields: Mapping[str, Any]) -> str:
    """The text Adyen signs for one item."""
    return ":".join(_signed_value(fields, name) for name in SIGNED_FIELDS)


def signature_of(fields: Mapping[str, Any], key: bytes) -> str:
    """The item's signature under ``key`` (base64 of HMAC-SHA256 over :func:`signing_string`)."""
    digest = hmac.new(key, signing_string(fields).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(item: NotificationItem, keys: Sequence[bytes]) -> bool:
    """Whether one of ``keys`` signed ``item``; every key is checked, in constant time each."""
    given = item.signature.encode("ascii", "replace")
    valid = False
    for key in keys:
        expected = signature_of(item.fields, key).encode("ascii")
        valid |= hmac.compare_digest(expected, given)
    return valid and bool(given)


def notification_of(item: NotificationItem, *, live: bool | None = None) -> Notification:
    """What ``item`` says, for the application layer."""
    effect = _effect(item)
    amount = item.amount
    facts: dict[str, Any] = {
        "success": item.success,
        "original_reference": item.original_reference,
        "merchant_reference": _text(item.fields, "merchantReference"),
        "reason": item.reason,
        "amount": amount.minor_units if amount else None,
        "currency": amount.currency if amount else "",
    }
    if item.event_code in DISPUTE_EVENTS:
        facts["dispute_status"] = _text(item.additional_data, "disputeStatus")
    if item.event_code == "AUTHORISATION":
        facts[AUTHORISATION_FACT] = _authorisation(item)
    if item.event_code in ("REFUND", "REFUND_FAILED"):
        facts[REFUND_FACT] = {
            "eventCode": item.event_code,
            "pspReference": item.psp_reference,
            "success": _signed_value(item.fields, "success"),
            "reason": item.reason,
        }
    if live is not None:
        facts["live"] = live
    return Notification(
        gateway=GATEWAY,
        event_id=item.event_id,
        event_type=item.event_code,
        object_id=item.psp_reference,
        effect=effect,
        occurred_at=_time(_text(item.fields, "eventDate")),
        facts=facts,
    )


def _effect(item: NotificationItem) -> Effect:
    code, reference = item.event_code, item.psp_reference
    if code in ("REFUND", "REFUND_FAILED"):
        # The gateway module's mapping: a refund's outcome is read in one place.
        from service.gateways.adyen_gateway import outcome_for_refund_notification

        return RefundReported(reference, outcome_for_refund_notification(item.fields))
    if code == "AUTHORISATION":
        return ChargeReported(reference, item.success, "" if item.success else item.reason)
    if code in DISPUTE_EVENTS:
        dispute_status = _text(item.additional_data, "disputeStatus")
        decided = _DECIDED.get(dispute_status)
        return DisputeReported(
            dispute_id=reference,
            transaction_ids=(item.original_reference,) if item.original_reference else (),
            amount=item.amount,
            reason=item.reason or _text(item.additional_data, "chargebackReasonCode"),
            status=decided or DisputeStatus.OPEN,
            gateway_status=dispute_status or code,
            stage=2 if decided else DISPUTE_EVENTS[code],
        )
    return NotHandled(f"adyen event code {code} is not used by this service")


def _authorisation(item: NotificationItem) -> dict[str, Any]:
    """What :func:`charge_outcome` needs of an AUTHORISATION item, and nothing else (no card
    details): its outcome, reason, brand and the network's raw codes."""
    data = item.additional_data
    return {
        "eventCode": item.event_code,
        "pspReference": item.psp_reference,
        "success": _signed_value(item.fields, "success"),
        "reason": item.reason,
        "paymentMethod": _text(item.fields, "paymentMethod"),
        "additionalData": {k: data[k] for k in _REFUSAL_DATA if isinstance(data.get(k), str)},
    }


def charge_outcome(facts: Mapping[str, Any]) -> ChargeOutcome | None:
    """The charge outcome an AUTHORISATION webhook reported, from its stored facts: what reading
    the pending charge would give, had the Checkout API a call to read a payment (it has not:
    the notification is the only place Adyen tells it). None when the facts do not have it."""
    item = facts.get(AUTHORISATION_FACT)
    if not isinstance(item, dict):
        return None
    from service.gateways.adyen_gateway import outcome_for_authorisation_notification

    return outcome_for_authorisation_notification(item)


def refund_outcome(facts: Mapping[str, Any]) -> RefundOutcome | None:
    """The refund outcome a REFUND or REFUND_FAILED webhook reported, from its stored facts:
    what reading the refund would give, had the Checkout API a call to read one. None when the
    facts do not have it."""
    item = facts.get(REFUND_FACT)
    if not isinstance(item, dict):
        return None
    from service.gateways.adyen_gateway import outcome_for_refund_notification

    return outcome_for_refund_notification(item)


def live_flag(body: bytes) -> bool | None:
    """The request's ``live`` flag ("true" / "false"), when it has one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    live = document.get("live") if isinstance(document, dict) else None
    return live == "true" if isinstance(live, str) else None


def _signed_value(fields: Mapping[str, Any], name: str) -> str:
    """A field as it enters the signing string: ``value`` and ``currency`` from ``amount``,
    a flag as ``true`` / ``false``, a missing one empty."""
    if name in ("value", "currency"):
        amount = fields.get("amount")
        value = amount.get(name) if isinstance(amount, dict) else None
    else:
        value = fields.get(name)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def _time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
