"""An independent check of the card-network rules over simulated attempt histories.

Written from ``card-network-rules.md`` directly, on the raw codes of every attempt, and sharing
nothing with :mod:`service.domain.network_rules` or :mod:`service.domain.decline_codes` (they
are what it checks). Every attempt is counted once per rule it breaks:

- ``visa.category1``: a Visa card attempted after a decline with a category-1 response code
  (04, 07, 12, 15, 41, 43, 46, 57, R0, R1, R3, and those some lists add: 03, 14, 62, 78, 93);
- ``visa.reattempt_limit``: a Visa card's reattempt (any attempt after its first decline) that
  is the 16th or later in a rolling 30 days;
- ``mastercard.mac.03`` / ``mastercard.mac.21``: a Mastercard attempted within 30 days after a
  decline with merchant advice code 03 or 21;
- ``mastercard.mac.wait``: a Mastercard attempted before a MAC 24-30 decline's wait is over
  (1 hour, 24 hours, 2, 4, 6, 8, 10 days);
- ``card.daily_limit``: a card's 21st or later attempt in 24 hours.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain.decline_codes import CardNetwork

VISA_CATEGORY_1 = frozenset(
    {"04", "07", "12", "15", "41", "43", "46", "57", "R0", "R1", "R3"}
    | {"03", "14", "62", "78", "93"}  # "some lists also ..." (card-network-rules.md)
)
VISA_MAX_REATTEMPTS = 15
VISA_WINDOW = timedelta(days=30)
MAC_NEVER = {"03": "mastercard.mac.03", "21": "mastercard.mac.21"}
MAC_NEVER_WINDOW = timedelta(days=30)
MAC_WAITS = {
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
MAX_ATTEMPTS_PER_DAY = 20
DAY = timedelta(hours=24)
RULE_IDS = (
    "visa.category1",
    "visa.reattempt_limit",
    "mastercard.mac.03",
    "mastercard.mac.21",
    "mastercard.mac.wait",
    "card.daily_limit",
)


@dataclass(frozen=True, slots=True)
class SimAttempt:
    """One charge of a simulated payment (the original failure included), as the gateway
    answered it."""

    at: datetime
    card: str  # payment method id: the card identity
    network: CardNetwork  # the card's network
    approved: bool
    decline_code: str = ""
    visa_response_code: str = ""
    mc_advice_code: str = ""
    source: str = "SCHEDULED"  # FAILURE (the original failure) or SCHEDULED
    retry_of_class: str = ""  # the class of the decline this attempt retried


def count_violations(attempts: Iterable[SimAttempt]) -> Counter[str]:
    """How many attempts break each rule (rule id -> count; rules not broken are absent)."""
    by_card: dict[str, list[SimAttempt]] = defaultdict(list)
    for attempt in attempts:
        by_card[attempt.card].append(attempt)
    found: Counter[str] = Counter()
    for card_attempts in by_card.values():
        found.update(_card_violations(sorted(card_attempts, key=lambda a: a.at)))
    return found


def _card_violations(attempts: list[SimAttempt]) -> Counter[str]:
    found: Counter[str] = Counter()
    first_decline = next((i for i, a in enumerate(attempts) if not a.approved), None)
    for i, attempt in enumerate(attempts):
        declines = [a for a in attempts[:i] if not a.approved]
        visa = attempt.network is CardNetwork.VISA
        mastercard = attempt.network is CardNetwork.MASTERCARD
        if visa and any(d.visa_response_code in VISA_CATEGORY_1 for d in declines):
            found["visa.category1"] += 1
        if mastercard:
            for code, rule in MAC_NEVER.items():
                if any(
                    d.mc_advice_code == code and attempt.at - d.at < MAC_NEVER_WINDOW
                    for d in declines
                ):
                    found[rule] += 1
            if any(
                d.mc_advice_code in MAC_WAITS and attempt.at < d.at + MAC_WAITS[d.mc_advice_code]
                for d in declines
            ):
                found["mastercard.mac.wait"] += 1
        if visa and first_decline is not None and i > first_decline:
            window = [
                a for a in attempts[first_decline + 1 : i + 1] if attempt.at - a.at < VISA_WINDOW
            ]
            if len(window) > VISA_MAX_REATTEMPTS:
                found["visa.reattempt_limit"] += 1
        day = [a for a in attempts[: i + 1] if attempt.at - a.at < DAY]
        if len(day) > MAX_ATTEMPTS_PER_DAY:
            found["card.daily_limit"] += 1
    return found
