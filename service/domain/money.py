"""Money: an integer count of minor units and an ISO 4217 currency. Never a float."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import iso4217

from service.errors import InvalidArgument

MAX_MINOR_UNITS = 10**15  # far above any real amount; thousands of them still sum in an int64


@cache
def currency_exponent(code: str) -> int | None:
    """Minor-unit exponent of an ISO 4217 code (USD 2, JPY 0, KWD 3); None when unknown.

    Codes without minor units (gold, SDR, the test code XTS) are not money we refund.
    """
    if len(code) != 3 or not code.isascii() or not code.isupper():
        return None
    try:
        exponent = iso4217.Currency(code).exponent
    except ValueError:
        return None
    return exponent if isinstance(exponent, int) else None


def validate_currency(code: str, field: str) -> str:
    if not code:
        raise InvalidArgument(field, "currency code is required")
    if currency_exponent(code) is None:
        raise InvalidArgument(field, f"{code!r} is not an ISO 4217 currency with minor units")
    return code


@dataclass(frozen=True, slots=True)
class Money:
    currency: str
    minor_units: int

    def __post_init__(self) -> None:
        if type(self.minor_units) is not int:
            raise TypeError("minor_units must be an int")

    @classmethod
    def parse(
        cls, currency: str, minor_units: int, field: str, *, allow_zero: bool = False
    ) -> Money:
        """Validated money from a request: known currency, positive (or zero) and bounded."""
        validate_currency(currency, f"{field}.currency_code")
        if minor_units < 0 or (minor_units == 0 and not allow_zero):
            raise InvalidArgument(
                f"{field}.minor_units",
                "must be zero or more" if allow_zero else "must be greater than zero",
            )
        if minor_units > MAX_MINOR_UNITS:
            raise InvalidArgument(f"{field}.minor_units", "is too large")
        return cls(currency, minor_units)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(currency, 0)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"currency mismatch: {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor_units + other.minor_units)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor_units - other.minor_units)

    def __str__(self) -> str:
        exponent = currency_exponent(self.currency) or 0
        sign = "-" if self.minor_units < 0 else ""
        units, minor = divmod(abs(self.minor_units), 10**exponent)
        if exponent == 0:
            return f"{sign}{units} {self.currency}"
        return f"{sign}{units}.{minor:0{exponent}d} {self.currency}"
