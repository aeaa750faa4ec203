"""convert.ts builds Timestamps from integer microseconds instead of Timestamp.FromDatetime (it
is on every event's path): it must give exactly what FromDatetime gives, for any instant, zone
or naive (UTC) value, and for the ISO text JSON aggregates carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from service.convert import ts

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def reference(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)), OFFSETS)
def test_aware_values_match_from_datetime(naive: datetime, zone: timezone) -> None:
    value = naive.replace(tzinfo=zone)
    assert ts(value) == reference(value)
    assert ts(value.isoformat()) == reference(value)


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
def test_naive_values_are_utc_as_in_from_datetime(value: datetime) -> None:
    assert ts(value) == reference(value) == reference(value.replace(tzinfo=UTC))


def test_none_is_none() -> None:
    assert ts(None) is None
