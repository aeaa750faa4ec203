"""Decline classification: what one card decline means for a retry plan.

Three vocabularies meet here, each a table with the source of every row:

- the gateway's decline code, normalised to Stripe's vocabulary (``insufficient_funds``, ...);
- Visa's raw response code, which puts a Visa decline in one of Visa's four categories;
- Mastercard's merchant advice code (MAC).

Sources named in the ``# source:`` comments:

- "rules.md": /work/shared/card-network-rules.md, the processors' restatement of the Visa
  and Mastercard rules (Visa decline categories in force since 2021; Mastercard MACs);
- "Stripe": Stripe's decline-code list, https://docs.stripe.com/declines/codes (read
  2026-11; the codes the shared rules lack were added from it and classified here);
- "MAC list": Mastercard's merchant advice codes as gateways restate them (e.g.
  https://docs.assist.ru/display/DE/Merchant+Advice+Code+received+from+Mastercard).

:func:`classify` asks each table for a verdict and combines them; the strictest class wins
(HARD > CUSTOMER_ACTION > SOFT). So a network's raw code is stronger than the gateway's text:
a Visa category-1 code makes a ``generic_decline`` HARD, MAC 03/21 make any decline HARD, MAC
01 makes a soft one CUSTOMER_ACTION, and no gateway code makes a network's "never" retryable.
The reverse holds too, conservatively: ``stolen_card`` with Visa 51 (category 2) stays HARD.
MAC 24-30 (and 02) add a wait; the class then comes from the other codes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from service.errors import InvalidArgument


class DeclineClass(StrEnum):
    HARD = "HARD"  # never retry this payment method
    SOFT = "SOFT"  # retry later
    CUSTOMER_ACTION = (
        "CUSTOMER_ACTION"  # notify the customer; retry at once when the method changes
    )


class CardNetwork(StrEnum):
    VISA = "VISA"
    MASTERCARD = "MASTERCARD"
    AMEX = "AMEX"
    DISCOVER = "DISCOVER"
    OTHER = "OTHER"  # another network, or not known: both networks' codes are read


@dataclass(frozen=True, slots=True)
class Decline:
    # The normalised decline code (Stripe's vocabulary, e.g. "insufficient_funds"); "" if unknown.
    code: str
    network: CardNetwork = CardNetwork.OTHER
    visa_response_code: str = ""  # e.g. "51", "N7", "R1"; "" when unknown
    mc_advice_code: str = ""  # Mastercard merchant advice code, "01".."30"; "" when unknown


@dataclass(frozen=True, slots=True)
class Classification:
    decline_class: DeclineClass
    reason: str  # plain words naming the codes that decided
    visa_category: int | None  # 1..4 for a Visa decline with a response code (4: any other code)
    never_retry_card: bool  # Visa category 1, MAC 03 or 21, or a hard decline code
    stop_plan: bool  # the cardholder stopped the recurring payment (MAC 21, R0/R1/R3, ...)
    earliest_retry_after: timedelta | None  # MAC 24..30 (1 h .. 10 days); MAC 02: 72 h
    rule_ids: tuple[str, ...]  # the rules that decided, e.g. ("visa.category1",)


H, S, C = DeclineClass.HARD, DeclineClass.SOFT, DeclineClass.CUSTOMER_ACTION
STRICTNESS: dict[DeclineClass, int] = {S: 0, C: 1, H: 2}
CLASS_WORDS: dict[DeclineClass, str] = {
    H: "never retry this card",
    S: "retry later",
    C: "the customer must act",
}


@dataclass(frozen=True, slots=True)
class CodeRule:
    decline_class: DeclineClass
    meaning: str
    stop_plan: bool = False


# The gateway's decline codes, Stripe's vocabulary.
DECLINE_CODES: dict[str, CodeRule] = {
    # Hard: never retry this card as is.
    "stolen_card": CodeRule(H, "the card was reported stolen"),  # source: rules.md
    "lost_card": CodeRule(H, "the card was reported lost"),  # source: rules.md
    "pickup_card": CodeRule(H, "the issuer asks to keep the card"),  # source: rules.md
    "fraudulent": CodeRule(H, "the payment is suspected to be fraudulent"),  # source: rules.md
    "restricted_card": CodeRule(H, "the card is restricted"),  # source: rules.md
    "security_violation": CodeRule(H, "security violation"),  # source: rules.md
    "revocation_of_authorization": CodeRule(  # source: rules.md
        H, "the cardholder revoked this recurring payment", stop_plan=True
    ),
    "revocation_of_all_authorizations": CodeRule(  # source: rules.md
        H, "the cardholder revoked all recurring payments", stop_plan=True
    ),
    "stop_payment_order": CodeRule(  # source: rules.md
        H, "the cardholder ordered the payments stopped", stop_plan=True
    ),
    "invalid_account": CodeRule(H, "the card or its account is invalid"),  # source: rules.md
    "card_not_supported": CodeRule(  # source: rules.md
        H, "the card does not support this purchase"
    ),
    "currency_not_supported": CodeRule(  # source: rules.md
        H, "the card does not support the currency"
    ),
    "incorrect_number": CodeRule(H, "the card number is incorrect"),  # source: rules.md
    "invalid_number": CodeRule(H, "the card number is invalid"),  # source: rules.md
    "previously_declined_do_not_retry": CodeRule(  # source: rules.md
        H, "declined before, the issuer says do not retry"
    ),
    "do_not_try_again": CodeRule(H, "the issuer says do not try again"),  # source: Stripe
    "merchant_blacklist": CodeRule(H, "the card is on our own block list"),  # source: Stripe
    "testmode_decline": CodeRule(H, "a Stripe test card used for a live charge"),  # source: Stripe
    # Needs the customer: notify, retry when the payment method changes.
    "expired_card": CodeRule(C, "the card has expired"),  # source: rules.md
    "incorrect_cvc": CodeRule(C, "the CVC is incorrect"),  # source: rules.md
    "authentication_required": CodeRule(C, "the payment needs authentication"),  # source: rules.md
    "card_velocity_exceeded": CodeRule(C, "the card's limit is reached"),  # source: rules.md
    "new_account_information_available": CodeRule(  # source: rules.md
        C, "the card or its account has new details"
    ),
    "call_issuer": CodeRule(C, "the issuer asks the cardholder to call"),  # source: Stripe
    "incorrect_zip": CodeRule(C, "the postal code is incorrect"),  # source: Stripe
    "invalid_cvc": CodeRule(C, "the CVC is invalid"),  # source: Stripe
    "invalid_expiry_month": CodeRule(C, "the expiry month is invalid"),  # source: Stripe
    "invalid_expiry_year": CodeRule(C, "the expiry year is invalid"),  # source: Stripe
    "invalid_amount": CodeRule(C, "the amount is above what the card allows"),  # source: Stripe
    "incorrect_pin": CodeRule(C, "the PIN is incorrect"),  # source: Stripe
    "invalid_pin": CodeRule(C, "the PIN is invalid"),  # source: Stripe
    "pin_try_exceeded": CodeRule(C, "too many PIN attempts"),  # source: Stripe
    "offline_pin_required": CodeRule(C, "the card needs its PIN"),  # source: Stripe
    "online_or_offline_pin_required": CodeRule(C, "the card needs its PIN"),  # source: Stripe
    "not_permitted": CodeRule(C, "the payment is not permitted on this card"),  # source: Stripe
    "service_not_allowed": CodeRule(C, "the card does not allow this service"),  # source: Stripe
    "transaction_not_allowed": CodeRule(  # source: Stripe
        C, "the card does not allow this payment"
    ),
    # Soft: retry later.
    "insufficient_funds": CodeRule(S, "the card has insufficient funds"),  # source: rules.md
    "generic_decline": CodeRule(S, "declined without a reason"),  # source: rules.md
    "do_not_honor": CodeRule(S, "declined without a reason"),  # source: rules.md
    "try_again_later": CodeRule(S, "the issuer asks to try again later"),  # source: rules.md
    "processing_error": CodeRule(S, "an error while processing the card"),  # source: rules.md
    "issuer_not_available": CodeRule(S, "the issuer could not be reached"),  # source: rules.md
    "reenter_transaction": CodeRule(S, "the issuer asks to send it again"),  # source: rules.md
    "approve_with_id": CodeRule(S, "the payment could not be authorised"),  # source: rules.md
    "withdrawal_count_limit_exceeded": CodeRule(  # source: rules.md
        S, "the card's withdrawal count limit is reached"
    ),
    "no_action_taken": CodeRule(S, "declined without a reason"),  # source: Stripe
    "duplicate_transaction": CodeRule(S, "an identical payment was just made"),  # source: Stripe
}


VISA_CATEGORY_MEANINGS: dict[int, str] = {
    1: "issuer will never approve",
    2: "issuer cannot approve at this time",
    3: "issuer cannot approve with these details",
    4: "any other decline",
}
# The class each Visa category implies; category 4 has no opinion (the decline code decides).
VISA_CATEGORY_CLASSES: dict[int, DeclineClass | None] = {1: H, 2: S, 3: C, 4: None}

# Visa response code -> (category, meaning). Any other code is category 4.
VISA_RESPONSE_CODES: dict[str, tuple[int, str]] = {
    "04": (1, "pick up card"),  # source: rules.md
    "07": (1, "pick up card, special conditions"),  # source: rules.md
    "12": (1, "invalid transaction"),  # source: rules.md
    "15": (1, "no such issuer"),  # source: rules.md
    "41": (1, "lost card"),  # source: rules.md
    "43": (1, "stolen card"),  # source: rules.md
    "46": (1, "closed account"),  # source: rules.md
    "57": (1, "transaction not permitted to cardholder"),  # source: rules.md
    "R0": (1, "stop payment order"),  # source: rules.md
    "R1": (1, "revocation of authorization order"),  # source: rules.md
    "R3": (1, "revocation of all authorizations order"),  # source: rules.md
    # Listed under category 1 by some processors only; we take the conservative reading.
    "03": (1, "invalid merchant"),  # source: rules.md ("some lists also 03, 62, 78, 93")
    "62": (1, "restricted card"),  # source: rules.md ("some lists also 03, 62, 78, 93")
    "78": (1, "blocked, first used"),  # source: rules.md ("some lists also 03, 62, 78, 93")
    "93": (1, "violation of law"),  # source: rules.md ("some lists also 03, 62, 78, 93")
    # 14 is category 1 in some lists and 3 in others: conservative, never retry.
    "14": (1, "invalid account number"),  # source: rules.md (listed under 1 and 3)
    "19": (2, "re-enter transaction"),  # source: rules.md
    "51": (2, "insufficient funds"),  # source: rules.md
    "59": (2, "suspected fraud"),  # source: rules.md
    "61": (2, "exceeds withdrawal amount limit"),  # source: rules.md
    "65": (2, "exceeds withdrawal count limit"),  # source: rules.md
    "75": (2, "PIN tries exceeded"),  # source: rules.md
    "86": (2, "cannot verify PIN"),  # source: rules.md
    "91": (2, "issuer unavailable"),  # source: rules.md
    "96": (2, "system malfunction"),  # source: rules.md
    "N3": (2, "cash service not available"),  # source: rules.md
    "N4": (2, "cash request exceeds issuer limit"),  # source: rules.md
    "54": (3, "expired card"),  # source: rules.md
    "55": (3, "incorrect PIN"),  # source: rules.md
    "82": (3, "negative card verification result"),  # source: rules.md
    "1A": (3, "additional customer authentication required"),  # source: rules.md
    "N7": (3, "CVV2 mismatch"),  # source: rules.md
}
# Visa's own "stop recurring payment" codes: the plan stops, not only this card.
VISA_STOP_PLAN_CODES = frozenset({"R0", "R1", "R3"})  # source: rules.md (category 1 list)


@dataclass(frozen=True, slots=True)
class AdviceRule:
    meaning: str
    decline_class: DeclineClass | None = None  # None: the other codes decide the class
    stop_plan: bool = False
    wait: timedelta | None = None  # the earliest retry, counted from the decline


# Mastercard merchant advice codes. Unknown codes are ignored (noted in the reason).
MERCHANT_ADVICE_CODES: dict[str, AdviceRule] = {
    "01": AdviceRule("new account information available", C),  # source: rules.md
    "02": AdviceRule(  # source: rules.md (72 h: one processor's recommendation)
        "cannot approve at this time, try again later", S, wait=timedelta(hours=72)
    ),
    "03": AdviceRule("do not try again", H),  # source: rules.md
    "04": AdviceRule("token requirements not fulfilled, do not retry as is", C),  # source: rules.md
    "05": AdviceRule("negotiated value not approved"),  # source: MAC list
    "21": AdviceRule(  # source: rules.md
        "payment cancellation: the cardholder stopped the recurring payment", H, stop_plan=True
    ),
    "22": AdviceRule("merchant does not qualify for product code"),  # source: MAC list
    "24": AdviceRule("retry after 1 hour", wait=timedelta(hours=1)),  # source: rules.md
    "25": AdviceRule("retry after 24 hours", wait=timedelta(hours=24)),  # source: rules.md
    "26": AdviceRule("retry after 2 days", wait=timedelta(days=2)),  # source: rules.md
    "27": AdviceRule("retry after 4 days", wait=timedelta(days=4)),  # source: rules.md
    "28": AdviceRule("retry after 6 days", wait=timedelta(days=6)),  # source: rules.md
    "29": AdviceRule("retry after 8 days", wait=timedelta(days=8)),  # source: rules.md
    "30": AdviceRule("retry after 10 days", wait=timedelta(days=10)),  # source: rules.md
    "40": AdviceRule("consumer non-reloadable prepaid card"),  # source: MAC list
    "41": AdviceRule("consumer single-use virtual card number"),  # source: MAC list
}

VISA_CODE_PATTERN = re.compile(r"[A-Z0-9]{2}")
MAC_PATTERN = re.compile(r"[0-9]{2}")
DECLINE_CODE_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
MAX_DECLINE_CODE_LENGTH = 64
VISA_NETWORKS = frozenset({CardNetwork.VISA, CardNetwork.OTHER})
MASTERCARD_NETWORKS = frozenset({CardNetwork.MASTERCARD, CardNetwork.OTHER})


@dataclass(frozen=True, slots=True)
class _Verdict:
    rule_id: str
    reason: str
    decline_class: DeclineClass | None
    stop_plan: bool = False
    wait: timedelta | None = None
    visa_category: int | None = None


def visa_category(response_code: str) -> int:
    """Visa's category (1..4) of a response code; 4 for any code not in the table."""
    return VISA_RESPONSE_CODES.get(response_code.strip().upper(), (4, ""))[0]


