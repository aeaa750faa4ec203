"""The recoverability model: how a population of failed payments looks and how likely a retry of
each one is to succeed at a given time. Read from a JSON file (``load_model``) or the built-in
:data:`DEFAULT_MODEL` (the same as ``examples/recoverability-model.json``).

Format
======

A JSON object. Keys starting with ``_`` are comments and are ignored at any level (the example
file documents itself in ``_doc``); any other unknown key is an error. Every error names the
JSON path of the bad field, e.g. ``declines[2].share must be between 0 and 1``.

``name`` (string), ``description`` (string)
    Shown in the report.

``population``
    ``payments``
        How many failed payments to simulate when ``--payments`` is not given (1..1,000,000).
    ``start``
        The simulated clock's start, an ISO 8601 time with an offset
        (``"2026-01-01T00:00:00Z"``).
    ``failures_over_days``
        The first failures fall uniformly at random in ``[start, start + this many days)``
        (1..366), any time of day.
    ``horizon_days``
        Each payment is followed this many days after its first failure (1..120); what has
        not happened by then does not count (a plan still waiting for the customer is "open").
    ``amounts``
        ``[{"currency": "USD", "minor_units": 1999, "share": 0.2}, ...]``: the price points.
        Amounts are integer minor units of an ISO 4217 currency (USD 1999 = 19.99 USD).
    ``time_zones``
        ``[{"zone": "America/New_York", "share": 0.25}, ...]``: the customers' IANA time
        zones (hours and days of month are the customer's local ones).
    ``networks``
        ``[{"network": "VISA", "share": 0.55}, ...]``: the failed card's network, one of
        VISA, MASTERCARD, AMEX, DISCOVER, OTHER.

    Every ``share`` is between 0 and 1 and the shares of a list sum to 1. Amount, time zone,
    network and decline are drawn independently of each other.

``declines``
    ``[{"code": "insufficient_funds", "visa_response_code": "51", "mc_advice_code": "",
    "network": "VISA", "share": 0.4}, ...]``: the decline mix of the first failures. ``code``
    is a Stripe decline code (lower_snake_case); ``visa_response_code`` (2 characters) is sent
    with the decline only when the card is a Visa card, ``mc_advice_code`` (2 digits, a
    Mastercard merchant advice code) only when it is a Mastercard; both optional. ``network``
    (optional) restricts the entry to cards of that network. The shares sum to 1; a card draws
    among the entries that apply to its network, in proportion to their shares (among all of
    them when none applies). Every later decline of the same card repeats the same codes (the
    engine classifies them with the real ``classify``: hard, soft or customer action).

``recovery``
    Per decline code, how likely a retry of that card is to succeed at time ``t``::

        p(t) = min(1, base_probability
                      x hour_multipliers[local hour of t]          (24 values, hour 0..23)
                      x day_of_month_multipliers[local day of t - 1]   (31 values: paydays)
                      x days_since_failure_multipliers[min(d, len - 1)])

    where ``d`` is the number of whole days (24 h) from the first failure to ``t``; the last
    ``days_since_failure_multipliers`` value holds for every later day (the decay). Multipliers
    are relative (1.0 = average), 0..100. ``recovery.default`` must give every field; an entry
    named by a decline code overrides any of them for that code. The other fields:

    ``fix_card_per_day``
        Probability per day since the first failure that the customer adds a new payment
        method (drawn once per payment; the time is a waking hour, 08:00-22:00 local). The
        engine uses it when the plan waits for a payment method (customer-action declines).
    ``pay_another_way_per_day``
        Probability per day that the customer pays another way (at a waking hour; the plan is
        then canceled, and it does not count as recovered).

``new_payment_method``
    ``success_probability``: the chance that a charge on the customer's new payment method
    succeeds (any time); ``decline_code``: the decline it gives otherwise, a soft code
    (default ``generic_decline``). The new card's network is drawn from ``networks``.

Probabilities are floats (they only draw outcomes); money is never a float.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from service.domain.decline_codes import (
    MAC_PATTERN,
    VISA_CODE_PATTERN,
    CardNetwork,
    Decline,
    DeclineClass,
    classify,
)
from service.domain.money import MAX_MINOR_UNITS, currency_exponent
from service.domain.retry_timing import validate_time_zone
from service.errors import InvalidArgument

T = TypeVar("T")

MAX_PAYMENTS = 1_000_000
MAX_MULTIPLIER = 100.0
MAX_DAYS_SINCE_VALUES = 366
SHARE_TOLERANCE = 1e-6
DECLINE_CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
PROFILE_FIELDS = (
    "base_probability",
    "hour_multipliers",
    "day_of_month_multipliers",
    "days_since_failure_multipliers",
    "fix_card_per_day",
    "pay_another_way_per_day",
)


class ModelError(ValueError):
    """A model file that cannot be used; ``path`` is the JSON path of the bad field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path} {message}" if path else message)


