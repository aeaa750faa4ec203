"""Adyen's refusals in the one decline vocabulary the retry engine reads.

A payment Adyen does not authorise answers ``resultCode`` ``Refused`` (or ``Error``,
``Cancelled``) with three kinds of reason, from the most to the least normalised:

* ``refusalReasonCode`` and ``refusalReason``: Adyen's own mapping of every scheme's answer to
  about forty reasons (a number as a string, and its text). Notifications (``AUTHORISATION``
  with ``success`` ``false``) carry only the text, in their ``reason`` field.
* ``additionalData.refusalReasonRaw``: the issuer's raw answer, ``"<code> : <text>"`` (e.g.
  ``"51 : Insufficient funds/over credit limit"``), sent when the merchant account enables
  "Raw acquirer result". For a Visa card the code is Visa's response code, which puts the
  decline in one of Visa's four retry categories; for other networks it is that network's own
  code and is not used here.
* ``additionalData.merchantAdviceCode``: Mastercard's merchant advice code for a refused
  Mastercard payment, ``"<NN>: <text>"`` or ``"<NN>"``.

:func:`normalise` turns them into our :class:`Refusal`: the decline code in Stripe's vocabulary
(:data:`service.domain.decline_codes.DECLINE_CODES` classifies it), the card network (from the
response's ``paymentMethod.brand``, else ``additionalData.paymentMethod``), the Visa response
code and the Mastercard advice code, each kept only for its own network. The classifier then
lets the network's codes overrule the reason (a Visa category-1 code makes any refusal hard).

Sources named in the ``# source:`` comments:

- "refusal reasons": https://docs.adyen.com/development-resources/refusal-reasons (every
  ``refusalReasonCode`` with its ``refusalReason`` and description; read 2026-11);
- "raw responses": https://docs.adyen.com/development-resources/raw-acquirer-responses (the
  ``refusalReasonRaw`` field and its ``"<code>: <text>"`` form);
- "Stripe": Stripe's decline-code list, https://docs.stripe.com/declines/codes (the code on
  our side of each row: the one whose meaning is closest).

Codes that only happen at a point-of-sale terminal (contactless fallback, chip downgrade,
penalty box, another interface) are left out: a stored card charged off-session never gets
them, and an unknown code reads as ``generic_decline`` (a soft decline), never as an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.gateways.base import CardNetwork

# ``refusalReasonCode`` -> (Adyen's ``refusalReason``, our decline code).
REFUSAL_REASONS: Final[dict[str, tuple[str, str]]] = {
    "2": ("Refused", "generic_decline"),  # source: refusal reasons; Stripe
    "3": ("Referral", "call_issuer"),  # source: refusal reasons; Stripe
    "4": ("Acquirer Error", "processing_error"),  # source: refusal reasons; Stripe
    "5": ("Blocked Card", "restricted_card"),  # source: refusal reasons; Stripe
    "6": ("Expired Card", "expired_card"),  # source: refusal reasons; Stripe
    "7": ("Invalid Amount", "invalid_amount"),  # source: refusal reasons; Stripe
    "8": ("Invalid Card Number", "invalid_number"),  # source: refusal reasons; Stripe
    "9": ("Issuer Unavailable", "issuer_not_available"),  # source: refusal reasons; Stripe
    "10": ("Not supported", "card_not_supported"),  # source: refusal reasons; Stripe
    "11": ("3D Not Authenticated", "authentication_required"),  # source: refusal reasons
    "12": ("Not enough balance", "insufficient_funds"),  # source: refusal reasons; Stripe
    "14": ("Acquirer Fraud", "fraudulent"),  # source: refusal reasons; Stripe
    "15": ("Cancelled", "generic_decline"),  # source: refusal reasons
    "16": ("Shopper Cancelled", "generic_decline"),  # source: refusal reasons
    "17": ("Invalid Pin", "incorrect_pin"),  # source: refusal reasons; Stripe
    "18": ("Pin tries exceeded", "pin_try_exceeded"),  # source: refusal reasons; Stripe
    "19": ("Pin validation not possible", "processing_error"),  # source: refusal reasons
    # Adyen's own risk checks scored the payment 100 or more: never retry this card.
    "20": ("FRAUD", "fraudulent"),  # source: refusal reasons
    # Adyen did not submit it correctly for processing: nothing the card did.
    "21": ("Not Submitted", "processing_error"),  # source: refusal reasons
    "22": ("FRAUD-CANCELLED", "fraudulent"),  # source: refusal reasons
    "23": ("Transaction Not Permitted", "transaction_not_allowed"),  # source: refusal reasons
    "24": ("CVC Declined", "incorrect_cvc"),  # source: refusal reasons; Stripe
    "25": ("Restricted Card", "restricted_card"),  # source: refusal reasons; Stripe
    # The shopper revoked this recurring payment: the plan stops, not only this card.
    "26": ("Revocation Of Auth", "revocation_of_authorization"),  # source: refusal reasons
    # Every raw answer Adyen cannot map to a more specific reason.
    "27": ("Declined Non Generic", "generic_decline"),  # source: refusal reasons
    "28": ("Withdrawal amount exceeded", "card_velocity_exceeded"),  # source: refusal reasons
    "29": (  # source: refusal reasons; Stripe
        "Withdrawal count exceeded",
        "withdrawal_count_limit_exceeded",
    ),
    # The issuer suspects fraud: conservative, never retry this card (a Visa 59 says the same).
    "31": ("Issuer Suspected Fraud", "fraudulent"),  # source: refusal reasons
    "32": ("AVS Declined", "incorrect_zip"),  # source: refusal reasons; Stripe
    "33": (  # source: refusal reasons; Stripe
        "Card requires online pin",
        "online_or_offline_pin_required",
    ),
    "34": ("No checking account available on Card", "invalid_account"),  # source: refusal reasons
    "35": ("No savings account available on Card", "invalid_account"),  # source: refusal reasons
    "36": ("Mobile pin required", "authentication_required"),  # source: refusal reasons
    "38": ("Authentication required", "authentication_required"),  # source: refusal reasons
    "39": ("RReq not received from DS", "authentication_required"),  # source: refusal reasons
    "42": ("3DS Authentication Error", "authentication_required"),  # source: refusal reasons
    "43": ("Online PIN required", "online_or_offline_pin_required"),  # source: refusal reasons
    # Adyen refused to send it: more retries of this card would cost scheme fees.
    "46": (  # source: refusal reasons
        "Transaction blocked by Adyen to prevent excessive retry fees",
        "do_not_try_again",
    ),
}

# The same table by ``refusalReason`` text (lower case), for notifications, which carry no code.
_BY_TEXT: Final[dict[str, str]] = {text.lower(): code for text, code in REFUSAL_REASONS.values()}

# What a refusal without any reason is; also an unrecognised code or text.
GENERIC_DECLINE: Final = "generic_decline"

# ``paymentMethod.brand`` (or ``additionalData.paymentMethod``) -> our network. Adyen's brands
# for the four networks with retry rules; any other brand (jcb, cup, diners, cartebancaire,
# ...) is OTHER. Maestro is a Mastercard brand, and Mastercard's advice codes apply to it.
_BRANDS: Final[dict[str, CardNetwork]] = {
    "visa": CardNetwork.VISA,  # source: https://docs.adyen.com/payment-methods/cards
    "electron": CardNetwork.VISA,  # Visa Electron
    "vpay": CardNetwork.VISA,  # V PAY (Visa)
    "mc": CardNetwork.MASTERCARD,  # source: https://docs.adyen.com/payment-methods/cards
    "maestro": CardNetwork.MASTERCARD,
    "amex": CardNetwork.AMEX,
    "discover": CardNetwork.DISCOVER,
}
# Variants (``paymentMethodVariant``, e.g. ``visacredit``, ``mcdebit``) start with the brand.
_BRAND_PREFIXES: Final = (("visa", CardNetwork.VISA), ("mc", CardNetwork.MASTERCARD))

# The code at the start of ``refusalReasonRaw``: "51 : Insufficient funds", "N7: ..." (one
# leading status word, "DECLINED 05 : ...", is tolerated). Two characters, as Visa's codes are.
_RAW_CODE: Final = re.compile(r"^\s*(?:[A-Za-z]+\s+)?([0-9A-Z]{2})\s*:")
# A merchant advice code: "21", "21: Payment Cancellation", "21 : ...".
_ADVICE_CODE: Final = re.compile(r"^\s*([0-9]{2})(?:\s*:|\s*$)")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An Adyen refusal in our vocabulary (the fields of a declined ``ChargeOutcome``)."""

    decline_code: str
    network: str  # a CardNetwork value, "" when Adyen did not say
    visa_response_code: str = ""
    mc_advice_code: str = ""
    reason: str = ""  # Adyen's words, for the outcome's message: "12 Not enough balance"