def _visa_verdict(decline: Decline, notes: list[str]) -> _Verdict | None:
    code = decline.visa_response_code.strip().upper()
    if not code:
        return None
    if decline.network not in VISA_NETWORKS:
        notes.append(f"Visa response code {code} ignored: the card network is {decline.network}")
        return None
    category, meaning = VISA_RESPONSE_CODES.get(code, (4, "not a listed code"))
    return _Verdict(
        rule_id=f"visa.category{category}",
        reason=(
            f"Visa category {category} ({VISA_CATEGORY_MEANINGS[category]}): "
            f"response code {code} ({meaning})"
        ),
        decline_class=VISA_CATEGORY_CLASSES[category],
        stop_plan=code in VISA_STOP_PLAN_CODES,
        visa_category=category,
    )


def _mac_verdict(decline: Decline, notes: list[str]) -> _Verdict | None:
    mac = decline.mc_advice_code.strip()
    if not mac:
        return None
    if decline.network not in MASTERCARD_NETWORKS:
        notes.append(
            f"Mastercard merchant advice code {mac} ignored: the card network is {decline.network}"
        )
        return None
    rule = MERCHANT_ADVICE_CODES.get(mac)
    if rule is None:
        notes.append(f"Mastercard merchant advice code {mac} is not a known code and was ignored")
        return None
    if rule.decline_class is None and rule.wait is None:
        notes.append(
            f"Mastercard merchant advice code {mac} ({rule.meaning}) does not change the decision"
        )
        return None
    return _Verdict(
        rule_id=f"mastercard.mac.{mac}",
        reason=f"Mastercard merchant advice code {mac} ({rule.meaning})",
        decline_class=rule.decline_class,
        stop_plan=rule.stop_plan,
        wait=rule.wait,
    )