# ---- the model -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AmountChoice:
    currency: str
    minor_units: int
    share: float


@dataclass(frozen=True, slots=True)
class ZoneChoice:
    zone: str
    share: float


@dataclass(frozen=True, slots=True)
class NetworkChoice:
    network: CardNetwork
    share: float


@dataclass(frozen=True, slots=True)
class DeclineChoice:
    code: str
    share: float
    visa_response_code: str = ""
    mc_advice_code: str = ""
    network: CardNetwork | None = None  # None: any card

    def applies_to(self, network: CardNetwork) -> bool:
        return self.network is None or self.network is network

    def decline_on(self, network: CardNetwork) -> Decline:
        """The decline a card of ``network`` returns: the network's own code only on it."""
        return Decline(
            self.code,
            network,
            self.visa_response_code if network is CardNetwork.VISA else "",
            self.mc_advice_code if network is CardNetwork.MASTERCARD else "",
        )


@dataclass(frozen=True, slots=True)
class RecoveryProfile:
    base_probability: float
    hour_multipliers: tuple[float, ...]  # 24
    day_of_month_multipliers: tuple[float, ...]  # 31
    days_since_failure_multipliers: tuple[float, ...]  # 1.., the last holds for later days
    fix_card_per_day: float
    pay_another_way_per_day: float

    def probability(self, hour: int, day_of_month: int, days_since_failure: int) -> float:
        """The chance that a retry at local ``hour`` on local ``day_of_month``,
        ``days_since_failure`` whole days after the first failure, succeeds."""
        since = self.days_since_failure_multipliers
        p = (
            self.base_probability
            * self.hour_multipliers[hour]
            * self.day_of_month_multipliers[day_of_month - 1]
            * since[min(max(days_since_failure, 0), len(since) - 1)]
        )
        return min(p, 1.0)


@dataclass(frozen=True, slots=True)
class NewPaymentMethod:
    success_probability: float
    decline_code: str = "generic_decline"


@dataclass(frozen=True, slots=True)
class Population:
    payments: int
    start: datetime
    failures_over_days: int
    horizon_days: int
    amounts: tuple[AmountChoice, ...]
    time_zones: tuple[ZoneChoice, ...]
    networks: tuple[NetworkChoice, ...]

    @property
    def horizon(self) -> timedelta:
        return timedelta(days=self.horizon_days)


@dataclass(frozen=True, slots=True)
class RecoverabilityModel:
    name: str
    description: str
    population: Population
    declines: tuple[DeclineChoice, ...]
    default_profile: RecoveryProfile
    # Only the codes with their own entry; see profile().
    profiles: Mapping[str, RecoveryProfile]
    new_payment_method: NewPaymentMethod
    source: str = field(default="", compare=False)  # the file, or "built-in default"

    def profile(self, code: str) -> RecoveryProfile:
        return self.profiles.get(code, self.default_profile)


