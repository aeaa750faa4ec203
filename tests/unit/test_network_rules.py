"""Card-network rules: each rule at its boundary, and properties over random histories: the
time ``earliest_allowed`` gives always passes ``check_attempt``, and an engine that only
attempts at those times never breaks a rule, as an independent whole-history check shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from service.domain.decline_codes import CardNetwork, Classification, Decline, classify
from service.domain.network_rules import (
    DEFAULT_LIMITS,
    RULES,
    RULES_BY_ID,
    NetworkLimits,
    PastAttempt,
    Violation,
    check_attempt,
    earliest_allowed,
)
from service.errors import InvalidArgument

VISA, MC, AMEX, DISCOVER, OTHER = (
    CardNetwork.VISA,
    CardNetwork.MASTERCARD,
    CardNetwork.AMEX,
    CardNetwork.DISCOVER,
    CardNetwork.OTHER,
)
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
DAY_24H = timedelta(hours=24)
CARD = "pm_1"

SOFT_VISA = classify(Decline("insufficient_funds", VISA, "51"))
CAT1 = classify(Decline("generic_decline", VISA, "04"))
MAC03 = classify(Decline("do_not_honor", MC, "", "03"))
MAC21 = classify(Decline("insufficient_funds", MC, "", "21"))
HARD_AMEX = classify(Decline("stolen_card", AMEX))
SOFT_AMEX = classify(Decline("do_not_honor", AMEX))
MAC_WAITS: dict[str, timedelta] = {
    "02": timedelta(hours=72),
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}
NEVER: dict[str, tuple[CardNetwork, Classification]] = {
    "visa.category1": (VISA, CAT1),
    "mastercard.mac.03": (MC, MAC03),
    "mastercard.mac.21": (MC, MAC21),
    "card.never_retry": (AMEX, HARD_AMEX),
}


def declined(
    at: datetime, classification: Classification, card: str = CARD, network: CardNetwork = VISA
) -> PastAttempt:
    return PastAttempt(at, card, network, approved=False, classification=classification)


def approved(at: datetime, card: str = CARD, network: CardNetwork = VISA) -> PastAttempt:
    return PastAttempt(at, card, network, approved=True, classification=None)


def refused(violation: Violation | None, rule_id: str) -> Violation:
    assert violation is not None, f"expected {rule_id}"
    assert violation.rule_id == rule_id, violation
    assert violation.rule_id in RULES_BY_ID
    assert violation.message.strip()
    return violation


# The independent checker ----------------------------------------------------------------------


def violations_in(history: Sequence[PastAttempt], limits: NetworkLimits) -> list[str]:
    """Every rule a whole history breaks, found by scanning it (not by replaying decisions)."""
    found: list[str] = []
    for card in sorted({a.card for a in history}):
        own = sorted((a for a in history if a.card == card), key=lambda a: a.at)
        for index, decline in enumerate(own):
            c = decline.classification
            if decline.approved or c is None:
                continue
            later = own[index + 1 :]
            never = (
                c.visa_category == 1
                or "mastercard.mac.03" in c.rule_ids
                or "mastercard.mac.21" in c.rule_ids
                or c.never_retry_card
            )
            if never and later:
                found.append(f"{card}: attempted at {later[0].at} after a never at {decline.at}")
            if c.earliest_retry_after is not None:
                until = decline.at + c.earliest_retry_after
                found.extend(
                    f"{card}: attempted at {a.at}, before the wait ending {until}"
                    for a in later
                    if a.at < until
                )
        # A Visa card when the attempt is made: its network is VISA, or an earlier attempt's
        # was, or an earlier decline carried a Visa response code that was read as Visa's.
        first = next((i for i, a in enumerate(own) if not a.approved), None)
        reattempts = own[first + 1 :] if first is not None else []
        for index, end in enumerate(own):
            visa = end.network is VISA or any(
                a.network is VISA or (a.classification and a.classification.visa_category)
                for a in own[:index]
            )
            if not visa or first is None or index <= first:
                continue  # not a Visa card yet, or not a reattempt
            count = sum(end.at - limits.visa_window < r.at <= end.at for r in reattempts)
            if count > limits.visa_max_reattempts:
                found.append(f"{card}: {count} Visa reattempts in the window ending {end.at}")
        for end in own:
            count = sum(end.at - DAY_24H < a.at <= end.at for a in own)
            if count > limits.max_attempts_per_day:
                found.append(f"{card}: {count} attempts in the 24 hours ending {end.at}")
    return found


def test_the_checker_finds_each_kind_of_violation() -> None:
    limits = NetworkLimits(visa_max_reattempts=2, max_attempts_per_day=3)
    visa = [declined(T0 + i * HOUR, SOFT_VISA) for i in range(4)]  # 3 reattempts
    assert len(violations_in(visa, limits)) == 2  # 3 reattempts > 2; 4 attempts > 3 a day
    assert violations_in([declined(T0, CAT1), approved(T0 + HOUR)], limits)
    mac = classify(Decline("", MC, "", "27"))
    assert violations_in([declined(T0, mac, network=MC), approved(T0 + HOUR, network=MC)], limits)
    assert not violations_in([declined(T0, mac, network=MC), approved(T0 + 4 * 24 * HOUR)], limits)


# Explicit examples: each rule at its boundary ------------------------------------------------


def test_no_history_allows_any_time() -> None:
    assert check_attempt(CARD, VISA, T0, []) is None
    assert earliest_allowed(CARD, VISA, T0, []) == T0


def visa_series(reattempts: int, start: datetime = T0, step: timedelta = HOUR) -> list[PastAttempt]:
    """A first decline at ``start`` and ``reattempts`` declined reattempts every ``step``."""
    return [declined(start + i * step, SOFT_VISA) for i in range(reattempts + 1)]


def test_visa_allows_15_reattempts_in_30_days() -> None:
    history = visa_series(14, step=DAY_24H)
    assert check_attempt(CARD, VISA, T0 + 15 * DAY_24H, history) is None


def test_visa_refuses_the_16th_reattempt_until_the_oldest_leaves_the_window() -> None:
    history = visa_series(15, step=DAY_24H)  # reattempts on days 1..15
    at = T0 + 16 * DAY_24H
    violation = refused(check_attempt(CARD, VISA, at, history), "visa.reattempt_limit")
    oldest_reattempt = T0 + DAY_24H
    assert violation.retry_at == oldest_reattempt + timedelta(days=30)
    assert "at most 15 reattempts" in violation.message
    assert "30 days" in violation.message
    assert "15 were made since 2026-11-02" in violation.message
    assert earliest_allowed(CARD, VISA, at, history) == violation.retry_at
    refused(check_attempt(CARD, VISA, violation.retry_at - US, history), "visa.reattempt_limit")
    assert check_attempt(CARD, VISA, violation.retry_at, history) is None


def test_the_first_decline_and_earlier_approvals_are_not_reattempts() -> None:
    history = [approved(T0 - i * HOUR) for i in range(1, 4)] + visa_series(14, step=DAY_24H)
    assert check_attempt(CARD, VISA, T0 + 20 * DAY_24H, history) is None


def test_approved_reattempts_count() -> None:
    history = [declined(T0, SOFT_VISA)] + [approved(T0 + i * DAY_24H) for i in range(1, 16)]
    refused(check_attempt(CARD, VISA, T0 + 16 * DAY_24H, history), "visa.reattempt_limit")


def test_the_visa_limit_is_configurable() -> None:
    history = visa_series(15, step=DAY_24H)
    limits = NetworkLimits(visa_max_reattempts=20)
    assert check_attempt(CARD, VISA, T0 + 16 * DAY_24H, history, limits) is None


def test_the_visa_limit_is_for_visa_cards_only() -> None:
    history = [declined(T0 + i * DAY_24H, SOFT_AMEX, network=AMEX) for i in range(16)]
    assert check_attempt(CARD, AMEX, T0 + 16 * DAY_24H, history) is None


def test_a_card_that_was_visa_stays_visa_for_the_limit() -> None:
    history = visa_series(15, step=DAY_24H)
    refused(check_attempt(CARD, OTHER, T0 + 16 * DAY_24H, history), "visa.reattempt_limit")


def test_a_card_of_unknown_network_that_sent_visa_response_codes_is_held_to_the_visa_limit() -> (
    None
):
    # Only Visa sends Visa response codes: a card whose network was not given but whose
    # declines carried them is a Visa card, and its 16th reattempt in 30 days is refused.
    coded = classify(Decline("insufficient_funds", OTHER, "51"))
    history = [declined(T0 + i * DAY_24H, coded, network=OTHER) for i in range(16)]
    violation = refused(
        check_attempt(CARD, OTHER, T0 + 16 * DAY_24H, history), "visa.reattempt_limit"
    )
    assert violation.retry_at == T0 + DAY_24H + timedelta(days=30)
    assert earliest_allowed(CARD, OTHER, T0 + 16 * DAY_24H, history) == violation.retry_at


def test_a_card_of_unknown_network_without_visa_codes_is_not_held_to_the_visa_limit() -> None:
    # A Visa code on a Mastercard is ignored (decline_codes says so in the reason), so it does
    # not make the card a Visa card either.
    plain = classify(Decline("insufficient_funds", OTHER))
    ignored = classify(Decline("insufficient_funds", MC, "51"))
    assert ignored.visa_category is None
    for network, c in ((OTHER, plain), (MC, ignored)):
        history = [declined(T0 + i * DAY_24H, c, network=network) for i in range(16)]
        assert check_attempt(CARD, network, T0 + 16 * DAY_24H, history) is None


@pytest.mark.parametrize("rule_id", sorted(NEVER))
def test_a_never_rule_refuses_for_good(rule_id: str) -> None:
    network, classification = NEVER[rule_id]
    history = [
        approved(T0 - DAY_24H, network=network),
        declined(T0, classification, network=network),
    ]
    for at in (T0, T0 + US, T0 + timedelta(days=30), T0 + timedelta(days=31), T0 + 1000 * DAY_24H):
        violation = refused(check_attempt(CARD, network, at, history), rule_id)
        assert violation.retry_at is None
    assert earliest_allowed(CARD, network, T0, history) is None
    assert earliest_allowed(CARD, network, T0 + 400 * DAY_24H, history) is None
    # ... but not before the decline happened
    assert check_attempt(CARD, network, T0 - US, history) is None


def test_the_mastercard_messages_name_the_code_and_the_window() -> None:
    history = [declined(T0, MAC21, network=MC)]
    violation = refused(check_attempt(CARD, MC, T0 + HOUR, history), "mastercard.mac.21")
    assert "MAC 21" in violation.message
    assert "30 days" in violation.message
    assert "stopped the recurring payment" in violation.message


def test_visa_category_1_wins_over_the_other_rules() -> None:
    history = [*visa_series(15, step=HOUR), declined(T0 + 16 * HOUR, CAT1)]
    refused(check_attempt(CARD, VISA, T0 + 17 * HOUR, history), "visa.category1")


@pytest.mark.parametrize(("mac", "wait"), sorted(MAC_WAITS.items()))
def test_a_mastercard_wait_holds_until_it_ends(mac: str, wait: timedelta) -> None:
    history = [declined(T0, classify(Decline("insufficient_funds", MC, "", mac)), network=MC)]
    for at in (T0, T0 + wait - US):
        violation = refused(check_attempt(CARD, MC, at, history), "mastercard.mac.wait")
        assert violation.retry_at == T0 + wait
        assert f"code {mac}" in violation.message
    assert check_attempt(CARD, MC, T0 + wait, history) is None
    assert earliest_allowed(CARD, MC, T0, history) == T0 + wait


def test_every_wait_holds_and_the_latest_end_is_reported() -> None:
    long = classify(Decline("", MC, "", "30"))
    short = classify(Decline("", MC, "", "24"))
    history = [declined(T0, long, network=MC), declined(T0 + HOUR, short, network=MC)]
    violation = refused(check_attempt(CARD, MC, T0 + 3 * HOUR, history), "mastercard.mac.wait")
    assert violation.retry_at == T0 + timedelta(days=10)


def test_the_daily_limit_refuses_the_21st_attempt_in_24_hours() -> None:
    history = [approved(T0 + i * HOUR, network=AMEX) for i in range(20)]
    at = T0 + 20 * HOUR
    violation = refused(check_attempt(CARD, AMEX, at, history), "card.daily_limit")
    assert violation.retry_at == T0 + DAY_24H
    assert "at most 20 attempts" in violation.message
    assert "24 hours" in violation.message
    refused(check_attempt(CARD, AMEX, T0 + DAY_24H - US, history), "card.daily_limit")
    assert check_attempt(CARD, AMEX, T0 + DAY_24H, history) is None
    assert check_attempt(CARD, AMEX, at, history[1:]) is None


def test_other_cards_do_not_count() -> None:
    others = [approved(T0 + i * HOUR, card="pm_2", network=AMEX) for i in range(20)]
    others.append(declined(T0, CAT1, card="pm_3"))
    assert check_attempt(CARD, AMEX, T0 + 20 * HOUR, others) is None
    refused(check_attempt("pm_2", AMEX, T0 + 20 * HOUR, others), "card.daily_limit")


def test_attempts_after_the_time_asked_about_do_not_count() -> None:
    history = [declined(T0 + HOUR, CAT1)]
    assert check_attempt(CARD, VISA, T0, history) is None
    assert earliest_allowed(CARD, VISA, T0, history) == T0


def test_retry_at_satisfies_every_rule_not_only_the_first_one_broken() -> None:
    # A wait ending in 1 hour, but the 24-hour limit is also reached: both must be over.
    wait = classify(Decline("", OTHER, "", "24"))
    history = [approved(T0 + i * timedelta(minutes=10), network=OTHER) for i in range(19)]
    history.append(declined(T0 + 3 * HOUR + 10 * timedelta(minutes=10), wait, network=OTHER))
    at = history[-1].at + timedelta(minutes=5)
    violation = refused(check_attempt(CARD, OTHER, at, history), "mastercard.mac.wait")
    assert violation.retry_at == T0 + DAY_24H
    assert check_attempt(CARD, OTHER, violation.retry_at, history) is None


def test_times_in_other_time_zones_compare_as_instants() -> None:
    tokyo = timezone(timedelta(hours=9))
    history = [declined(T0.astimezone(tokyo), classify(Decline("", MC, "", "24")), network=MC)]
    assert earliest_allowed(CARD, MC, T0, history) == T0 + HOUR


# Rules as data, and bad input ----------------------------------------------------------------


def test_the_rule_table() -> None:
    ids = [rule.rule_id for rule in RULES]
    assert len(ids) == len(set(ids))
    assert set(ids) == {
        "visa.category1",
        "visa.reattempt_limit",
        "mastercard.mac.03",
        "mastercard.mac.21",
        "mastercard.mac.wait",
        "card.never_retry",
        "card.daily_limit",
    }
    for rule in RULES:
        assert rule.description.strip()
        assert rule.source.strip()


def test_default_limits() -> None:
    assert NetworkLimits() == DEFAULT_LIMITS
    assert (
        DEFAULT_LIMITS.visa_max_reattempts,
        DEFAULT_LIMITS.visa_window,
        DEFAULT_LIMITS.mastercard_never_window,
        DEFAULT_LIMITS.max_attempts_per_day,
    ) == (15, timedelta(days=30), timedelta(days=30), 20)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"visa_max_reattempts": 0}, "network_limits.visa_max_reattempts"),
        ({"visa_max_reattempts": True}, "network_limits.visa_max_reattempts"),
        ({"max_attempts_per_day": -1}, "network_limits.max_attempts_per_day"),
        ({"visa_window": timedelta(0)}, "network_limits.visa_window"),
        ({"mastercard_never_window": -HOUR}, "network_limits.mastercard_never_window"),
    ],
)
def test_limits_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        NetworkLimits(**kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field


def test_times_must_be_aware() -> None:
    naive = datetime(2026, 11, 1, 9, 0)
    with pytest.raises(InvalidArgument) as exc:
        check_attempt(CARD, VISA, naive, [])
    assert exc.value.field == "at"
    with pytest.raises(InvalidArgument) as exc:
        earliest_allowed(CARD, VISA, naive, [])
    assert exc.value.field == "after"
    with pytest.raises(InvalidArgument) as exc:
        approved(naive)
    assert exc.value.field == "attempt.at"


def test_an_approval_has_no_classification() -> None:
    with pytest.raises(InvalidArgument) as exc:
        PastAttempt(T0, CARD, VISA, approved=True, classification=SOFT_VISA)
    assert exc.value.field == "attempt.classification"


# Properties -----------------------------------------------------------------------------------

POOLS: dict[CardNetwork, list[Classification]] = {
    VISA: [
        classify(Decline(code, VISA, visa))
        for code in ("insufficient_funds", "do_not_honor", "", "expired_card", "stolen_card")
        for visa in ("", "51", "05", "N7", "04", "R1", "14")
    ],
    MC: [
        classify(Decline(code, MC, "", mac))
        for code in ("insufficient_funds", "", "lost_card")
        for mac in ("", "01", "02", "03", "21", "24", "25", "26", "27", "28", "29", "30", "05")
    ],
    AMEX: [classify(Decline(code, AMEX)) for code in ("do_not_honor", "stolen_card", "")],
    DISCOVER: [classify(Decline(code, DISCOVER)) for code in ("try_again_later", "fraudulent")],
    OTHER: [
        classify(Decline(code, OTHER, visa, mac))
        for code in ("generic_decline", "")
        for visa, mac in (("", ""), ("51", "24"), ("91", ""), ("", "27"), ("43", ""))
    ],
}
SOFT_POOLS = {
    network: [c for c in pool if not c.never_retry_card] for network, pool in POOLS.items()
}
CARDS = ("pm_a", "pm_b", "pm_c")

limits_strategy = st.just(DEFAULT_LIMITS) | st.builds(
    NetworkLimits,
    visa_max_reattempts=st.integers(1, 16),
    visa_window=st.sampled_from([HOUR, DAY_24H, timedelta(days=3), timedelta(days=30)]),
    mastercard_never_window=st.just(timedelta(days=30)),
    max_attempts_per_day=st.integers(1, 21),
)
card_networks = st.lists(st.sampled_from(list(CardNetwork)), min_size=1, max_size=len(CARDS)).map(
    lambda networks: dict(zip(CARDS, networks, strict=False))
)


def outcomes(network: CardNetwork) -> st.SearchStrategy[Classification | None]:
    """None for an approval; mostly retryable declines (a never only one time in ten or so),
    so the limits are reached."""
    return st.integers(0, 9).flatmap(
        lambda n: (
            st.sampled_from(SOFT_POOLS[network])
            if n < 7
            else (st.none() if n < 9 else st.sampled_from(POOLS[network]))
        )
    )


seconds = st.one_of(
    st.just(0),
    st.integers(0, 3600),
    st.integers(0, 3 * 86400),
    st.integers(0, 20 * 86400),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, CardNetwork], list[PastAttempt]]:
    """Attempts on 1-3 cards over 60 days, clustered so windows fill up, rules kept or not,
    handed over in any order."""
    networks = draw(card_networks)
    history: list[PastAttempt] = []
    offset = draw(st.integers(0, 30 * 86400))
    gaps = st.one_of(
        st.just(0), st.integers(0, 3600), st.integers(0, 6 * 3600), st.integers(0, 3 * 86400)
    )
    for _ in range(draw(st.integers(0, 40) | st.integers(15, 40))):
        card = draw(st.sampled_from(sorted(networks)))
        offset = min(offset + draw(gaps), 60 * 86400)
        outcome = draw(outcomes(networks[card]))
        at = T0 + timedelta(seconds=offset)
        history.append(PastAttempt(at, card, networks[card], outcome is None, outcome))
    return networks, draw(st.permutations(history))


@settings(deadline=None, max_examples=150)
@given(drawn=histories(), limits=limits_strategy, data=st.data())
def test_earliest_allowed_passes_check_attempt(
    drawn: tuple[dict[str, CardNetwork], list[PastAttempt]],
    limits: NetworkLimits,
    data: st.DataObject,
) -> None:
    networks, history = drawn
    card = data.draw(st.sampled_from([*sorted(networks), "pm_without_history"]), label="card")
    network = networks.get(card, OTHER)
    # anywhere in the 70 days, or just after one of the card's last attempts (rules bite there)
    own = sorted(a.at for a in history if a.card == card)[-3:]
    anywhere = st.integers(0, 70 * 86400).map(lambda s: T0 + timedelta(seconds=s))
    near = (
        st.tuples(st.sampled_from(own), st.integers(0, 7200) | st.integers(0, 2 * 86400)).map(
            lambda pair: pair[0] + timedelta(seconds=pair[1])
        )
        if own
        else anywhere
    )
    after = data.draw(anywhere | near | near, label="after")
    at = earliest_allowed(card, network, after, history, limits)
    first = check_attempt(card, network, after, history, limits)
    event(first.rule_id if first else "allowed")
    if at is None:
        assert first is not None
        assert first.retry_at is None
        late = check_attempt(card, network, after + 400 * DAY_24H, history, limits)
        assert late is not None
        assert late.retry_at is None
        return
    assert at >= after
    assert check_attempt(card, network, at, history, limits) is None
    if at == after:
        assert first is None
    else:
        assert first is not None
        assert first.rule_id in RULES_BY_ID
        assert first.retry_at == at
        # the first such instant: just before it, the attempt is still refused
        assert check_attempt(card, network, at - US, history, limits) is not None


@settings(deadline=None, max_examples=150)
@given(data=st.data(), limits=limits_strategy, networks=card_networks)
def test_an_engine_that_waits_for_earliest_allowed_breaks_no_rule(
    data: st.DataObject, limits: NetworkLimits, networks: dict[str, CardNetwork]
) -> None:
    cards = sorted(networks)
    history: list[PastAttempt] = []
    now = T0
    for _ in range(data.draw(st.integers(0, 45), label="steps")):
        card = data.draw(st.sampled_from(cards), label="card")
        after = now + timedelta(seconds=data.draw(seconds, label="gap"))
        at = earliest_allowed(card, networks[card], after, history, limits)
        refusal = check_attempt(card, networks[card], after, history, limits)
        event(refusal.rule_id if refusal else "allowed at once")
        if at is None:
            continue
        assert at >= after
        assert check_attempt(card, networks[card], at, history, limits) is None
        outcome = data.draw(outcomes(networks[card]), label="outcome")
        history.append(PastAttempt(at, card, networks[card], outcome is None, outcome))
        now = at
    assert violations_in(history, limits) == []


def engine(
    network: CardNetwork, outcome: Classification | None, steps: int, limits: NetworkLimits
) -> list[PastAttempt]:
    """An engine that tries one card as often as the rules allow."""
    history: list[PastAttempt] = []
    for _ in range(steps):
        after = history[-1].at if history else T0
        at = earliest_allowed(CARD, network, after, history, limits)
        if at is None:
            break
        history.append(PastAttempt(at, CARD, network, outcome is None, outcome))
    return history


def test_the_greedy_engine_reaches_the_visa_limit_and_waits_it_out() -> None:
    history = engine(VISA, SOFT_VISA, 40, DEFAULT_LIMITS)
    assert violations_in(history, DEFAULT_LIMITS) == []
    assert [a.at for a in history[:16]] == [T0] * 16  # the first decline and 15 reattempts
    assert history[16].at == T0 + timedelta(days=30)
    assert len(history) == 40


def test_the_greedy_engine_reaches_the_daily_limit() -> None:
    history = engine(AMEX, SOFT_AMEX, 45, DEFAULT_LIMITS)
    assert violations_in(history, DEFAULT_LIMITS) == []
    assert [a.at for a in history] == [T0] * 20 + [T0 + DAY_24H] * 20 + [T0 + 2 * DAY_24H] * 5


def test_the_greedy_engine_stops_after_a_never() -> None:
    assert len(engine(VISA, CAT1, 10, DEFAULT_LIMITS)) == 1
    assert len(engine(MC, MAC03, 10, DEFAULT_LIMITS)) == 1


@settings(deadline=None, max_examples=60)
@given(
    count=st.integers(1, 18),
    gaps=st.lists(st.integers(1, 29 * 86400), min_size=18, max_size=18),
    lateness=st.integers(0, 86400),
)
def test_the_visa_limit_boundary(count: int, gaps: list[int], lateness: int) -> None:
    # the first decline, then `count` reattempts inside one 30-day window
    offsets = sorted(gaps[:count])
    history = [declined(T0, SOFT_VISA)] + [
        declined(T0 + timedelta(seconds=s), SOFT_VISA) for s in offsets
    ]
    oldest = T0 + timedelta(seconds=offsets[0])
    at = min(T0 + timedelta(seconds=offsets[-1] + lateness), oldest + timedelta(days=30) - US)
    limits = NetworkLimits(visa_max_reattempts=count)
    if sum(at - DAY_24H < a.at <= at for a in history) >= limits.max_attempts_per_day:
        return  # the daily limit would answer first
    violation = refused(check_attempt(CARD, VISA, at, history, limits), "visa.reattempt_limit")
    assert violation.retry_at is not None
    assert violation.retry_at >= oldest + timedelta(days=30)
    assert (
        check_attempt(CARD, VISA, at, history, NetworkLimits(visa_max_reattempts=count + 1)) is None
    )


@settings(deadline=None, max_examples=40)
@given(count=st.integers(1, 25), spread=st.integers(0, 86399), lateness=st.integers(0, 86399))
def test_the_daily_limit_boundary(count: int, spread: int, lateness: int) -> None:
    history = [
        approved(T0 + timedelta(seconds=spread * i // count), network=DISCOVER)
        for i in range(count)
    ]
    at = T0 + timedelta(seconds=max(spread, lateness))
    limits = NetworkLimits(max_attempts_per_day=count)
    violation = refused(check_attempt(CARD, DISCOVER, at, history, limits), "card.daily_limit")
    assert violation.retry_at == T0 + DAY_24H
    assert check_attempt(CARD, DISCOVER, at, history[1:], limits) is None


@settings(deadline=None, max_examples=40)
@given(mac=st.sampled_from(sorted(MAC_WAITS)), fraction=st.floats(0, 1, exclude_max=True))
def test_the_mastercard_wait_boundary(mac: str, fraction: float) -> None:
    wait = MAC_WAITS[mac]
    history = [declined(T0, classify(Decline("do_not_honor", MC, "", mac)), network=MC)]
    at = min(T0 + wait * fraction, T0 + wait - US)
    violation = refused(check_attempt(CARD, MC, at, history), "mastercard.mac.wait")
    assert violation.retry_at == T0 + wait
    assert check_attempt(CARD, MC, T0 + wait, history) is None


@settings(deadline=None, max_examples=40)
@given(rule_id=st.sampled_from(sorted(NEVER)), later=st.integers(0, 1000 * 86400))
def test_the_never_boundary(rule_id: str, later: int) -> None:
    network, classification = NEVER[rule_id]
    history = [declined(T0, classification, network=network)]
    at = T0 + timedelta(seconds=later)
    violation = refused(check_attempt(CARD, network, at, history), rule_id)
    assert violation.retry_at is None
    assert check_attempt(CARD, network, T0 - US, history) is None