def _code_verdict(code: str, decided: bool) -> _Verdict | None:
    """The decline code's verdict; with no code, SOFT only when nothing else decided."""
    if not code:
        if decided:
            return None
        return _Verdict("decline.no_code", "no decline code given: treated as a soft decline", S)
    rule = DECLINE_CODES.get(code)
    if rule is None:
        return _Verdict(
            "stripe.code.unknown",
            f"decline code {code} is not a known code: treated as a soft decline",
            S,
        )
    return _Verdict(
        f"stripe.code.{code}",
        f"decline code {code} ({rule.meaning}): {CLASS_WORDS[rule.decline_class]}",
        rule.decline_class,
        stop_plan=rule.stop_plan,
    )


def stored_network(value: str) -> CardNetwork:
    """The network a stored name stands for (``CardNetwork(value)``, which raises ValueError for
    an unknown one, but a dictionary look-up: the billing job turns every wallet entry and
    every history row it reads into one, and the enum's call costs ten times as much)."""
    found = _NETWORKS.get(value)
    return found if found is not None else CardNetwork(value)


_NETWORKS: dict[str, CardNetwork] = {n.value: n for n in CardNetwork}


@functools.lru_cache(maxsize=4096)
def classify_codes(
    code: str, network: CardNetwork, visa_response_code: str, mc_advice_code: str
) -> Classification:
    """``classify`` of a stored attempt's codes, cached by the codes themselves: a card's
    history is read at every attempt, and building and hashing a Decline for each row cost
    five times this look-up."""
    return classify(Decline(code, network, visa_response_code, mc_advice_code))