# ---- parsing -------------------------------------------------------------------------------


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _object(
    value: object, path: str, known: Sequence[str], required: Sequence[str]
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelError(path, "must be a JSON object")
    fields = {k: v for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    for key in fields:
        if key not in known:
            raise ModelError(_at(path, key), f"is not a known field (known: {', '.join(known)})")
    for key in required:
        if key not in fields:
            raise ModelError(_at(path, key), "is required")
    return fields


def _list(value: object, path: str, *, min_length: int = 1) -> list[Any]:
    if not isinstance(value, list):
        raise ModelError(path, "must be a JSON array")
    if len(value) < min_length:
        raise ModelError(
            path, f"needs at least {min_length} entr{'y' if min_length == 1 else 'ies'}"
        )
    return value


def _string(value: object, path: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ModelError(path, "must be a string")
    if not allow_empty and not value:
        raise ModelError(path, "must not be empty")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelError(path, f"must be a whole number between {low} and {high}")
    return value


def _number(value: object, path: str, low: float, high: float, what: str = "") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        low_text = f"{low:g}"
        high_text = f"{high:g}"
        raise ModelError(path, what or f"must be between {low_text} and {high_text}")
    return float(value)


def _probability(value: object, path: str) -> float:
    return _number(value, path, 0.0, 1.0)


def _multipliers(value: object, path: str, length: int | None) -> tuple[float, ...]:
    values = _list(value, path)
    if length is not None and len(values) != length:
        raise ModelError(path, f"needs {length} values, got {len(values)}")
    if length is None and len(values) > MAX_DAYS_SINCE_VALUES:
        raise ModelError(path, f"at most {MAX_DAYS_SINCE_VALUES} values")
    return tuple(_number(v, _at(path, i), 0.0, MAX_MULTIPLIER) for i, v in enumerate(values))


def _shares(items: Sequence[T], shares: Sequence[float], path: str) -> tuple[T, ...]:
    total = math.fsum(shares)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ModelError(path, f"shares must sum to 1 (they sum to {total:.6g})")
    return tuple(items)


def _decline_code(value: object, path: str) -> str:
    code = _string(value, path, allow_empty=False)
    if len(code) > 64 or not DECLINE_CODE.fullmatch(code):
        raise ModelError(path, "must be a lower_snake_case decline code (e.g. insufficient_funds)")
    return code


def _network(value: object, path: str) -> CardNetwork:
    text = _string(value, path)
    try:
        return CardNetwork(text)
    except ValueError:
        known = ", ".join(n.value for n in CardNetwork)
        raise ModelError(path, f"must be one of {known}") from None


def _amounts(value: object, path: str) -> tuple[AmountChoice, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        here = _at(path, i)
        item = _object(
            raw, here, ("currency", "minor_units", "share"), ("currency", "minor_units", "share")
        )
        currency = _string(item["currency"], _at(here, "currency"))
        if currency_exponent(currency) is None:
            raise ModelError(
                _at(here, "currency"), "must be an ISO 4217 currency code with minor units"
            )
        out.append(
            AmountChoice(
                currency,
                _int(item["minor_units"], _at(here, "minor_units"), 1, MAX_MINOR_UNITS),
                _probability(item["share"], _at(here, "share")),
            )
        )
    return _shares(out, [a.share for a in out], path)


def _zones(value: object, path: str) -> tuple[ZoneChoice, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        here = _at(path, i)
        item = _object(raw, here, ("zone", "share"), ("zone", "share"))
        zone = _string(item["zone"], _at(here, "zone"))
        try:
            validate_time_zone(zone, _at(here, "zone"))
        except InvalidArgument:
            raise ModelError(
                _at(here, "zone"), f"{zone!r} is not an IANA time zone (e.g. Europe/Berlin)"
            ) from None
        out.append(ZoneChoice(zone, _probability(item["share"], _at(here, "share"))))
    return _shares(out, [z.share for z in out], path)


def _networks(value: object, path: str) -> tuple[NetworkChoice, ...]:
    out = []
    for i, raw in enumerate(_list(value, path)):
        here = _at(path, i)
        item = _object(raw, here, ("network", "share"), ("network", "share"))
        out.append(
            NetworkChoice(
                _network(item["network"], _at(here, "network")),
                _probability(item["share"], _at(here, "share")),
            )
        )
    return _shares(out, [n.share for n in out], path)


def _population(value: object, path: str) -> Population:
    known = (
        "payments",
        "start",
        "failures_over_days",
        "horizon_days",
        "amounts",
        "time_zones",
        "networks",
    )
    item = _object(value, path, known, known)
    start_text = _string(item["start"], _at(path, "start"))
    try:
        start = datetime.fromisoformat(start_text)
    except ValueError:
        start = None
    if start is None or start.tzinfo is None or start.utcoffset() is None:
        raise ModelError(
            _at(path, "start"), "must be an ISO 8601 time with an offset (2026-01-01T00:00:00Z)"
        )
    return Population(
        payments=_int(item["payments"], _at(path, "payments"), 1, MAX_PAYMENTS),
        start=start,
        failures_over_days=_int(
            item["failures_over_days"], _at(path, "failures_over_days"), 1, 366
        ),
        horizon_days=_int(item["horizon_days"], _at(path, "horizon_days"), 1, 120),
        amounts=_amounts(item["amounts"], _at(path, "amounts")),
        time_zones=_zones(item["time_zones"], _at(path, "time_zones")),
        networks=_networks(item["networks"], _at(path, "networks")),
    )


def _declines(value: object, path: str) -> tuple[DeclineChoice, ...]:
    out = []
    known = ("code", "visa_response_code", "mc_advice_code", "network", "share")
    for i, raw in enumerate(_list(value, path)):
        here = _at(path, i)
        item = _object(raw, here, known, ("code", "share"))
        visa = _string(item.get("visa_response_code", ""), _at(here, "visa_response_code"))
        if visa and not VISA_CODE_PATTERN.fullmatch(visa):
            raise ModelError(
                _at(here, "visa_response_code"), "must be 2 upper-case letters or digits, or empty"
            )
        mac = _string(item.get("mc_advice_code", ""), _at(here, "mc_advice_code"))
        if mac and not MAC_PATTERN.fullmatch(mac):
            raise ModelError(_at(here, "mc_advice_code"), "must be 2 digits, or empty")
        network = item.get("network")
        out.append(
            DeclineChoice(
                code=_decline_code(item["code"], _at(here, "code")),
                share=_probability(item["share"], _at(here, "share")),
                visa_response_code=visa,
                mc_advice_code=mac,
                network=None if network is None else _network(network, _at(here, "network")),
            )
        )
    return _shares(out, [d.share for d in out], path)


Field = float | tuple[float, ...]


def _profile_fields(value: object, path: str, *, complete: bool) -> dict[str, Field]:
    item = _object(value, path, PROFILE_FIELDS, PROFILE_FIELDS if complete else ())
    parsed: dict[str, Field] = {}
    for key, raw in item.items():
        here = _at(path, key)
        if key == "hour_multipliers":
            parsed[key] = _multipliers(raw, here, 24)
        elif key == "day_of_month_multipliers":
            parsed[key] = _multipliers(raw, here, 31)
        elif key == "days_since_failure_multipliers":
            parsed[key] = _multipliers(raw, here, None)
        else:
            parsed[key] = _probability(raw, here)
    return parsed


def _build_profile(fields: Mapping[str, Field]) -> RecoveryProfile:
    def number(name: str) -> float:
        value = fields[name]
        assert isinstance(value, float)
        return value

    def values(name: str) -> tuple[float, ...]:
        value = fields[name]
        assert isinstance(value, tuple)
        return value

    return RecoveryProfile(
        base_probability=number("base_probability"),
        hour_multipliers=values("hour_multipliers"),
        day_of_month_multipliers=values("day_of_month_multipliers"),
        days_since_failure_multipliers=values("days_since_failure_multipliers"),
        fix_card_per_day=number("fix_card_per_day"),
        pay_another_way_per_day=number("pay_another_way_per_day"),
    )


def _recovery(
    value: object, path: str, declines: Sequence[DeclineChoice]
) -> tuple[RecoveryProfile, dict[str, RecoveryProfile]]:
    if not isinstance(value, dict):
        raise ModelError(path, "must be a JSON object")
    entries = {k: v for k, v in value.items() if not k.startswith("_")}
    if "default" not in entries:
        raise ModelError(_at(path, "default"), "is required (every field of a profile)")
    base = _profile_fields(entries["default"], _at(path, "default"), complete=True)
    default = _build_profile(base)
    codes = {d.code for d in declines}
    profiles: dict[str, RecoveryProfile] = {}
    for code, raw in entries.items():
        if code == "default":
            continue
        if code not in codes:
            raise ModelError(_at(path, code), "is not a decline code of any entry in declines")
        fields = base | _profile_fields(raw, _at(path, code), complete=False)
        profiles[code] = _build_profile(fields)
    return default, profiles


def _new_method(value: object, path: str) -> NewPaymentMethod:
    item = _object(value, path, ("success_probability", "decline_code"), ("success_probability",))
    code = _decline_code(item.get("decline_code", "generic_decline"), _at(path, "decline_code"))
    if classify(Decline(code)).decline_class is not DeclineClass.SOFT:
        raise ModelError(
            _at(path, "decline_code"), "must be a soft decline code (e.g. generic_decline)"
        )
    return NewPaymentMethod(
        _probability(item["success_probability"], _at(path, "success_probability")), code
    )


def parse_model(data: object, source: str = "") -> RecoverabilityModel:
    """The model in ``data`` (a parsed JSON document), validated; ModelError names the field."""
    known = ("name", "description", "population", "declines", "recovery", "new_payment_method")
    item = _object(data, "", known, ("population", "declines", "recovery", "new_payment_method"))
    declines = _declines(item["declines"], "declines")
    default, profiles = _recovery(item["recovery"], "recovery", declines)
    return RecoverabilityModel(
        name=_string(item.get("name", "unnamed"), "name"),
        description=_string(item.get("description", ""), "description"),
        population=_population(item["population"], "population"),
        declines=declines,
        default_profile=default,
        profiles=MappingProxyType(profiles),
        new_payment_method=_new_method(item["new_payment_method"], "new_payment_method"),
        source=source,
    )


def load_model(path: str | Path) -> RecoverabilityModel:
    """The model in the JSON file ``path``. ModelError when it is not readable JSON or a field
    is invalid (the message names the field's JSON path)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError("", f"cannot read the model file {str(path)!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(
            "", f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_model(data, str(path))


def dump_model_json(data: Mapping[str, object]) -> str:
    """A model document as JSON text for people: lists of numbers and small objects on one
    line."""
    return _dump(data, 0) + "\n"


def _dump(value: object, level: int) -> str:
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(value, dict):
        flat = all(not isinstance(v, dict | list) for v in value.values())
        inline = "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
        if value and flat and len(inline) + len(pad) <= 100:
            return inline
        items = [f"{pad}{_scalar(k)}: {_dump(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(_scalar(v) for v in value) + "]"
        items = [f"{pad}{_dump(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return _scalar(value)


def _scalar(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- the built-in default ------------------------------------------------------------------


def _days(special: Mapping[int, float], other: float) -> list[float]:
    return [special.get(day, other) for day in range(1, 32)]


# Local hour 0..23: night worst, mornings once overnight deposits have posted best.
_HOURS = [
    *(0.6, 0.55, 0.5, 0.5, 0.55, 0.65),
    *(0.85, 1.0, 1.15, 1.25, 1.3, 1.3),
    *(1.25, 1.25, 1.2, 1.2, 1.15, 1.1),
    *(1.05, 1.0, 0.9, 0.8, 0.7, 0.65),
]
# Insufficient funds: the morning after payroll deposits post is best.
_HOURS_FUNDS = [
    *(0.5, 0.45, 0.45, 0.45, 0.55, 0.75),
    *(1.05, 1.35, 1.45, 1.4, 1.3, 1.25),
    *(1.2, 1.15, 1.1, 1.05, 1.0, 0.95),
    *(0.9, 0.85, 0.8, 0.7, 0.6, 0.55),
]
# Paydays: the 1st, the 15th and the last days of the month; mid-fortnight balances run lowest.
_PAYDAYS = _days(
    {1: 2.6, 2: 2.2, 3: 1.5, 4: 1.15, 14: 0.95, 15: 2.2, 16: 1.9, 17: 1.3}
    | {25: 0.9, 26: 1.0, 27: 1.2, 28: 1.6, 29: 1.9, 30: 2.3, 31: 2.4},
    0.65,
)
_FLAT_DAYS = _days({1: 1.1, 15: 1.05, 30: 1.05, 31: 1.05}, 1.0)
# Days since the first failure: day 0 rarely works (the cause is still there), then a fade.
_DECAY = [0.6, 1.0, 1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72, 0.68, 0.65, 0.62, 0.59]
_DECAY += [0.56, 0.54, 0.52, 0.5, 0.48, 0.46, 0.44, 0.42, 0.4, 0.38, 0.36, 0.35]
# Insufficient funds does not fade much: the money comes on payday whatever the day since.
_DECAY_FUNDS = [0.7, 0.95, 1.0, 1.0, 1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84]
_DECAY_FUNDS += [0.82, 0.8, 0.78, 0.76, 0.74, 0.72, 0.7, 0.68, 0.66, 0.64, 0.62, 0.6]
# Temporary issuer or processing trouble: good soon, then whatever is left is not temporary.
_DECAY_TRANSIENT = [1.3, 1.0, 0.75, 0.55, 0.45, 0.38, 0.33, 0.3, 0.28, 0.26, 0.25]

DEFAULT_MODEL_DATA: dict[str, object] = {
    "_doc": {
        "about": "The recoverability model of `refund-retry simulate`: which payments fail, "
        "why, and how likely a retry is to succeed at a given local hour, day of month and "
        "day since the failure. This file is the built-in default; copy it, change the "
        "numbers to your customers' patterns and run `refund-retry simulate --model FILE`. "
        "Keys starting with '_' are comments.",
        "probability": "p(t) = min(1, base_probability * hour_multipliers[local hour] * "
        "day_of_month_multipliers[local day - 1] * days_since_failure_multipliers[min(d, "
        "len - 1)]), d = whole days since the first failure; multipliers are relative "
        "(1.0 = average), 0..100.",
        "population.payments": "failed payments simulated when --payments is not given",
        "population.start": "the simulated clock's start (ISO 8601 with an offset)",
        "population.failures_over_days": "first failures fall uniformly in [start, start + "
        "this many days)",
        "population.horizon_days": "each payment is followed this many days after its first "
        "failure",
        "population.amounts": "price points: ISO 4217 currency, integer minor units, share",
        "population.time_zones": "the customers' IANA time zones, with shares",
        "population.networks": "the failed card's network (VISA, MASTERCARD, AMEX, DISCOVER, "
        "OTHER), with shares",
        "declines": "the decline mix: Stripe decline code, optional Visa response code (sent "
        "on Visa cards only) and Mastercard merchant advice code (Mastercard only), optional "
        "network the entry is restricted to, share; shares sum to 1; every later decline of "
        "the card repeats the same codes",
        "recovery.default": "every field of a recovery profile; other entries, named by "
        "decline code, override any of them",
        "recovery.*.base_probability": "chance a retry succeeds before the multipliers",
        "recovery.*.hour_multipliers": "24 values, local hour 0..23",
        "recovery.*.day_of_month_multipliers": "31 values, local day 1..31 (paydays)",
        "recovery.*.days_since_failure_multipliers": "day 0, 1, ...; the last value holds "
        "for later days",
        "recovery.*.fix_card_per_day": "chance per day that the customer adds a new payment "
        "method (used when the plan waits for one: customer-action declines)",
        "recovery.*.pay_another_way_per_day": "chance per day that the customer pays another "
        "way (the plan is canceled; not a recovery)",
        "new_payment_method": "success_probability of a charge on the customer's new method; "
        "decline_code (soft) it gives otherwise",
    },
    "name": "default",
    "description": "Subscription renewals: insufficient funds dominate and recover on paydays; "
    "about a sixth of the declines need the customer; a few are hard.",
    "population": {
        "payments": 2000,
        "start": "2026-01-01T00:00:00Z",
        "failures_over_days": 60,
        "horizon_days": 35,
        "amounts": [
            {"currency": "USD", "minor_units": 999, "share": 0.25},
            {"currency": "USD", "minor_units": 1999, "share": 0.2},
            {"currency": "USD", "minor_units": 4999, "share": 0.1},
            {"currency": "EUR", "minor_units": 999, "share": 0.15},
            {"currency": "EUR", "minor_units": 2999, "share": 0.1},
            {"currency": "GBP", "minor_units": 799, "share": 0.1},
            {"currency": "JPY", "minor_units": 1200, "share": 0.1},
        ],
        "time_zones": [
            {"zone": "America/New_York", "share": 0.25},
            {"zone": "America/Chicago", "share": 0.1},
            {"zone": "America/Los_Angeles", "share": 0.15},
            {"zone": "Europe/London", "share": 0.15},
            {"zone": "Europe/Berlin", "share": 0.15},
            {"zone": "Asia/Kolkata", "share": 0.05},
            {"zone": "Asia/Tokyo", "share": 0.1},
            {"zone": "Australia/Sydney", "share": 0.05},
        ],
        "networks": [
            {"network": "VISA", "share": 0.55},
            {"network": "MASTERCARD", "share": 0.35},
            {"network": "AMEX", "share": 0.07},
            {"network": "DISCOVER", "share": 0.03},
        ],
    },
    "declines": [
        {"code": "insufficient_funds", "visa_response_code": "51", "share": 0.45},
        {"code": "do_not_honor", "visa_response_code": "05", "share": 0.12},
        {"code": "generic_decline", "share": 0.13},
        {"code": "issuer_not_available", "visa_response_code": "91", "share": 0.03},
        {"code": "processing_error", "visa_response_code": "96", "share": 0.02},
        {"code": "try_again_later", "mc_advice_code": "24", "network": "MASTERCARD", "share": 0.02},
        {"code": "do_not_honor", "mc_advice_code": "26", "network": "MASTERCARD", "share": 0.02},
        {"code": "expired_card", "visa_response_code": "54", "share": 0.08},
        {"code": "incorrect_cvc", "visa_response_code": "N7", "share": 0.02},
        {"code": "authentication_required", "visa_response_code": "1A", "share": 0.03},
        {"code": "card_velocity_exceeded", "visa_response_code": "61", "share": 0.02},
        {"code": "stolen_card", "visa_response_code": "43", "share": 0.01},
        {"code": "lost_card", "visa_response_code": "41", "share": 0.01},
        {"code": "generic_decline", "visa_response_code": "R1", "network": "VISA", "share": 0.01},
        {"code": "do_not_honor", "mc_advice_code": "03", "network": "MASTERCARD", "share": 0.01},
        {"code": "generic_decline", "mc_advice_code": "21", "network": "MASTERCARD", "share": 0.01},
        {"code": "generic_decline", "mc_advice_code": "01", "network": "MASTERCARD", "share": 0.01},
    ],
    "recovery": {
        "default": {
            "base_probability": 0.09,
            "hour_multipliers": _HOURS,
            "day_of_month_multipliers": _FLAT_DAYS,
            "days_since_failure_multipliers": _DECAY,
            "fix_card_per_day": 0.0,
            "pay_another_way_per_day": 0.01,
        },
        "insufficient_funds": {
            "base_probability": 0.06,
            "hour_multipliers": _HOURS_FUNDS,
            "day_of_month_multipliers": _PAYDAYS,
            "days_since_failure_multipliers": _DECAY_FUNDS,
        },
        "generic_decline": {"fix_card_per_day": 0.05},
        "do_not_honor": {"base_probability": 0.07},
        "issuer_not_available": {
            "base_probability": 0.35,
            "days_since_failure_multipliers": _DECAY_TRANSIENT,
        },
        "processing_error": {
            "base_probability": 0.4,
            "days_since_failure_multipliers": _DECAY_TRANSIENT,
        },
        "try_again_later": {
            "base_probability": 0.3,
            "days_since_failure_multipliers": _DECAY_TRANSIENT,
        },
        "expired_card": {
            "base_probability": 0.0,
            "fix_card_per_day": 0.07,
            "pay_another_way_per_day": 0.015,
        },
        "incorrect_cvc": {"base_probability": 0.0, "fix_card_per_day": 0.06},
        "authentication_required": {"base_probability": 0.0, "fix_card_per_day": 0.12},
        "card_velocity_exceeded": {"base_probability": 0.05, "fix_card_per_day": 0.04},
        "stolen_card": {"base_probability": 0.0, "pay_another_way_per_day": 0.02},
        "lost_card": {"base_probability": 0.0, "pay_another_way_per_day": 0.02},
    },
    "new_payment_method": {"success_probability": 0.85, "decline_code": "generic_decline"},
}

DEFAULT_MODEL = parse_model(DEFAULT_MODEL_DATA, "built-in default")
