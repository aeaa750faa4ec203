"""Time-ordered ids (repository/ids.py): valid version-7 UUIDs whose order follows time."""

from __future__ import annotations

import json
import os
import random
import time
import uuid

import pytest

from repository.database import json_text
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


def test_seeding_the_random_module_does_not_repeat_ids() -> None:
    """A caller seeding ``random`` (a simulation, a test) must not make two processes, or two
    runs, draw the same ids."""
    random.seed(7)
    first = uuid7()
    random.seed(7)
    second = uuid7()
    assert first.int & ((1 << 74) - 1) != second.int & ((1 << 74) - 1)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id, and leave at once
        os.write(write, uuid7().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.waitpid(pid, 0)
    os.close(read)
    parent = uuid7()
    assert child.int & ((1 << 74) - 1) != parent.int & ((1 << 74) - 1)


def test_an_id_is_interchangeable_with_the_uuid_of_its_text() -> None:
    """Ids are asyncpg's UUID (what it decodes uuid columns to): equal to, hashed as and
    ordered like the ``uuid.UUID`` of the same value, so a dict keyed by ids read back from
    the database finds the ids made here."""
    value = uuid7()
    same = uuid.UUID(str(value))
    assert isinstance(value, uuid.UUID)
    assert value == same
    assert hash(value) == hash(same)
    assert {same: 1}[value] == 1
    later = uuid.UUID(int=value.int + 1)
    assert value < later
    assert not later < value


def test_an_id_in_a_json_value_is_written_as_its_text() -> None:
    """orjson writes a ``uuid.UUID`` but refuses asyncpg's subclass, the type of the ids made
    here: json_text (every json/jsonb parameter) writes both as their text."""
    made, plain = uuid7(), uuid.uuid4()
    assert json.loads(json_text({"made": made, "plain": plain, "n": [made]})) == {
        "made": str(made),
        "plain": str(plain),
        "n": [str(made)],
    }
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        json_text({"what": object()})
