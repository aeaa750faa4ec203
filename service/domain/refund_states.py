"""The refund state machine, written as data.

``REFUND_TRANSITIONS`` and ``DETAIL_TRANSITIONS`` are the only allowed moves; the repository
guards each UPDATE with the allowed source states taken from here, and the tests walk every
pair. ``AGGREGATION_RULES`` derives a RefundEvent's status from its RefundEventDetails.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from service.errors import IllegalTransition


class RefundStatus(StrEnum):
    PENDING_APPROVAL = "PENDING_APPROVAL"
    APPROVED = "APPROVED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    REQUIRES_ACTION = "REQUIRES_ACTION"


class DetailStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    REQUIRES_ACTION = "REQUIRES_ACTION"


R, D = RefundStatus, DetailStatus

REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    R.PENDING_APPROVAL: frozenset({R.APPROVED, R.REJECTED, R.CANCELED}),
    R.APPROVED: frozenset({R.PROCESSING, R.CANCELED}),
    R.PROCESSING: frozenset({R.SUCCEEDED, R.FAILED, R.REQUIRES_ACTION}),
    R.REQUIRES_ACTION: frozenset({R.PROCESSING, R.SUCCEEDED, R.FAILED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.REJECTED: frozenset(),
    R.CANCELED: frozenset(),
}

DETAIL_TRANSITIONS: dict[DetailStatus, frozenset[DetailStatus]] = {
    D.PENDING: frozenset({D.PROCESSING, D.CANCELED}),
    # PROCESSING -> PROCESSING: still pending at the gateway, or an attempt replayed.
    D.PROCESSING: frozenset(
        {D.PROCESSING, D.SUCCEEDED, D.FAILED, D.RETRY_SCHEDULED, D.REQUIRES_ACTION}
    ),
    D.RETRY_SCHEDULED: frozenset({D.PROCESSING}),
    D.REQUIRES_ACTION: frozenset({D.PROCESSING, D.SUCCEEDED, D.FAILED}),
    D.SUCCEEDED: frozenset(),
    D.FAILED: frozenset(),
    D.CANCELED: frozenset(),
}

TERMINAL_REFUND_STATUSES = frozenset(s for s, targets in REFUND_TRANSITIONS.items() if not targets)
# Refund statuses that still hold a reservation on the payment's refundable amount.
RESERVING_REFUND_STATUSES = frozenset(
    {R.PENDING_APPROVAL, R.APPROVED, R.PROCESSING, R.REQUIRES_ACTION}
)


def sources_of(target: RefundStatus) -> frozenset[RefundStatus]:
    """Every refund status from which ``target`` may be reached."""
    return frozenset(s for s, targets in REFUND_TRANSITIONS.items() if target in targets)


def detail_sources_of(target: DetailStatus) -> frozenset[DetailStatus]:
    return frozenset(s for s, targets in DETAIL_TRANSITIONS.items() if target in targets)


def check_refund_transition(current: RefundStatus, target: RefundStatus) -> None:
    if target not in REFUND_TRANSITIONS[current]:
        raise IllegalTransition("refund", current.value, target.value)


def check_detail_transition(current: DetailStatus, target: DetailStatus) -> None:
    if target not in DETAIL_TRANSITIONS[current]:
        raise IllegalTransition("refund detail", current.value, target.value)


# (quantifier, detail status, refund status), checked in order; the first that holds wins.
# "any": one detail in that status is enough (a maximum); "all": every detail must be (a
# minimum). A refund whose details are all still PENDING stays APPROVED; anything else that is
# in flight is PROCESSING.
AGGREGATION_RULES: tuple[tuple[str, DetailStatus, RefundStatus], ...] = (
    ("any", D.FAILED, R.FAILED),
    ("any", D.REQUIRES_ACTION, R.REQUIRES_ACTION),
    ("all", D.SUCCEEDED, R.SUCCEEDED),
    ("all", D.CANCELED, R.CANCELED),
    ("all", D.PENDING, R.APPROVED),
)
AGGREGATION_DEFAULT = R.PROCESSING


def aggregate_status(details: Iterable[DetailStatus]) -> RefundStatus:
    """The RefundEvent status implied by its details' statuses."""
    statuses = list(details)
    if not statuses:
        raise ValueError("a refund has at least one detail")
    for quantifier, detail_status, refund_status in AGGREGATION_RULES:
        matches = [s == detail_status for s in statuses]
        if (quantifier == "any" and any(matches)) or (quantifier == "all" and all(matches)):
            return refund_status
    return AGGREGATION_DEFAULT
