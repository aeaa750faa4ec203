"""convert.set_struct fills a protobuf Struct faster than Struct.update for the values decision
data hold (every retry.scheduled event carries one): it must give exactly what Struct.update
gives, for any JSON-like value, nested or not, and into a Struct that holds values already."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from service.convert import set_struct

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
DATA = st.dictionaries(st.text(max_size=8), VALUES, max_size=8)


def updated(data: dict[str, Any], before: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(before)
    out.update(data)
    return out


@given(DATA, DATA)
def test_set_struct_gives_what_struct_update_gives(
    data: dict[str, Any], before: dict[str, Any]
) -> None:
    out = struct_pb2.Struct()
    out.update(before)
    set_struct(out, data)
    assert out == updated(data, before)


def test_a_decisions_data_reads_back_as_it_was() -> None:
    data = {
        "decline_class": "SOFT",
        "attempts_made": 2,
        "gap_seconds": 172800,
        "score": 0.1234,
        "switched": False,
        "slot": {"kind": "smart", "hour": 10, "weights": [0.5, 0.25]},
        "none": None,
    }
    out = struct_pb2.Struct()
    set_struct(out, data)
    assert json_format.MessageToDict(out) == data  # numbers come back as floats: 2.0 == 2
