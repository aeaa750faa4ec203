"""Time-ordered ids (repository/ids.py): valid version-7 UUIDs whose order follows time."""

from __future__ import annotations

import time
import uuid

from repository.ids import uuid7


def test_a_uuid7_is_a_version_7_rfc_uuid_carrying_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert before <= value.int >> 80 <= after
    assert uuid.UUID(str(value)) == value  # survives text, as ids travel in protos


def test_ids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    first = uuid7()
    time.sleep(0.002)
    second = uuid7()
    assert first < second
    assert str(first) < str(second)  # as text too (what an index on text would order)


def test_ids_within_a_millisecond_are_distinct() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 for i in ids)
