"""Dunning campaigns: customer notices and retries by day since the first failure, and a final
action when a plan runs out of attempts. Frozen, validated values and pure decisions."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from service.domain.retry_schedule import validate_code
from service.errors import InvalidArgument

MAX_STEPS = 50
MAX_DAY = 120
_TEMPLATE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SEGMENT_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")


class StepKind(StrEnum):
    NOTIFY = "NOTIFY"  # publish a notice event naming a template
    RETRY = "RETRY"  # bring the next attempt forward to this day


class FinalAction(StrEnum):
    NONE = "NONE"
    CANCEL_SUBSCRIPTION = "CANCEL_SUBSCRIPTION"
    MARK_UNPAID = "MARK_UNPAID"
    PAUSE_SUBSCRIPTION = "PAUSE_SUBSCRIPTION"


@dataclass(frozen=True, slots=True)
class Step:
    day: int  # whole days since the first failure; 0 runs with the failure itself
    kind: StepKind
    template: str = ""


@dataclass(frozen=True, slots=True)
class Campaign:
    code: str
    steps: tuple[Step, ...]
    final_action: FinalAction
    segment: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        validate_code(self.code, "campaign.code")
        if len(self.steps) > MAX_STEPS:
            raise InvalidArgument("campaign.steps", f"at most {MAX_STEPS} steps")
        previous = -1
        for index, step in enumerate(self.steps):
            name = f"campaign.steps[{index}]"
            if not 0 <= step.day <= MAX_DAY:
                raise InvalidArgument(f"{name}.day", f"must be between 0 and {MAX_DAY}")
            if step.day < previous:
                raise InvalidArgument(f"{name}.day", "steps must be in order of day")
            previous = step.day
            if step.kind is StepKind.NOTIFY and not _TEMPLATE.fullmatch(step.template):
                raise InvalidArgument(
                    f"{name}.template",
                    "a notice needs a template name: lower-case letters, digits, '_', '.', '-'",
                )
        for key, value in self.segment.items():
            if not _SEGMENT_KEY.fullmatch(key):
                raise InvalidArgument("campaign.segment", f"bad key {key!r}")
            if not value or len(value) > 100:
                raise InvalidArgument(f"campaign.segment[{key}]", "must be 1-100 characters")
        if not -1000 <= self.priority <= 1000:
            raise InvalidArgument("campaign.priority", "must be between -1000 and 1000")
        if len(self.description) > 500:
            raise InvalidArgument("campaign.description", "at most 500 characters")

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(k) == v for k, v in self.segment.items())


def choose_campaign(
    campaigns: Sequence[Campaign], attributes: Mapping[str, str]
) -> Campaign | None:
    """The campaign for a customer with these attributes (the plan's metadata, e.g. plan and
    country): the most specific matching segment, then the highest priority, then the code."""
    matching = [c for c in campaigns if c.matches(attributes)]
    if not matching:
        return None
    return min(matching, key=lambda c: (-len(c.segment), -c.priority, c.code))


def due_steps(
    campaign: Campaign, first_failed_at: datetime, now: datetime, done: set[int]
) -> list[tuple[int, Step]]:
    """(index, step) of every step due by ``now`` and not yet run."""
    return [
        (index, step)
        for index, step in enumerate(campaign.steps)
        if index not in done and first_failed_at + timedelta(days=step.day) <= now
    ]


def next_step_at(campaign: Campaign, first_failed_at: datetime, done: set[int]) -> datetime | None:
    """When the next step not yet run is due; None when every step has run."""
    days = [s.day for i, s in enumerate(campaign.steps) if i not in done]
    return first_failed_at + timedelta(days=min(days)) if days else None
