"""Money: ISO 4217 exponents, request validation, arithmetic and formatting."""

from __future__ import annotations

import iso4217
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.money import MAX_MINOR_UNITS, Money, currency_exponent, validate_currency
from service.errors import InvalidArgument

MINOR_UNIT_CURRENCIES = sorted(c.code for c in iso4217.Currency if isinstance(c.exponent, int))
NO_MINOR_UNIT_CURRENCIES = sorted(
    c.code for c in iso4217.Currency if not isinstance(c.exponent, int)
)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("JPY", 0), ("USD", 2), ("EUR", 2), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_currency_exponent_of_known_currencies(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize(
    "code",
    ["", "usd", "Usd", "US", "USDX", "ABC", "QQQ", "XAU", "XAG", "XXX", "XTS", "XDR", "840", "ÜSD"],
)
def test_currency_exponent_of_unknown_or_non_money_codes_is_none(code: str) -> None:
    assert currency_exponent(code) is None


def test_iso_list_has_both_kinds() -> None:
    # Guards the parametrised tests below against an empty list.
    assert len(MINOR_UNIT_CURRENCIES) > 100
    assert "XAU" in NO_MINOR_UNIT_CURRENCIES


@pytest.mark.parametrize("code", MINOR_UNIT_CURRENCIES)
def test_every_iso_currency_with_minor_units_is_accepted(code: str) -> None:
    assert currency_exponent(code) == iso4217.Currency(code).exponent
    assert validate_currency(code, "amount.currency_code") == code
    money = Money.parse(code, 1, "amount")
    assert money == Money(code, 1)


@pytest.mark.parametrize("code", NO_MINOR_UNIT_CURRENCIES)
def test_iso_codes_without_minor_units_are_refused(code: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        Money.parse(code, 100, "amount")
    assert exc.value.field == "amount.currency_code"


def test_parse_valid_amount() -> None:
    assert Money.parse("USD", 1050, "refund.amount") == Money("USD", 1050)


@pytest.mark.parametrize("minor_units", [0, -1, -(10**6)])
def test_parse_refuses_zero_and_negative(minor_units: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        Money.parse("USD", minor_units, "amount")
    assert exc.value.field == "amount.minor_units"
    assert "amount.minor_units" in str(exc.value)
    assert exc.value.context["field"] == "amount.minor_units"


def test_parse_field_prefix_is_the_callers() -> None:
    with pytest.raises(InvalidArgument) as exc:
        Money.parse("USD", 0, "items[2].amount")
    assert exc.value.field == "items[2].amount.minor_units"


@pytest.mark.parametrize("code", ["", "usd", "ABC", "XAU"])
def test_parse_refuses_unknown_currency(code: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        Money.parse(code, 100, "amount")
    assert exc.value.field == "amount.currency_code"


def test_currency_is_checked_before_amount() -> None:
    with pytest.raises(InvalidArgument) as exc:
        Money.parse("ABC", -5, "amount")
    assert exc.value.field == "amount.currency_code"


def test_parse_upper_bound() -> None:
    assert Money.parse("USD", MAX_MINOR_UNITS, "amount").minor_units == MAX_MINOR_UNITS
    with pytest.raises(InvalidArgument) as exc:
        Money.parse("USD", MAX_MINOR_UNITS + 1, "amount")
    assert exc.value.field == "amount.minor_units"
    assert "too large" in exc.value.message


def test_max_minor_units_fits_int64() -> None:
    assert MAX_MINOR_UNITS < 2**63 - 1


def test_allow_zero() -> None:
    assert Money.parse("JPY", 0, "amount", allow_zero=True) == Money("JPY", 0)
    with pytest.raises(InvalidArgument) as exc:
        Money.parse("JPY", -1, "amount", allow_zero=True)
    assert exc.value.field == "amount.minor_units"
    assert "zero or more" in exc.value.message


def test_zero() -> None:
    assert Money.zero("KWD") == Money("KWD", 0)


@pytest.mark.parametrize("bad", [1.0, 10.5, True, False, "100", None])
def test_minor_units_must_be_an_int(bad: object) -> None:
    with pytest.raises(TypeError):
        Money("USD", bad)  # type: ignore[arg-type]


def test_money_is_frozen() -> None:
    money = Money("USD", 1)
    with pytest.raises(AttributeError):
        money.minor_units = 2  # type: ignore[misc]


def test_add_and_sub_same_currency() -> None:
    assert Money("USD", 150) + Money("USD", 50) == Money("USD", 200)
    assert Money("USD", 150) - Money("USD", 200) == Money("USD", -50)


@pytest.mark.parametrize(
    ("left", "right"),
    [(Money("USD", 1), Money("EUR", 1)), (Money("JPY", 0), Money("USD", 0))],
)
def test_add_and_sub_of_different_currencies_raise(left: Money, right: Money) -> None:
    with pytest.raises(ValueError, match="currency mismatch"):
        _ = left + right
    with pytest.raises(ValueError, match="currency mismatch"):
        _ = left - right


@given(
    code=st.sampled_from(MINOR_UNIT_CURRENCIES),
    a=st.integers(-(2**62), 2**62),
    b=st.integers(-(2**62), 2**62),
)
def test_add_sub_roundtrip(code: str, a: int, b: int) -> None:
    assert (Money(code, a) + Money(code, b)) - Money(code, b) == Money(code, a)


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money("USD", 1050), "10.50 USD"),
        (Money("USD", 5), "0.05 USD"),
        (Money("USD", 0), "0.00 USD"),
        (Money("USD", 100), "1.00 USD"),
        (Money("USD", -1050), "-10.50 USD"),
        (Money("USD", -5), "-0.05 USD"),
        (Money("JPY", 5), "5 JPY"),
        (Money("JPY", 123456), "123456 JPY"),
        (Money("JPY", -5), "-5 JPY"),
        (Money("KWD", 1234), "1.234 KWD"),
        (Money("KWD", 1), "0.001 KWD"),
        (Money("KWD", -1234), "-1.234 KWD"),
        (Money("CLF", 12345), "1.2345 CLF"),
    ],
)
def test_str(money: Money, text: str) -> None:
    assert str(money) == text


@given(code=st.sampled_from(MINOR_UNIT_CURRENCIES), units=st.integers(-(10**15), 10**15))
def test_str_round_trips_through_decimal_text(code: str, units: int) -> None:
    text = str(Money(code, units))
    number, _, suffix = text.partition(" ")
    assert suffix == code
    exponent = iso4217.Currency(code).exponent
    whole, _, fraction = number.lstrip("-").partition(".")
    assert len(fraction) == exponent
    parsed = int(whole + fraction)
    assert (-parsed if number.startswith("-") else parsed) == units
