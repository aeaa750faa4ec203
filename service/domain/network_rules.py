"""Card-network retry rules: may this card be charged at this time, given its history?

The rules are data (:data:`RULES`, each with its source); :func:`check_attempt` and
:func:`earliest_allowed` are pure functions of (card, network, time, history, limits);
:class:`CardRules` answers both for one card, its history read once.

Conventions, the same in every rule:

- Only the card's own attempts count (the same payment method id: same PAN, same merchant),
  and only those at or before the time asked about: the history is what already happened.
- A rolling window of length W at time t is (t - W, t]: an attempt made exactly W before t has
  left it, so the earliest allowed time is "oldest counted attempt + W".
- A Visa reattempt is any attempt on the card after its first decline (the first decline in
  time; equal times keep the history's order). An approval does not restart the count.
- Every decline's wait (MAC 24-30, 02) holds, not only the latest one's.
- The Visa limit applies to a Visa card: this attempt's network or a past one's is VISA, or a
  past decline of the card carried a Visa response code that was read as Visa's (a card whose
  network was not given: only Visa sends those codes). The daily limit and the never rules
  apply to every card, whatever its network.
- The "never" rules (Visa category 1, MAC 03 and 21, a hard decline) hold for good. The networks
  charge for retries within 30 days of such a decline; we read that conservatively as never,
  so the violation's ``retry_at`` is None and :func:`earliest_allowed` returns None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from typing import NamedTuple

from service.domain.decline_codes import CardNetwork, Classification, DeclineClass
from service.errors import InvalidArgument

DAY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class NetworkRule:
    rule_id: str
    description: str
    source: str


# Checked in this order; the first rule an attempt breaks is the one reported.
RULES: tuple[NetworkRule, ...] = (
    NetworkRule(  # source: card-network-rules.md, "Visa: decline categories"
        "visa.category1",
        "after a Visa category-1 decline (issuer will never approve) the card is never "
        "attempted again; Visa charges a fee for every such reattempt",
        "card-network-rules.md, Visa decline categories (Visa rules in force since 2021)",
    ),
    NetworkRule(  # source: card-network-rules.md, "Mastercard: merchant advice codes"
        "mastercard.mac.21",
        "after MAC 21 (the cardholder stopped the recurring payment) the card is never "
        "attempted again; Mastercard charges for retries within 30 days",
        "card-network-rules.md, Mastercard merchant advice codes",
    ),
    NetworkRule(  # source: card-network-rules.md, "Mastercard: merchant advice codes"
        "mastercard.mac.03",
        "after MAC 03 (do not try again) the card is never attempted again; Mastercard "
        "charges for retries within 30 days",
        "card-network-rules.md, Mastercard merchant advice codes",
    ),
    NetworkRule(  # source: DESIGN.md section 3 step 1; card-network-rules.md, Stripe codes
        "card.never_retry",
        "after any other hard decline (lost, stolen, revoked, ...) the card is not attempted again",
        "DESIGN.md, Retry plan, step 1 (hard: never retry)",
    ),
    NetworkRule(  # source: card-network-rules.md, "Mastercard: merchant advice codes"
        "mastercard.mac.wait",
        "after MAC 24-30 the card is not attempted before the decline time plus the code's "
        "delay (1 h, 24 h, 2, 4, 6, 8, 10 days); MAC 02: 72 h",
        "card-network-rules.md, Mastercard merchant advice codes (MAC 02: one processor)",
    ),
    NetworkRule(  # source: card-network-rules.md, "Visa: decline categories"
        "visa.reattempt_limit",
        "a Visa card is reattempted at most visa_max_reattempts times (default 15) in any "
        "rolling visa_window (30 days) after its first decline",
        "card-network-rules.md, Visa decline categories 2-4 (fees from the 16th reattempt)",
    ),
    NetworkRule(  # source: card-network-rules.md, "excessive authorization attempts"
        "card.daily_limit",
        "at most max_attempts_per_day attempts (default 20) on one card in any 24 hours, "
        "whatever the network",
        "card-network-rules.md, Mastercard excessive authorization attempts (US and Canada)",
    ),
)
RULES_BY_ID: dict[str, NetworkRule] = {rule.rule_id: rule for rule in RULES}


@dataclass(frozen=True, slots=True)
class NetworkLimits:
    # Per card, rolling window. One unconfirmed source says 20 from April 2026: configurable.
    visa_max_reattempts: int = 15
    visa_window: timedelta = timedelta(days=30)
    # MAC 03/21 forbid retries of the same card within it (we never retry: see the module doc).
    mastercard_never_window: timedelta = timedelta(days=30)
    # "Excessive authorization attempts": more than 20 on one card in 24 h.
    max_attempts_per_day: int = 20

    def __post_init__(self) -> None:
        for name in ("visa_max_reattempts", "max_attempts_per_day"):
            count: object = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidArgument(f"network_limits.{name}", "must be a positive whole number")
        for name in ("visa_window", "mastercard_never_window"):
            window: object = getattr(self, name)
            if not isinstance(window, timedelta) or window <= timedelta(0):
                raise InvalidArgument(f"network_limits.{name}", "must be a positive duration")


DEFAULT_LIMITS = NetworkLimits()


@dataclass(frozen=True, slots=True)
class PastAttempt:
    at: datetime  # aware
    card: str  # payment method id (the card identity: same PAN, same merchant)
    network: CardNetwork
    approved: bool
    classification: Classification | None  # None when approved

    def __post_init__(self) -> None:
        _require_aware(self.at, "attempt.at")
        if self.approved and self.classification is not None:
            raise InvalidArgument("attempt.classification", "must be empty for an approval")


@dataclass(frozen=True, slots=True)
class Violation:
    rule_id: str  # one of RULES
    message: str  # plain words naming the rule and the numbers
    retry_at: datetime | None  # the earliest time the attempt would be allowed; None: never


def check_attempt(
    card: str,
    network: CardNetwork,
    at: datetime,
    history: Sequence[PastAttempt],
    limits: NetworkLimits = DEFAULT_LIMITS,
) -> Violation | None:
    """None when an attempt on ``card`` at ``at`` respects every rule given the card's history
    (``history`` may hold other cards' attempts: they do not count); else the first rule it
    breaks, with the earliest time every rule would allow (None: never)."""
    return CardRules(card, network, history, limits).check(at)


def earliest_allowed(
    card: str,
    network: CardNetwork,
    after: datetime,
    history: Sequence[PastAttempt],
    limits: NetworkLimits = DEFAULT_LIMITS,
) -> datetime | None:
    """The first instant >= ``after`` at which :func:`check_attempt` returns None; None when
    the card may never be retried.

    Whether an attempt is allowed only changes when an attempt enters or leaves a window or a
    wait ends, so the answer is ``after`` or one of those instants: each is tried in order."""
    return CardRules(card, network, history, limits).earliest_allowed(after)


class CardRules:
    """:func:`check_attempt` and :func:`earliest_allowed` for one card, its history sorted
    and read once: for callers that ask about several times (``decide`` checks every slot it
    picks; ``earliest_allowed`` tries every change point)."""

    __slots__ = ("_attempts", "_limits", "_network", "_nevers", "_visa_times", "_waits")

    def __init__(
        self,
        card: str,
        network: CardNetwork,
        history: Sequence[PastAttempt],
        limits: NetworkLimits = DEFAULT_LIMITS,
    ) -> None:
        self._network, self._limits = network, limits
        # The card's attempts, oldest first (equal times keep the history's order).
        self._attempts = sorted([a for a in history if a.card == card], key=_TIME_OF)
        # What does not depend on the time asked about, found once: the declines a never rule
        # holds after (with the first such rule and its place in the order), the declines that
        # ask for a wait (with its end), and the times of the card's attempts that show it is a
        # Visa card.
        self._nevers: list[tuple[int, str, PastAttempt]] = []
        self._waits: list[tuple[datetime, PastAttempt, timedelta]] = []
        self._visa_times = [a.at for a in self._attempts if _shows_visa(a)]
        for attempt in self._attempts:
            c = attempt.classification
            if attempt.approved or c is None:
                continue
            rule_id = _never_rule(c)
            if rule_id is not None:
                self._nevers.append((_NEVER_ORDER[rule_id], rule_id, attempt))
            if c.earliest_retry_after is not None:
                self._waits.append(
                    (attempt.at + c.earliest_retry_after, attempt, c.earliest_retry_after)
                )

    def check(self, at: datetime) -> Violation | None:
        """:func:`check_attempt` for this card."""
        _require_aware(at, "at")
        refusal = self._refusal(at)
        if refusal is None:
            return None
        retry_at = None if refusal.never else self._earliest(at)
        return Violation(refusal.rule_id, refusal.message(), retry_at)

    def earliest_allowed(self, after: datetime) -> datetime | None:
        """:func:`earliest_allowed` for this card."""
        _require_aware(after, "after")
        return self._earliest(after)

    def _earliest(self, after: datetime) -> datetime | None:
        # ``after`` itself is the usual answer: the change points are only listed if it is not.
        refusal = self._refusal(after)
        if refusal is None:
            return after
        if refusal.never:
            return None  # a never rule holds for good
        for candidate in _change_points(self._attempts, after, self._limits):
            refusal = self._refusal(candidate)
            if refusal is None:
                return candidate
            if refusal.never:
                return None
        return None  # unreachable: after the last change point every window and wait is over

    def _refusal(self, at: datetime) -> _Refusal | None:
        """The first rule an attempt at ``at`` breaks. Its message is only written when a
        violation is reported: earliest_allowed tries many times and says nothing."""
        limits = self._limits
        own = [a for a in self._attempts if a.at <= at]
        never: tuple[int, str, PastAttempt] | None = None
        for found in self._nevers:  # the first rule in order, and the first decline it holds after
            if found[2].at <= at and (never is None or found[0] < never[0]):
                never = found
        if never is not None:
            _, rule_id, attempt = never
            label = _NEVER_LABELS[rule_id]
            return _Refusal(rule_id, lambda: _never_message(label, attempt, limits), never=True)

        waits = [w for w in self._waits if w[1].at <= at and at < w[0]] if self._waits else None
        if waits:
            until, attempt, wait = max(waits, key=_END_OF_WAIT)
            return _Refusal(
                "mastercard.mac.wait",
                lambda: _wait_message(attempt, wait, until),
                never=False,
            )

        # The two limits count some of the card's attempts so far (the Visa one: those after its
        # first decline): a card with fewer attempts than a limit cannot reach it.
        if len(own) > limits.visa_max_reattempts and (
            self._network is _VISA or any(t <= at for t in self._visa_times)
        ):
            first = next((i for i, a in enumerate(own) if not a.approved), None)
            if first is not None:
                counted = [a for a in own[first + 1 :] if a.at > at - limits.visa_window]
                if len(counted) >= limits.visa_max_reattempts:
                    return _Refusal(
                        "visa.reattempt_limit",
                        lambda: (
                            f"Visa allows at most {limits.visa_max_reattempts} reattempts of a "
                            f"card in {_duration(limits.visa_window)}; {len(counted)} were "
                            f"made since {_when(counted[0].at)}"
                        ),
                        never=False,
                    )

        if len(own) >= limits.max_attempts_per_day:
            recent = [a for a in own if a.at > at - DAY]
            if len(recent) >= limits.max_attempts_per_day:
                return _Refusal(
                    "card.daily_limit",
                    lambda: (
                        f"at most {limits.max_attempts_per_day} attempts on one card in 24 "
                        f"hours (excessive authorization attempts); {len(recent)} were made "
                        f"since {_when(recent[0].at)}"
                    ),
                    never=False,
                )
        return None


def _shows_visa(attempt: PastAttempt) -> bool:
    """The attempt was on a Visa card: its network says so, or its decline carried a Visa
    response code that was read (decline_codes reads one only for a VISA card or a card whose
    network was not given)."""
    c = attempt.classification
    return attempt.network is _VISA or (c is not None and c.visa_category is not None)


class _Refusal(NamedTuple):
    rule_id: str
    message: Callable[[], str]  # written on demand
    never: bool


# The rules that forbid a card for good, in the order they are checked (RULES' order), with
# what each means in a message. The first one any decline in the card's history triggers is
# reported, with the first decline that triggers it.
_NEVER_LABELS: dict[str, str] = {
    "visa.category1": "Visa category 1",
    "mastercard.mac.21": "Mastercard MAC 21",
    "mastercard.mac.03": "Mastercard MAC 03",
    "card.never_retry": "Hard decline",
}
_NEVER_ORDER = {rule_id: order for order, rule_id in enumerate(_NEVER_LABELS)}


def _never_rule(c: Classification) -> str | None:
    """The first never rule (in _NEVER_LABELS' order) a declined attempt triggers, if any."""
    if c.visa_category == 1:
        return "visa.category1"
    if "mastercard.mac.21" in c.rule_ids:
        return "mastercard.mac.21"
    if "mastercard.mac.03" in c.rule_ids:
        return "mastercard.mac.03"
    if c.never_retry_card:
        return "card.never_retry"
    return None


_TIME_OF = attrgetter("at")
_END_OF_WAIT = itemgetter(0)
# Looking a member up on its enum class costs about ten times reading a module global.
_VISA = CardNetwork.VISA


def _change_points(
    card_history: list[PastAttempt], after: datetime, limits: NetworkLimits
) -> list[datetime]:
    """Every instant after ``after`` at which a rule's verdict on the card may change."""
    points: set[datetime] = set()
    for attempt in card_history:
        points.update((attempt.at, attempt.at + limits.visa_window, attempt.at + DAY))
        c = attempt.classification
        if c is not None and c.earliest_retry_after is not None:
            points.add(attempt.at + c.earliest_retry_after)
    return sorted(p for p in points if p > after)


def _never_message(label: str, attempt: PastAttempt, limits: NetworkLimits) -> str:
    assert attempt.classification is not None
    if label.startswith("Mastercard"):
        window = _duration(limits.mastercard_never_window)
        fee = f"Mastercard charges for every retry within {window}"
    elif label.startswith("Visa"):
        fee = "Visa charges for every reattempt"
    else:
        fee = "the issuer would decline it again"
    return (
        f"{label}: declined on {_when(attempt.at)} ({attempt.classification.reason}); {fee}, "
        "so this card is not attempted again"
    )


def _wait_message(attempt: PastAttempt, wait: timedelta, until: datetime) -> str:
    assert attempt.classification is not None
    macs = [r for r in attempt.classification.rule_ids if r.startswith("mastercard.mac.")]
    source = f"Mastercard merchant advice code {macs[0].rsplit('.', 1)[1]}" if macs else "a decline"
    return (
        f"{source} on {_when(attempt.at)} asks to wait {_duration(wait)}: not before {_when(until)}"
    )


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def _duration(span: timedelta) -> str:
    if span >= 2 * DAY and span % DAY == timedelta(0):
        return f"{span // DAY} days"
    hours, rest = divmod(span, timedelta(hours=1))
    if rest == timedelta(0):
        return f"{hours} hour" if hours == 1 else f"{hours} hours"
    return str(span)


def _require_aware(at: datetime, field: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidArgument(field, "must be a timezone-aware time")


def relevant_history(
    attempts: Sequence[PastAttempt], now: datetime, window: timedelta
) -> list[PastAttempt]:
    """What the rules need to know about some cards at ``now``, oldest first: the attempts
    after ``now - window``, every decline that forbids a card for good however old (HARD: a
    Visa category-1 or Mastercard 03/21 decline is one), and each card's first decline (the
    Visa limit counts the reattempts after it). ``service.retries.card_history`` reads the
    same rows from the database."""
    ordered = sorted((a for a in attempts if a.at <= now), key=lambda a: a.at)
    first_declines: dict[str, PastAttempt] = {}
    for attempt in ordered:
        if not attempt.approved:
            first_declines.setdefault(attempt.card, attempt)
    firsts = {id(a) for a in first_declines.values()}
    since = now - window
    return [
        a
        for a in ordered
        if a.at > since
        or id(a) in firsts
        or (a.classification is not None and a.classification.decline_class is DeclineClass.HARD)
    ]