@functools.lru_cache(maxsize=4096)
def classify(decline: Decline) -> Classification:
    """Combine the network codes and the decline code into one classification. Pure, and
    declines repeat (the billing job classifies each card's history at every attempt): the
    answers are cached (a frozen Classification is never changed by a caller)."""
    notes: list[str] = []
    network = [
        v for v in (_visa_verdict(decline, notes), _mac_verdict(decline, notes)) if v is not None
    ]
    code = _code_verdict(decline.code, any(v.decline_class is not None for v in network))
    verdicts = [*network, *([code] if code is not None else [])]
    decline_class = max(
        (v.decline_class for v in verdicts if v.decline_class is not None),
        key=STRICTNESS.__getitem__,
    )
    # A verdict decided if it gave the winning class, or stopped the plan, set a wait or a
    # Visa category; a weaker class that was overruled is left out.
    deciding = [
        v
        for v in verdicts
        if v.decline_class is decline_class
        or v.stop_plan
        or v.wait is not None
        or v.visa_category is not None
    ]
    waits = [v.wait for v in verdicts if v.wait is not None]
    categories = [v.visa_category for v in verdicts if v.visa_category is not None]
    return Classification(
        decline_class=decline_class,
        reason="; ".join([v.reason for v in deciding] + notes),
        visa_category=categories[0] if categories else None,
        never_retry_card=decline_class is H,
        stop_plan=any(v.stop_plan for v in verdicts),
        earliest_retry_after=max(waits) if waits else None,
        rule_ids=tuple(v.rule_id for v in deciding),
    )


