"""The refund state machine and the status aggregation table, walked exhaustively."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.refund_states import (
    DETAIL_TRANSITIONS,
    REFUND_TRANSITIONS,
    RESERVING_REFUND_STATUSES,
    TERMINAL_REFUND_STATUSES,
    DetailStatus,
    RefundStatus,
    aggregate_status,
    check_detail_transition,
    check_refund_transition,
    detail_sources_of,
    sources_of,
)
from service.errors import FailedPrecondition, IllegalTransition, ServiceError

R, D = RefundStatus, DetailStatus

REFUND_PAIRS = list(itertools.product(RefundStatus, RefundStatus))
DETAIL_PAIRS = list(itertools.product(DetailStatus, DetailStatus))
ILLEGAL_REFUND = [(c, t) for c, t in REFUND_PAIRS if t not in REFUND_TRANSITIONS[c]]
LEGAL_REFUND = [(c, t) for c, t in REFUND_PAIRS if t in REFUND_TRANSITIONS[c]]
ILLEGAL_DETAIL = [(c, t) for c, t in DETAIL_PAIRS if t not in DETAIL_TRANSITIONS[c]]
LEGAL_DETAIL = [(c, t) for c, t in DETAIL_PAIRS if t in DETAIL_TRANSITIONS[c]]


def test_tables_cover_every_status() -> None:
    assert set(REFUND_TRANSITIONS) == set(RefundStatus)
    assert set(DETAIL_TRANSITIONS) == set(DetailStatus)
    for targets in REFUND_TRANSITIONS.values():
        assert targets <= set(RefundStatus)
    for detail_targets in DETAIL_TRANSITIONS.values():
        assert detail_targets <= set(DetailStatus)
    assert len(ILLEGAL_REFUND) + len(LEGAL_REFUND) == len(RefundStatus) ** 2
    assert ILLEGAL_REFUND
    assert LEGAL_REFUND


@pytest.mark.parametrize(("current", "target"), ILLEGAL_REFUND)
def test_illegal_refund_transition_is_refused(current: RefundStatus, target: RefundStatus) -> None:
    with pytest.raises(IllegalTransition) as exc:
        check_refund_transition(current, target)
    error = exc.value
    assert isinstance(error, FailedPrecondition)
    assert isinstance(error, ServiceError)
    assert current.value in error.message
    assert target.value in error.message
    assert error.message == f"refund is {current.value}; it cannot become {target.value}"
    assert error.context == {"current": current.value, "target": target.value}


@pytest.mark.parametrize(("current", "target"), LEGAL_REFUND)
def test_legal_refund_transition_passes(current: RefundStatus, target: RefundStatus) -> None:
    check_refund_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL_DETAIL)
def test_illegal_detail_transition_is_refused(current: DetailStatus, target: DetailStatus) -> None:
    with pytest.raises(IllegalTransition) as exc:
        check_detail_transition(current, target)
    error = exc.value
    assert isinstance(error, FailedPrecondition)
    assert current.value in error.message
    assert target.value in error.message
    assert error.message.startswith("refund detail is ")
    assert error.context == {"current": current.value, "target": target.value}


@pytest.mark.parametrize(("current", "target"), LEGAL_DETAIL)
def test_legal_detail_transition_passes(current: DetailStatus, target: DetailStatus) -> None:
    check_detail_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (R.PENDING_APPROVAL, R.APPROVED),
        (R.PENDING_APPROVAL, R.REJECTED),
        (R.PENDING_APPROVAL, R.CANCELED),
        (R.APPROVED, R.PROCESSING),
        (R.APPROVED, R.CANCELED),
        (R.PROCESSING, R.SUCCEEDED),
        (R.PROCESSING, R.FAILED),
        (R.PROCESSING, R.REQUIRES_ACTION),
    ],
)
def test_documented_lifecycle_is_allowed(current: RefundStatus, target: RefundStatus) -> None:
    check_refund_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (R.PENDING_APPROVAL, R.PROCESSING),  # no processing without approval
        (R.PENDING_APPROVAL, R.SUCCEEDED),
        (R.APPROVED, R.REJECTED),
        (R.PROCESSING, R.CANCELED),  # no cancel once money may be moving
        (R.PROCESSING, R.REJECTED),
        (R.SUCCEEDED, R.FAILED),
        (R.FAILED, R.PROCESSING),
        (R.APPROVED, R.APPROVED),
    ],
)
def test_documented_lifecycle_refuses(current: RefundStatus, target: RefundStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_refund_transition(current, target)


def test_terminal_refund_statuses() -> None:
    assert {R.SUCCEEDED, R.FAILED, R.REJECTED, R.CANCELED} == TERMINAL_REFUND_STATUSES
    for status in TERMINAL_REFUND_STATUSES:
        assert REFUND_TRANSITIONS[status] == frozenset()
        for target in RefundStatus:
            with pytest.raises(IllegalTransition):
                check_refund_transition(status, target)


@pytest.mark.parametrize("status", [D.SUCCEEDED, D.FAILED, D.CANCELED])
def test_terminal_detail_statuses_have_no_exits(status: DetailStatus) -> None:
    assert DETAIL_TRANSITIONS[status] == frozenset()
    for target in DetailStatus:
        with pytest.raises(IllegalTransition):
            check_detail_transition(status, target)


def test_non_terminal_refund_statuses_have_exits() -> None:
    for status in set(RefundStatus) - TERMINAL_REFUND_STATUSES:
        assert REFUND_TRANSITIONS[status]


def test_reserving_statuses_are_exactly_the_non_terminal_ones() -> None:
    assert set(RefundStatus) - TERMINAL_REFUND_STATUSES == RESERVING_REFUND_STATUSES


def test_every_status_is_reachable_from_pending_approval() -> None:
    seen = {R.PENDING_APPROVAL}
    frontier = [R.PENDING_APPROVAL]
    while frontier:
        for target in REFUND_TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(RefundStatus)


def test_retry_scheduled_detail_goes_back_to_processing() -> None:
    check_detail_transition(D.PROCESSING, D.RETRY_SCHEDULED)
    check_detail_transition(D.RETRY_SCHEDULED, D.PROCESSING)
    with pytest.raises(IllegalTransition):
        check_detail_transition(D.RETRY_SCHEDULED, D.SUCCEEDED)


@pytest.mark.parametrize("target", list(RefundStatus))
def test_sources_of_is_the_inverse_of_the_table(target: RefundStatus) -> None:
    expected = {s for s in RefundStatus if target in REFUND_TRANSITIONS[s]}
    assert sources_of(target) == expected


@pytest.mark.parametrize("target", list(DetailStatus))
def test_detail_sources_of_is_the_inverse_of_the_table(target: DetailStatus) -> None:
    expected = {s for s in DetailStatus if target in DETAIL_TRANSITIONS[s]}
    assert detail_sources_of(target) == expected


def test_sources_of_examples() -> None:
    assert sources_of(R.APPROVED) == {R.PENDING_APPROVAL}
    assert sources_of(R.CANCELED) == {R.PENDING_APPROVAL, R.APPROVED}
    assert sources_of(R.SUCCEEDED) == {R.PROCESSING, R.REQUIRES_ACTION}
    assert sources_of(R.PROCESSING) == {R.APPROVED, R.REQUIRES_ACTION}
    assert sources_of(R.PENDING_APPROVAL) == frozenset()
    assert detail_sources_of(D.PENDING) == frozenset()
    assert detail_sources_of(D.PROCESSING) == {
        D.PENDING,
        D.PROCESSING,
        D.RETRY_SCHEDULED,
        D.REQUIRES_ACTION,
    }


# --- aggregation -----------------------------------------------------------------------------

SINGLE_DETAIL = {
    D.PENDING: R.APPROVED,
    D.PROCESSING: R.PROCESSING,
    D.RETRY_SCHEDULED: R.PROCESSING,
    D.SUCCEEDED: R.SUCCEEDED,
    D.FAILED: R.FAILED,
    D.CANCELED: R.CANCELED,
    D.REQUIRES_ACTION: R.REQUIRES_ACTION,
}


def test_single_detail_table_covers_every_status() -> None:
    assert set(SINGLE_DETAIL) == set(DetailStatus)


@pytest.mark.parametrize(("detail", "expected"), list(SINGLE_DETAIL.items()))
def test_single_detail(detail: DetailStatus, expected: RefundStatus) -> None:
    assert aggregate_status([detail]) == expected
    # Many details all in the same status aggregate the same way.
    assert aggregate_status([detail] * 3) == expected


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ([D.SUCCEEDED, D.FAILED], R.FAILED),
        ([D.SUCCEEDED, D.PROCESSING], R.PROCESSING),
        ([D.SUCCEEDED, D.SUCCEEDED], R.SUCCEEDED),
        ([D.PENDING, D.PENDING], R.APPROVED),
        ([D.PENDING, D.SUCCEEDED], R.PROCESSING),
        ([D.PENDING, D.PROCESSING], R.PROCESSING),
        ([D.REQUIRES_ACTION, D.SUCCEEDED], R.REQUIRES_ACTION),
        ([D.REQUIRES_ACTION, D.PROCESSING], R.REQUIRES_ACTION),
        ([D.FAILED, D.REQUIRES_ACTION], R.FAILED),
        ([D.REQUIRES_ACTION, D.FAILED], R.FAILED),
        ([D.RETRY_SCHEDULED], R.PROCESSING),
        ([D.RETRY_SCHEDULED, D.SUCCEEDED], R.PROCESSING),
        ([D.RETRY_SCHEDULED, D.PENDING], R.PROCESSING),
        ([D.CANCELED, D.CANCELED], R.CANCELED),
        ([D.FAILED, D.PROCESSING, D.SUCCEEDED], R.FAILED),
        ([D.SUCCEEDED, D.SUCCEEDED, D.SUCCEEDED, D.PROCESSING], R.PROCESSING),
    ],
)
def test_aggregation_table(details: list[DetailStatus], expected: RefundStatus) -> None:
    assert aggregate_status(details) == expected


def test_aggregation_accepts_any_iterable() -> None:
    assert aggregate_status(iter([D.SUCCEEDED, D.SUCCEEDED])) == R.SUCCEEDED
    assert aggregate_status(s for s in (D.PENDING,)) == R.APPROVED


def test_aggregation_of_no_details_raises() -> None:
    with pytest.raises(ValueError, match="at least one detail"):
        aggregate_status([])


details_st = st.lists(st.sampled_from(list(DetailStatus)), min_size=1, max_size=8)


@given(details_st, st.randoms(use_true_random=False))
def test_order_of_details_never_matters(details: list[DetailStatus], rnd: random.Random) -> None:
    shuffled = list(details)
    rnd.shuffle(shuffled)
    assert aggregate_status(shuffled) == aggregate_status(details)
    assert aggregate_status(reversed(details)) == aggregate_status(details)


@given(details_st)
def test_aggregation_invariants(details: list[DetailStatus]) -> None:
    result = aggregate_status(details)
    statuses = set(details)
    if D.FAILED in statuses:
        assert result == R.FAILED
    elif D.REQUIRES_ACTION in statuses:
        assert result == R.REQUIRES_ACTION
    assert (result == R.SUCCEEDED) == (statuses == {D.SUCCEEDED})
    assert (result == R.CANCELED) == (statuses == {D.CANCELED})
    assert (result == R.APPROVED) == (statuses == {D.PENDING})
    if result == R.FAILED:
        assert D.FAILED in statuses
    if result == R.REQUIRES_ACTION:
        assert D.REQUIRES_ACTION in statuses
        assert D.FAILED not in statuses
    # Aggregation never yields an approval-stage status other than APPROVED.
    assert result not in (R.PENDING_APPROVAL, R.REJECTED)


@given(details_st)
def test_duplicating_details_never_matters(details: list[DetailStatus]) -> None:
    assert aggregate_status(details + details) == aggregate_status(details)
    assert aggregate_status(sorted(set(details))) == aggregate_status(details)
