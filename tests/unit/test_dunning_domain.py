"""Dunning campaigns: validation naming the bad field, the choice of campaign by segment,
priority and code, and which steps are due when (a step of day N is due at exactly
first_failed_at + N days)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.dunning import (
    MAX_DAY,
    MAX_STEPS,
    Campaign,
    FinalAction,
    Step,
    StepKind,
    choose_campaign,
    due_steps,
    next_step_at,
)
from service.errors import InvalidArgument

NOTIFY, RETRY = StepKind.NOTIFY, StepKind.RETRY
T0 = datetime(2026, 3, 28, 22, 30, tzinfo=UTC)  # the night Europe moves its clocks
US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def campaign(
    code: str = "default",
    steps: tuple[Step, ...] = (),
    *,
    segment: Mapping[str, str] | None = None,
    priority: int = 0,
    final_action: FinalAction = FinalAction.NONE,
    description: str = "",
) -> Campaign:
    return Campaign(code, steps, final_action, dict(segment or {}), priority, description)


def notify(day: int, template: str = "payment-failed") -> Step:
    return Step(day, NOTIFY, template)


def retry(day: int) -> Step:
    return Step(day, RETRY)


STANDARD = campaign(
    "standard",
    (notify(0, "failed"), retry(3), notify(3, "reminder"), retry(7), notify(14, "last")),
    final_action=FinalAction.CANCEL_SUBSCRIPTION,
)


# ---- validation ----------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, object], str]] = [
    ("unordered days", {"steps": (notify(3), retry(1))}, "campaign.steps[1].day"),
    (
        "unordered after equal days",
        {"steps": (retry(1), notify(5), notify(5), retry(4))},
        "campaign.steps[3].day",
    ),
    (
        "notice without template",
        {"steps": (retry(0), Step(1, NOTIFY))},
        "campaign.steps[1].template",
    ),
    ("template with capitals", {"steps": (notify(1, "Reminder"),)}, "campaign.steps[0].template"),
    ("template with a space", {"steps": (notify(1, "a b"),)}, "campaign.steps[0].template"),
    ("template too long", {"steps": (notify(1, "t" * 65),)}, "campaign.steps[0].template"),
    ("day over 120", {"steps": (retry(0), retry(MAX_DAY + 1))}, "campaign.steps[1].day"),
    ("negative day", {"steps": (retry(-1),)}, "campaign.steps[0].day"),
    ("too many steps", {"steps": tuple(retry(1) for _ in range(MAX_STEPS + 1))}, "campaign.steps"),
    ("upper-case segment key", {"segment": {"Plan": "pro"}}, "campaign.segment"),
    ("segment key with a dash", {"segment": {"plan-name": "pro"}}, "campaign.segment"),
    ("segment key starting with a digit", {"segment": {"1plan": "pro"}}, "campaign.segment"),
    ("segment key too long", {"segment": {"k" * 41: "pro"}}, "campaign.segment"),
    ("empty segment value", {"segment": {"plan": ""}}, "campaign.segment[plan]"),
    ("long segment value", {"segment": {"plan": "v" * 101}}, "campaign.segment[plan]"),
    ("priority over 1000", {"priority": 1001}, "campaign.priority"),
    ("priority under -1000", {"priority": -1001}, "campaign.priority"),
    ("bad code", {"code": "Default"}, "campaign.code"),
    ("empty code", {"code": ""}, "campaign.code"),
    ("long description", {"description": "d" * 501}, "campaign.description"),
]


@pytest.mark.parametrize(
    ("fields", "field_name"), [(f, n) for _, f, n in INVALID], ids=[i[0] for i in INVALID]
)
def test_an_invalid_campaign_names_the_field(fields: dict[str, object], field_name: str) -> None:
    values: dict[str, object] = {
        "code": "default",
        "steps": (),
        "final_action": FinalAction.NONE,
        "segment": {},
        "priority": 0,
        "description": "",
    }
    values.update(fields)
    with pytest.raises(InvalidArgument) as raised:
        Campaign(**values)  # type: ignore[arg-type]
    assert raised.value.field == field_name
    assert raised.value.message.startswith(f"{field_name}: ")


@pytest.mark.parametrize(
    "valid",
    [
        campaign(steps=(retry(0), retry(MAX_DAY))),
        campaign(steps=(notify(2), notify(2, "second"), retry(2))),  # equal days keep their order
        campaign(steps=tuple(retry(d) for d in range(MAX_STEPS))),
        campaign(steps=(retry(1),)),  # a retry needs no template
        campaign(steps=(notify(1, "a"), notify(2, "t" * 64), notify(3, "x.y_z-1"))),
        campaign(segment={"p" * 40: "v" * 100, "country": "DE"}),
        campaign(priority=1000),
        campaign(priority=-1000),
        campaign(description="d" * 500),
    ],
)
def test_a_campaign_at_the_limits_is_valid(valid: Campaign) -> None:
    assert valid.code == "default"


# ---- choosing a campaign -------------------------------------------------------------------

ANYONE = campaign("anyone")
PRO = campaign("pro", segment={"plan": "pro"})
PRO_DE = campaign("pro-de", segment={"plan": "pro", "country": "DE"})
PRO_URGENT = campaign("pro-urgent", segment={"plan": "pro"}, priority=10)
PRO_TWIN = campaign("pro-a-twin", segment={"plan": "pro"}, priority=10)
DE = campaign("de", segment={"country": "DE"}, priority=500)
CAMPAIGNS = [ANYONE, PRO, PRO_DE, PRO_URGENT, PRO_TWIN, DE]


@pytest.mark.parametrize(
    ("campaigns", "attributes", "expected"),
    [
        ([ANYONE, PRO, PRO_DE], {"plan": "pro", "country": "DE"}, "pro-de"),
        ([ANYONE, PRO, PRO_DE], {"plan": "pro", "country": "FR"}, "pro"),
        ([ANYONE, PRO, PRO_DE], {"plan": "basic", "country": "DE"}, "anyone"),
        ([ANYONE, PRO, PRO_DE], {}, "anyone"),
        # more specific beats a higher priority
        ([PRO, DE, PRO_DE], {"plan": "pro", "country": "DE"}, "pro-de"),
        # equally specific: the higher priority
        ([PRO, DE], {"plan": "pro", "country": "DE"}, "de"),
        ([PRO, PRO_URGENT], {"plan": "pro"}, "pro-urgent"),
        # equally specific, same priority: the first code
        ([PRO_URGENT, PRO_TWIN], {"plan": "pro"}, "pro-a-twin"),
        # extra attributes do not matter; a value must match exactly
        ([PRO], {"plan": "pro", "seats": "3"}, "pro"),
        ([PRO, ANYONE], {"plan": "Pro"}, "anyone"),
    ],
)
def test_choose_campaign(
    campaigns: list[Campaign], attributes: dict[str, str], expected: str
) -> None:
    chosen = choose_campaign(campaigns, attributes)
    assert chosen is not None
    assert chosen.code == expected
    assert choose_campaign(list(reversed(campaigns)), attributes) == chosen


@pytest.mark.parametrize(
    ("campaigns", "attributes"),
    [([], {"plan": "pro"}), ([PRO, PRO_DE], {"plan": "basic"}), ([PRO_DE], {"plan": "pro"})],
)
def test_no_matching_campaign_is_none(
    campaigns: list[Campaign], attributes: dict[str, str]
) -> None:
    assert choose_campaign(campaigns, attributes) is None


attribute_values = st.sampled_from(["pro", "basic", "DE", "FR"])


@given(
    order=st.permutations(CAMPAIGNS),
    attributes=st.dictionaries(st.sampled_from(["plan", "country"]), attribute_values),
)
def test_the_choice_does_not_depend_on_the_order(
    order: list[Campaign], attributes: dict[str, str]
) -> None:
    chosen = choose_campaign(order, attributes)
    assert chosen == choose_campaign(CAMPAIGNS, attributes)
    assert chosen is not None  # ANYONE matches everyone
    assert chosen.matches(attributes)
    for other in CAMPAIGNS:
        if other.matches(attributes):
            mine = (len(chosen.segment), chosen.priority)
            theirs = (len(other.segment), other.priority)
            assert mine > theirs or (mine == theirs and chosen.code <= other.code)


# ---- due steps -----------------------------------------------------------------------------


def due_indexes(now: datetime, done: set[int] | None = None) -> list[int]:
    return [i for i, _ in due_steps(STANDARD, T0, now, done or set())]


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (T0 - US, []),
        (T0, [0]),
        (T0 + 3 * DAY - US, [0]),
        (T0 + 3 * DAY, [0, 1, 2]),  # day 3 at exactly first_failed_at + 3 * 24 h
        (T0 + 7 * DAY, [0, 1, 2, 3]),
        (T0 + 14 * DAY - US, [0, 1, 2, 3]),
        (T0 + 14 * DAY, [0, 1, 2, 3, 4]),
        (T0 + 400 * DAY, [0, 1, 2, 3, 4]),
    ],
)
def test_a_step_of_day_n_is_due_at_exactly_n_days(now: datetime, due: list[int]) -> None:
    assert due_indexes(now) == due


def test_days_are_24_hours_even_across_a_clock_change() -> None:
    # T0 is the evening before Europe's spring-forward night: the day is 24 h, not a local day
    assert due_indexes(T0 + timedelta(hours=72) - US) == [0]
    assert due_indexes(T0 + timedelta(hours=72)) == [0, 1, 2]


def test_done_steps_are_not_due_again() -> None:
    assert due_indexes(T0 + 7 * DAY, {0, 2}) == [1, 3]
    assert due_indexes(T0 + 30 * DAY, {0, 1, 2, 3, 4}) == []


def test_due_steps_return_the_steps() -> None:
    assert due_steps(STANDARD, T0, T0 + 3 * DAY, {0}) == [(1, retry(3)), (2, notify(3, "reminder"))]


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        (set(), T0),
        ({0}, T0 + 3 * DAY),
        ({0, 1}, T0 + 3 * DAY),
        ({0, 1, 2}, T0 + 7 * DAY),
        ({0, 1, 2, 3}, T0 + 14 * DAY),
        ({1, 2, 3, 4}, T0),  # a step left behind is still next
        ({0, 1, 2, 3, 4}, None),
    ],
)
def test_next_step_at(done: set[int], expected: datetime | None) -> None:
    assert next_step_at(STANDARD, T0, done) == expected


def test_a_campaign_without_steps_has_nothing_due() -> None:
    empty = campaign()
    assert due_steps(empty, T0, T0 + 200 * DAY, set()) == []
    assert next_step_at(empty, T0, set()) is None


@given(
    days=st.lists(st.integers(0, MAX_DAY), max_size=12).map(sorted),
    offset=st.integers(-86_400, (MAX_DAY + 1) * 86_400),
    done=st.sets(st.integers(0, 11)),
)
def test_next_step_at_agrees_with_due_steps(days: list[int], offset: int, done: set[int]) -> None:
    subject = campaign(steps=tuple(retry(d) for d in days))
    now = T0 + timedelta(seconds=offset)
    due = due_steps(subject, T0, now, done)
    nxt = next_step_at(subject, T0, done)
    pending = [i for i in range(len(days)) if i not in done]
    assert [i for i, _ in due] == [i for i in pending if T0 + days[i] * DAY <= now]
    if not pending:
        assert nxt is None
        return
    assert nxt is not None
    # something is due exactly when the next step's time has come
    assert bool(due) == (nxt <= now)
    assert due_steps(subject, T0, nxt, done)
    assert not due_steps(subject, T0, nxt - US, done)
