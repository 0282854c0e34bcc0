"""The quick path's MessagePack agrees with msgspec's, both ways, and refuses what it cannot read."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra import minipack
from orchestra.shared import protocol as p

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner, max_size=20),
    max_leaves=60,
)


@given(values)
def test_reads_what_msgspec_writes(value):
    assert minipack.unpack(msgspec.msgpack.encode(value)) == value


@given(values)
def test_msgspec_reads_what_it_writes(value):
    assert msgspec.msgpack.decode(minipack.pack(value)) == value


@pytest.mark.parametrize("n", [0, 31, 32, 255, 256, 65535, 65536])
def test_every_length_header(n):
    for value in ("x" * n, b"x" * n, [1] * n, {str(i): i for i in range(n)}):
        assert minipack.unpack(msgspec.msgpack.encode(value)) == value
        assert msgspec.msgpack.decode(minipack.pack(value)) == value


def test_a_real_reply_decodes_to_the_fields_of_its_view():
    view = p.TaskView(
        id=3, status=p.Status.WAITING, role="tester", agent="claude", priority=10, after=[1, 2],
        title="t", prompt="write tests", argv=[], cwd="/w", submitted_at=1.5,
        waiting=p.Question(request_id="r", kind="question", prompt="which?", options=["a", "b"]),
        cost_usd=0.25,
    )
    decoded = minipack.unpack(msgspec.msgpack.encode(p.Ok(result=[view])))
    assert decoded["reply"] == "ok"
    assert decoded["result"] == [msgspec.to_builtins(view)]


def test_float32_is_read_too():
    assert minipack.unpack(b"\xca\x3f\xc0\x00\x00") == 1.5


@pytest.mark.parametrize(
    "data",
    [b"", b"\xa5abc", b"\x92\x01", b"\x81\x01", b"\xc4\x05ab", b"\xcd\x01", b"\xc1", b"\xd4\x01\x00", b"\x01\x02"],
)
def test_malformed_input_is_a_format_error(data):
    with pytest.raises(minipack.FormatError):
        minipack.unpack(data)


def test_unhashable_map_keys_are_a_format_error():
    with pytest.raises(minipack.FormatError):
        minipack.unpack(b"\x81\x90\x01")


def test_what_it_cannot_encode_is_a_type_error():
    with pytest.raises(TypeError):
        minipack.pack({"at": object()})
    with pytest.raises(OverflowError):
        minipack.pack(2**64)
    assert math.isinf(minipack.unpack(minipack.pack(float("inf"))))