def validate_decline(decline: Decline, field_prefix: str) -> Decline:
    """The decline, checked: Visa codes are 2 upper-case letters or digits, MACs 2 digits, and
    the decline code lower_snake_case of at most 64 characters (an unknown but well-formed code
    is accepted and classified SOFT). Raises InvalidArgument naming the field."""

    def name(field: str) -> str:
        return f"{field_prefix}.{field}" if field_prefix else field

    network: object = decline.network
    if not isinstance(network, CardNetwork):
        try:
            network = CardNetwork(str(network))
        except ValueError:
            known = ", ".join(n.value for n in CardNetwork)
            raise InvalidArgument(name("network"), f"must be one of {known}") from None
    code: object = decline.code
    if not isinstance(code, str) or (
        code and (len(code) > MAX_DECLINE_CODE_LENGTH or not DECLINE_CODE_PATTERN.fullmatch(code))
    ):
        raise InvalidArgument(
            name("decline_code"),
            f"must be lower_snake_case letters and digits, at most {MAX_DECLINE_CODE_LENGTH} "
            "characters, or empty",
        )
    visa: object = decline.visa_response_code
    if not isinstance(visa, str) or (visa and not VISA_CODE_PATTERN.fullmatch(visa)):
        raise InvalidArgument(
            name("visa_response_code"), "must be 2 upper-case letters or digits, or empty"
        )
    mac: object = decline.mc_advice_code
    if not isinstance(mac, str) or (mac and not MAC_PATTERN.fullmatch(mac)):
        raise InvalidArgument(name("mc_advice_code"), "must be 2 digits, or empty")
    if network is decline.network:
        return decline
    return Decline(decline.code, network, decline.visa_response_code, decline.mc_advice_code)
