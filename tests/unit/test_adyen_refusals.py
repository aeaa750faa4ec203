"""Adyen's refusals normalised into the decline vocabulary, and what the classifier then
decides for them."""

from __future__ import annotations

import pytest

from service.domain.decline_codes import (
    DECLINE_CODES,
    CardNetwork,
    Decline,
    DeclineClass,
    classify,
)
from service.gateways import adyen_refusals as refusals
from service.gateways.adyen_refusals import REFUSAL_REASONS, normalise


def classified(refusal: refusals.Refusal) -> DeclineClass:
    network = CardNetwork(refusal.network) if refusal.network else CardNetwork.OTHER
    decline = Decline(
        refusal.decline_code, network, refusal.visa_response_code, refusal.mc_advice_code
    )
    return classify(decline).decline_class


def test_every_refusal_reason_maps_to_a_code_the_classifier_knows() -> None:
    unknown = {code: mapped for code, (_, mapped) in REFUSAL_REASONS.items()}
    unknown = {code: mapped for code, mapped in unknown.items() if mapped not in DECLINE_CODES}
    assert unknown == {}


@pytest.mark.parametrize(
    ("code", "text", "expected", "decline_class"),
    [
        ("12", "Not enough balance", "insufficient_funds", DeclineClass.SOFT),
        ("6", "Expired Card", "expired_card", DeclineClass.CUSTOMER_ACTION),
        ("5", "Blocked Card", "restricted_card", DeclineClass.HARD),
        ("26", "Revocation Of Auth", "revocation_of_authorization", DeclineClass.HARD),
        ("2", "Refused", "generic_decline", DeclineClass.SOFT),
        ("9", "Issuer Unavailable", "issuer_not_available", DeclineClass.SOFT),
        ("24", "CVC Declined", "incorrect_cvc", DeclineClass.CUSTOMER_ACTION),
        ("38", "Authentication required", "authentication_required", DeclineClass.CUSTOMER_ACTION),
        ("20", "FRAUD", "fraudulent", DeclineClass.HARD),
        ("46", "Transaction blocked by Adyen to prevent excessive retry fees", "do_not_try_again",
         DeclineClass.HARD),
    ],
)  # fmt: skip
def test_a_refusal_reason_code_gives_our_decline_code_and_class(
    code: str, text: str, expected: str, decline_class: DeclineClass
) -> None:
    refusal = normalise(refusal_reason_code=code, refusal_reason=text, additional_data={})
    assert refusal.decline_code == expected
    assert refusal.reason == f"{code} {text}"
    assert classified(refusal) is decline_class


def test_the_code_wins_over_the_text_and_the_text_serves_when_there_is_no_code() -> None:
    assert refusals.decline_code("12", "Expired Card") == "insufficient_funds"
    # A notification carries only the text (any case).
    assert refusals.decline_code(None, "NOT ENOUGH BALANCE") == "insufficient_funds"
    assert refusals.decline_code(12, "") == "insufficient_funds"  # a number reads the same


def test_an_unknown_or_missing_reason_is_a_generic_soft_decline() -> None:
    assert refusals.decline_code("99", "Something new") == "generic_decline"
    assert refusals.decline_code(None, None) == "generic_decline"
    assert refusals.decline_code("0", "") == "generic_decline"  # 0 comes with Authorised only


def test_a_visa_raw_response_code_is_kept_and_can_make_a_soft_reason_hard() -> None:
    refusal = normalise(
        refusal_reason_code="2",
        refusal_reason="Refused",
        additional_data={"refusalReasonRaw": "R1 : Revocation of authorization order"},
        brand="visa",
    )
    assert refusal.network == "VISA"
    assert refusal.visa_response_code == "R1"
    assert refusal.mc_advice_code == ""
    decline = Decline(refusal.decline_code, CardNetwork.VISA, refusal.visa_response_code)
    verdict = classify(decline)
    assert verdict.decline_class is DeclineClass.HARD
    assert verdict.visa_category == 1
    assert verdict.stop_plan


def test_a_visa_category_2_code_keeps_insufficient_funds_soft() -> None:
    refusal = normalise(
        refusal_reason_code="12",
        refusal_reason="Not enough balance",
        additional_data={"refusalReasonRaw": "51 : Insufficient funds/over credit limit"},
        brand="visa",
    )
    assert (refusal.decline_code, refusal.visa_response_code) == ("insufficient_funds", "51")
    assert classified(refusal) is DeclineClass.SOFT


def test_a_mastercard_advice_code_is_kept_and_21_stops_the_plan() -> None:
    refusal = normalise(
        refusal_reason_code="2",
        refusal_reason="Refused",
        additional_data={
            "merchantAdviceCode": "21: Payment Cancellation",
            "refusalReasonRaw": "05 : Do not honor",
        },
        brand="mc",
    )
    assert refusal.network == "MASTERCARD"
    assert refusal.mc_advice_code == "21"
    assert refusal.visa_response_code == ""  # a Mastercard code is not a Visa one
    decline = Decline(refusal.decline_code, CardNetwork.MASTERCARD, "", refusal.mc_advice_code)
    verdict = classify(decline)
    assert verdict.decline_class is DeclineClass.HARD
    assert verdict.stop_plan


def test_network_codes_of_another_network_are_dropped() -> None:
    refusal = normalise(
        refusal_reason_code="2",
        refusal_reason="Refused",
        additional_data={"merchantAdviceCode": "03", "refusalReasonRaw": "04 : Pickup card"},
        brand="amex",
    )
    assert (refusal.network, refusal.visa_response_code, refusal.mc_advice_code) == ("AMEX", "", "")


@pytest.mark.parametrize(
    ("brand", "network"),
    [
        ("visa", "VISA"),
        ("visacredit", "VISA"),
        ("electron", "VISA"),
        ("mc", "MASTERCARD"),
        ("mcdebit", "MASTERCARD"),
        ("maestro", "MASTERCARD"),
        ("amex", "AMEX"),
        ("discover", "DISCOVER"),
        ("jcb", "OTHER"),
        ("cartebancaire", "OTHER"),
        ("", ""),
        (None, ""),
    ],
)
def test_adyen_brands_and_variants_map_to_networks(brand: str | None, network: str) -> None:
    assert refusals.network(brand) == network


def test_the_brand_falls_back_to_additional_data() -> None:
    refusal = normalise(
        refusal_reason_code="12",
        refusal_reason="Not enough balance",
        additional_data={"paymentMethod": "visa", "refusalReasonRaw": "51 : Insufficient funds"},
    )
    assert (refusal.network, refusal.visa_response_code) == ("VISA", "51")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("51 : Insufficient funds/over credit limit", "51"),
        ("N7: CVV2 failure", "N7"),
        ("05 : Do not honor", "05"),
        ("DECLINED 05 : Do not honor", "05"),
        ("AUTHORISED", ""),
        ("100 : Do not honor", ""),  # an Amex-style three-digit code is no Visa code
        ("Declined", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_the_raw_response_code_is_read_from_the_start(raw: str | None, code: str) -> None:
    assert refusals.raw_response_code(raw) == code


@pytest.mark.parametrize(
    ("advice", "code"),
    [("21", "21"), ("01: New account information available", "01"), ("24 : x", "24"),
     ("2", ""), ("abc", ""), (None, "")],
)  # fmt: skip
def test_the_advice_code_is_two_digits(advice: str | None, code: str) -> None:
    assert refusals.advice_code(advice) == code