def decline_code(refusal_reason_code: object, refusal_reason: object) -> str:
    """Our decline code of Adyen's ``refusalReasonCode`` (else its ``refusalReason`` text);
    ``generic_decline`` for a refusal Adyen gave no known reason for."""
    code = _text(refusal_reason_code)
    if code in REFUSAL_REASONS:
        return REFUSAL_REASONS[code][1]
    return _BY_TEXT.get(_text(refusal_reason).lower(), GENERIC_DECLINE)


def network(brand: object) -> str:
    """Our network of an Adyen brand or variant; "" when none is given."""
    name = _text(brand).lower()
    if not name:
        return CardNetwork.UNKNOWN
    found = _BRANDS.get(name)
    if found is not None:
        return found
    for prefix, prefixed in _BRAND_PREFIXES:
        if name.startswith(prefix):
            return prefixed
    return CardNetwork.OTHER


def raw_response_code(refusal_reason_raw: object) -> str:
    """The issuer's code at the start of ``refusalReasonRaw``; "" when there is none (e.g.
    ``"AUTHORISED"``, or a text Adyen did not prefix with a code)."""
    match = _RAW_CODE.match(_text(refusal_reason_raw))
    return match.group(1) if match else ""


def advice_code(merchant_advice_code: object) -> str:
    """The two digits of ``merchantAdviceCode``; "" when absent or malformed."""
    match = _ADVICE_CODE.match(_text(merchant_advice_code))
    return match.group(1) if match else ""


def normalise(
    *,
    refusal_reason_code: object,
    refusal_reason: object,
    additional_data: Mapping[str, object] | None,
    brand: object = None,
) -> Refusal:
    """Our refusal for Adyen's fields: ``refusalReasonCode`` and ``refusalReason`` of a
    payment response (or the ``reason`` of a notification, with no code), its
    ``additionalData`` and ``paymentMethod.brand`` (else ``additionalData.paymentMethod``)."""
    data = additional_data or {}
    card_network = network(brand) or network(data.get("paymentMethod"))
    raw = raw_response_code(data.get("refusalReasonRaw"))
    mac = advice_code(data.get("merchantAdviceCode"))
    code, text = _text(refusal_reason_code), _text(refusal_reason)
    return Refusal(
        decline_code=decline_code(code, text),
        network=card_network,
        visa_response_code=raw if card_network == CardNetwork.VISA else "",
        mc_advice_code=mac if card_network == CardNetwork.MASTERCARD else "",
        reason=" ".join(part for part in (code, text) if part),
    )


def _text(value: object) -> str:
    """A JSON scalar as text: Adyen sends codes as strings, but a number is read the same."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | str):
        return str(value).strip()
    return ""
