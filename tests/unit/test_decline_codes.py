"""Decline classification: every table row, the precedence between the three vocabularies, and
what a well-formed decline is."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.decline_codes import (
    DECLINE_CODES,
    MERCHANT_ADVICE_CODES,
    VISA_RESPONSE_CODES,
    CardNetwork,
    Classification,
    Decline,
    DeclineClass,
    classify,
    classify_codes,
    stored_network,
    validate_decline,
    visa_category,
)
from service.errors import InvalidArgument

H, S, C = DeclineClass.HARD, DeclineClass.SOFT, DeclineClass.CUSTOMER_ACTION
VISA, MC, AMEX, OTHER = (
    CardNetwork.VISA,
    CardNetwork.MASTERCARD,
    CardNetwork.AMEX,
    CardNetwork.OTHER,
)

# The expected class of every decline code, written out again here (not read from the module)
# so a changed row must be changed twice. "stop" marks the codes that end the whole plan.
EXPECTED_CODES: dict[str, tuple[DeclineClass, bool]] = {
    # card-network-rules.md, hard
    "stolen_card": (H, False),
    "lost_card": (H, False),
    "pickup_card": (H, False),
    "fraudulent": (H, False),
    "restricted_card": (H, False),
    "security_violation": (H, False),
    "revocation_of_authorization": (H, True),
    "revocation_of_all_authorizations": (H, True),
    "stop_payment_order": (H, True),
    "invalid_account": (H, False),
    "card_not_supported": (H, False),
    "currency_not_supported": (H, False),
    "incorrect_number": (H, False),
    "invalid_number": (H, False),
    "previously_declined_do_not_retry": (H, False),
    # card-network-rules.md, needs the customer
    "expired_card": (C, False),
    "incorrect_cvc": (C, False),
    "authentication_required": (C, False),
    "card_velocity_exceeded": (C, False),
    "new_account_information_available": (C, False),
    # card-network-rules.md, soft
    "insufficient_funds": (S, False),
    "generic_decline": (S, False),
    "do_not_honor": (S, False),
    "try_again_later": (S, False),
    "processing_error": (S, False),
    "issuer_not_available": (S, False),
    "reenter_transaction": (S, False),
    "approve_with_id": (S, False),
    "withdrawal_count_limit_exceeded": (S, False),
    # Stripe's decline-code list, the codes card-network-rules.md lacks
    "do_not_try_again": (H, False),
    "merchant_blacklist": (H, False),
    "testmode_decline": (H, False),
    "call_issuer": (C, False),
    "incorrect_zip": (C, False),
    "invalid_cvc": (C, False),
    "invalid_expiry_month": (C, False),
    "invalid_expiry_year": (C, False),
    "invalid_amount": (C, False),
    "incorrect_pin": (C, False),
    "invalid_pin": (C, False),
    "pin_try_exceeded": (C, False),
    "offline_pin_required": (C, False),
    "online_or_offline_pin_required": (C, False),
    "not_permitted": (C, False),
    "service_not_allowed": (C, False),
    "transaction_not_allowed": (C, False),
    "no_action_taken": (S, False),
    "duplicate_transaction": (S, False),
}

VISA_CATEGORY_1 = ["04", "07", "12", "15", "41", "43", "46", "57", "R0", "R1", "R3"]
# Listed under 1 by some sources only (03, 62, 78, 93) or under 1 and 3 (14): conservative.
VISA_CATEGORY_1_CONSERVATIVE = ["03", "62", "78", "93", "14"]
VISA_CATEGORY_2 = ["19", "51", "59", "61", "65", "75", "86", "91", "96", "N3", "N4"]
VISA_CATEGORY_3 = ["54", "55", "82", "1A", "N7"]
VISA_CATEGORY_4 = ["01", "05", "13", "21", "63", "85", "99", "ZZ", "A0", "N8"]

MAC_WAITS: dict[str, timedelta] = {
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
MAC_NO_EFFECT = ["05", "22", "40", "41"]  # known, but they do not change the decision
MAC_MEANINGFUL = {"01", "02", "03", "04", "21", *MAC_WAITS}
MAC_UNKNOWN = [
    mac
    for mac in (f"{n:02d}" for n in range(31))
    if mac not in MAC_MEANINGFUL and mac not in MAC_NO_EFFECT
] + ["31", "99"]


def words_name(reason: str, code: str) -> bool:
    return bool(re.search(rf"(?<![A-Za-z0-9_]){re.escape(code)}(?![A-Za-z0-9_])", reason))


def check_invariants(result: Classification) -> None:
    assert result.never_retry_card == (result.decline_class is H)
    if result.stop_plan:
        assert result.never_retry_card
    assert result.reason.strip()
    assert result.rule_ids
    assert len(set(result.rule_ids)) == len(result.rule_ids)
    assert result.visa_category in (None, 1, 2, 3, 4)


# Stripe decline codes ---------------------------------------------------------------------


def test_the_module_and_this_test_list_the_same_codes() -> None:
    assert set(DECLINE_CODES) == set(EXPECTED_CODES)


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_CODES.items()))
def test_each_decline_code(code: str, expected: tuple[DeclineClass, bool]) -> None:
    decline_class, stop = expected
    result = classify(Decline(code))
    assert result.decline_class is decline_class
    assert result.never_retry_card == (decline_class is H)
    assert result.stop_plan == stop
    assert result.visa_category is None
    assert result.earliest_retry_after is None
    assert result.rule_ids == (f"stripe.code.{code}",)
    assert words_name(result.reason, code)
    check_invariants(result)


@pytest.mark.parametrize("network", list(CardNetwork))
def test_the_network_alone_does_not_change_a_decline_code(network: CardNetwork) -> None:
    assert classify(Decline("insufficient_funds", network)) == classify(
        Decline("insufficient_funds")
    )


def test_an_unknown_well_formed_code_is_soft_and_says_so() -> None:
    result = classify(Decline("brand_new_reason"))
    assert result.decline_class is S
    assert not result.never_retry_card
    assert result.rule_ids == ("stripe.code.unknown",)
    assert words_name(result.reason, "brand_new_reason")
    assert "not a known code" in result.reason


def test_no_code_at_all_is_soft_and_says_so() -> None:
    result = classify(Decline(""))
    assert result.decline_class is S
    assert result.rule_ids == ("decline.no_code",)
    assert "no decline code" in result.reason


# Visa categories ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", VISA_CATEGORY_1 + VISA_CATEGORY_1_CONSERVATIVE)
def test_visa_category_1_is_hard(code: str) -> None:
    result = classify(Decline("", VISA, visa_response_code=code))
    assert (result.decline_class, result.visa_category, result.never_retry_card) == (H, 1, True)
    assert result.rule_ids == ("visa.category1",)
    assert result.reason.startswith("Visa category 1 (issuer will never approve): response code")
    assert words_name(result.reason, code)
    assert result.stop_plan == (code in {"R0", "R1", "R3"})
    check_invariants(result)


@pytest.mark.parametrize("code", VISA_CATEGORY_2)
def test_visa_category_2_is_soft(code: str) -> None:
    result = classify(Decline("", VISA, visa_response_code=code))
    assert (result.decline_class, result.visa_category, result.never_retry_card) == (S, 2, False)
    assert result.rule_ids == ("visa.category2",)
    assert words_name(result.reason, code)
    check_invariants(result)


@pytest.mark.parametrize("code", VISA_CATEGORY_3)
def test_visa_category_3_needs_the_customer(code: str) -> None:
    result = classify(Decline("", VISA, visa_response_code=code))
    assert (result.decline_class, result.visa_category, result.never_retry_card) == (C, 3, False)
    assert result.rule_ids == ("visa.category3",)
    assert words_name(result.reason, code)
    check_invariants(result)


@pytest.mark.parametrize("code", VISA_CATEGORY_4)
def test_any_other_visa_code_is_category_4_and_the_decline_code_decides(code: str) -> None:
    alone = classify(Decline("", VISA, visa_response_code=code))
    assert (alone.decline_class, alone.visa_category) == (S, 4)
    assert alone.rule_ids == ("visa.category4", "decline.no_code")
    assert words_name(alone.reason, code)
    with_code = classify(Decline("expired_card", VISA, visa_response_code=code))
    assert (with_code.decline_class, with_code.visa_category) == (C, 4)
    assert with_code.rule_ids == ("visa.category4", "stripe.code.expired_card")


def test_the_visa_table_is_exactly_the_reference_lists() -> None:
    expected = (
        dict.fromkeys(VISA_CATEGORY_1 + VISA_CATEGORY_1_CONSERVATIVE, 1)
        | dict.fromkeys(VISA_CATEGORY_2, 2)
        | dict.fromkeys(VISA_CATEGORY_3, 3)
    )
    assert {code: row[0] for code, row in VISA_RESPONSE_CODES.items()} == expected
    assert all(meaning for _, meaning in VISA_RESPONSE_CODES.values())


@pytest.mark.parametrize(
    ("code", "category"), [("04", 1), ("r1", 1), (" 51 ", 2), ("n7", 3), ("05", 4), ("", 4)]
)
def test_visa_category_helper(code: str, category: int) -> None:
    assert visa_category(code) == category


def test_a_lower_case_visa_code_is_read_conservatively() -> None:
    # validate_decline refuses it; classify, given it anyway, does not let it slip to category 4
    assert classify(Decline("", VISA, visa_response_code="r1")).visa_category == 1


# Mastercard merchant advice codes ----------------------------------------------------------


def test_mac_01_new_account_information_needs_the_customer() -> None:
    result = classify(Decline("insufficient_funds", MC, mc_advice_code="01"))
    assert result.decline_class is C
    assert not result.never_retry_card
    assert result.rule_ids == ("mastercard.mac.01",)
    assert words_name(result.reason, "01")
    assert "new account information" in result.reason


def test_mac_02_try_later_waits_72_hours() -> None:
    result = classify(Decline("", MC, mc_advice_code="02"))
    assert (result.decline_class, result.earliest_retry_after) == (S, timedelta(hours=72))
    assert result.rule_ids == ("mastercard.mac.02",)


@pytest.mark.parametrize("code", ["insufficient_funds", "generic_decline", "", "expired_card"])
def test_mac_03_do_not_try_again_is_hard(code: str) -> None:
    result = classify(Decline(code, MC, mc_advice_code="03"))
    assert (result.decline_class, result.never_retry_card, result.stop_plan) == (H, True, False)
    assert result.rule_ids == ("mastercard.mac.03",)
    assert "do not try again" in result.reason


def test_mac_04_token_requirements_need_the_customer() -> None:
    result = classify(Decline("generic_decline", MC, mc_advice_code="04"))
    assert result.decline_class is C
    assert result.rule_ids == ("mastercard.mac.04",)
    assert "token" in result.reason


@pytest.mark.parametrize("code", ["insufficient_funds", "", "do_not_honor"])
def test_mac_21_stopped_payment_is_hard_and_stops_the_plan(code: str) -> None:
    result = classify(Decline(code, MC, mc_advice_code="21"))
    assert (result.decline_class, result.never_retry_card, result.stop_plan) == (H, True, True)
    assert result.rule_ids == ("mastercard.mac.21",)
    assert "stopped the recurring payment" in result.reason


@pytest.mark.parametrize(("mac", "wait"), sorted(MAC_WAITS.items()))
@pytest.mark.parametrize(
    ("code", "decline_class"),
    [("insufficient_funds", S), ("expired_card", C), ("stolen_card", H), ("", S)],
)
def test_mac_24_to_30_set_the_wait_and_keep_the_class_of_the_code(
    mac: str, wait: timedelta, code: str, decline_class: DeclineClass
) -> None:
    result = classify(Decline(code, MC, mc_advice_code=mac))
    assert result.decline_class is decline_class
    assert result.earliest_retry_after == wait
    assert result.rule_ids[0] == f"mastercard.mac.{mac}"
    assert result.rule_ids[1] == (f"stripe.code.{code}" if code else "decline.no_code")
    assert words_name(result.reason, mac)
    check_invariants(result)


@pytest.mark.parametrize("mac", MAC_NO_EFFECT)
def test_known_macs_without_a_retry_meaning_change_nothing(mac: str) -> None:
    result = classify(Decline("insufficient_funds", MC, mc_advice_code=mac))
    plain = classify(Decline("insufficient_funds", MC))
    assert (result.decline_class, result.rule_ids, result.earliest_retry_after) == (
        plain.decline_class,
        plain.rule_ids,
        plain.earliest_retry_after,
    )
    assert words_name(result.reason, mac)
    assert "does not change the decision" in result.reason


@pytest.mark.parametrize("mac", MAC_UNKNOWN)
def test_unknown_macs_are_ignored_and_named(mac: str) -> None:
    result = classify(Decline("do_not_honor", MC, mc_advice_code=mac))
    assert result.decline_class is S
    assert result.rule_ids == ("stripe.code.do_not_honor",)
    assert result.earliest_retry_after is None
    assert words_name(result.reason, mac)
    assert "not a known code" in result.reason


def test_every_mac_from_01_to_30_is_covered_by_these_tests() -> None:
    covered = MAC_MEANINGFUL | set(MAC_NO_EFFECT) | set(MAC_UNKNOWN)
    assert {f"{n:02d}" for n in range(31)} <= covered
    assert set(MERCHANT_ADVICE_CODES) == MAC_MEANINGFUL | set(MAC_NO_EFFECT)


# Precedence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decline", "decline_class", "rule_ids"),
    [
        # A Visa category-1 code beats any gateway text.
        (Decline("generic_decline", VISA, "04"), H, ("visa.category1",)),
        (Decline("insufficient_funds", VISA, "14"), H, ("visa.category1",)),
        (Decline("expired_card", VISA, "43"), H, ("visa.category1",)),
        # Category 3 makes a soft text need the customer.
        (Decline("generic_decline", VISA, "N7"), C, ("visa.category3",)),
        # Category 2 agrees with a soft code: both are named.
        (
            Decline("insufficient_funds", VISA, "51"),
            S,
            ("visa.category2", "stripe.code.insufficient_funds"),
        ),
        # A hard code is not softened by a category-2 code (conservative).
        (Decline("stolen_card", VISA, "51"), H, ("visa.category2", "stripe.code.stolen_card")),
        # MAC 03/21 beat the text; MAC 01 makes a soft decline need the customer.
        (Decline("insufficient_funds", MC, "", "03"), H, ("mastercard.mac.03",)),
        (Decline("try_again_later", MC, "", "21"), H, ("mastercard.mac.21",)),
        (Decline("do_not_honor", MC, "", "01"), C, ("mastercard.mac.01",)),
        # ... but MAC 01 does not soften a hard code.
        (Decline("lost_card", MC, "", "01"), H, ("stripe.code.lost_card",)),
        # An unknown network reads both vocabularies; the strictest wins.
        (Decline("", OTHER, "51", "03"), H, ("visa.category2", "mastercard.mac.03")),
        (Decline("", OTHER, "54", "24"), C, ("visa.category3", "mastercard.mac.24")),
    ],
)
def test_precedence(
    decline: Decline, decline_class: DeclineClass, rule_ids: tuple[str, ...]
) -> None:
    result = classify(decline)
    assert result.decline_class is decline_class
    assert result.rule_ids == rule_ids
    check_invariants(result)


def test_a_network_code_on_another_network_is_ignored_and_said_so() -> None:
    result = classify(Decline("insufficient_funds", AMEX, visa_response_code="04"))
    assert (result.decline_class, result.visa_category) == (S, None)
    assert "Visa response code 04 ignored" in result.reason
    result = classify(Decline("insufficient_funds", VISA, mc_advice_code="21"))
    assert (result.decline_class, result.stop_plan) == (S, False)
    assert "merchant advice code 21 ignored" in result.reason


def test_a_visa_stop_code_stops_the_plan_whatever_the_text() -> None:
    result = classify(Decline("insufficient_funds", VISA, "R0"))
    assert (result.decline_class, result.stop_plan) == (H, True)


def test_the_reason_names_every_deciding_code() -> None:
    result = classify(Decline("insufficient_funds", OTHER, "51", "27"))
    assert result.rule_ids == (
        "visa.category2",
        "mastercard.mac.27",
        "stripe.code.insufficient_funds",
    )
    for code in ("51", "27", "insufficient_funds"):
        assert words_name(result.reason, code)
    assert result.earliest_retry_after == timedelta(days=4)


# Validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decline", "field"),
    [
        (Decline("Insufficient_Funds"), "decline.decline_code"),
        (Decline("insufficient funds"), "decline.decline_code"),
        (Decline("insufficient-funds"), "decline.decline_code"),
        (Decline("_leading"), "decline.decline_code"),
        (Decline("trailing_"), "decline.decline_code"),
        (Decline("double__underscore"), "decline.decline_code"),
        (Decline("9lives"), "decline.decline_code"),
        (Decline("a" * 65), "decline.decline_code"),
        (Decline("x", VISA, visa_response_code="5"), "decline.visa_response_code"),
        (Decline("x", VISA, visa_response_code="051"), "decline.visa_response_code"),
        (Decline("x", VISA, visa_response_code="n7"), "decline.visa_response_code"),
        (Decline("x", VISA, visa_response_code="5 "), "decline.visa_response_code"),
        (Decline("x", VISA, visa_response_code="-1"), "decline.visa_response_code"),
        (Decline("x", MC, mc_advice_code="1"), "decline.mc_advice_code"),
        (Decline("x", MC, mc_advice_code="001"), "decline.mc_advice_code"),
        (Decline("x", MC, mc_advice_code="AB"), "decline.mc_advice_code"),
        (Decline("x", MC, mc_advice_code="2 "), "decline.mc_advice_code"),
    ],
)
def test_malformed_input_names_the_field(decline: Decline, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_decline(decline, "decline")
    assert exc.value.field == field
    assert exc.value.message.startswith(f"{field}: ")


def test_the_field_prefix_is_used_as_given() -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_decline(Decline("BAD"), "attempts[3].decline")
    assert exc.value.field == "attempts[3].decline.decline_code"
    with pytest.raises(InvalidArgument) as exc:
        validate_decline(Decline("BAD"), "")
    assert exc.value.field == "decline_code"


def test_a_network_that_is_not_a_card_network_is_refused() -> None:
    decline = Decline("x", "JCB")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as exc:
        validate_decline(decline, "decline")
    assert exc.value.field == "decline.network"


def test_a_network_spelled_as_text_is_converted() -> None:
    decline = Decline("x", "VISA")  # type: ignore[arg-type]
    assert validate_decline(decline, "decline").network is VISA


@pytest.mark.parametrize(
    "decline",
    [
        Decline(""),
        Decline("insufficient_funds", VISA, "51"),
        Decline("a" * 64),
        Decline("code_2_b", OTHER, "1A", "30"),
        Decline("unknown_but_well_formed", MC, "", "99"),
    ],
)
def test_well_formed_input_is_returned_unchanged(decline: Decline) -> None:
    assert validate_decline(decline, "decline") is decline


# Properties ---------------------------------------------------------------------------------

codes = st.sampled_from(sorted(EXPECTED_CODES)) | st.from_regex(
    r"[a-z][a-z0-9]{0,10}(_[a-z0-9]{1,10}){0,3}", fullmatch=True
)
visa_codes = (
    st.sampled_from(sorted(VISA_RESPONSE_CODES)) | st.from_regex(r"[A-Z0-9]{2}", fullmatch=True)
) | st.just("")
macs = st.sampled_from(sorted(MERCHANT_ADVICE_CODES)) | st.from_regex(r"[0-9]{2}", fullmatch=True)
declines = st.builds(
    Decline,
    code=codes | st.just(""),
    network=st.sampled_from(list(CardNetwork)),
    visa_response_code=visa_codes,
    mc_advice_code=macs | st.just(""),
)


@given(declines)
def test_every_well_formed_decline_is_classified_consistently(decline: Decline) -> None:
    assert validate_decline(decline, "decline") is decline
    result = classify(decline)
    check_invariants(result)
    reads_visa = decline.network in (VISA, OTHER) and decline.visa_response_code != ""
    assert (result.visa_category is not None) == reads_visa
    if reads_visa and visa_category(decline.visa_response_code) == 1:
        assert result.decline_class is H
    reads_mac = decline.network in (MC, OTHER)
    if reads_mac and decline.mc_advice_code in ("03", "21"):
        assert result.decline_class is H
    if reads_mac and decline.mc_advice_code in MAC_WAITS:
        assert result.earliest_retry_after == MAC_WAITS[decline.mc_advice_code]
    if decline.code in EXPECTED_CODES:
        # a network code can make a decline stricter, never milder
        strictness = {S: 0, C: 1, H: 2}
        assert strictness[result.decline_class] >= strictness[EXPECTED_CODES[decline.code][0]]
    for rule_id in result.rule_ids:
        if rule_id.startswith("stripe.code.") and rule_id != "stripe.code.unknown":
            assert words_name(result.reason, rule_id.removeprefix("stripe.code."))


@given(
    code=st.sampled_from(["", *EXPECTED_CODES, "made_up_code"]),
    network=st.sampled_from(list(CardNetwork)),
    visa=st.sampled_from(["", *VISA_CATEGORY_1, *VISA_CATEGORY_2, *VISA_CATEGORY_3, "99"]),
    mac=st.sampled_from(["", *MAC_NO_EFFECT, *sorted(MAC_MEANINGFUL), *MAC_UNKNOWN]),
)
def test_a_stored_attempts_codes_classify_as_their_decline(
    code: str, network: CardNetwork, visa: str, mac: str
) -> None:
    """The billing job classifies stored history rows by their codes (a cached look-up):
    always the classification of the same Decline."""
    assert classify_codes(code, network, visa, mac) == classify(Decline(code, network, visa, mac))


def test_a_stored_network_name_is_its_network_and_an_unknown_one_is_refused() -> None:
    assert [stored_network(n.value) for n in CardNetwork] == list(CardNetwork)
    with pytest.raises(ValueError, match="JCB"):
        stored_network("JCB")
