"""Property tests: round trips of random values, skip() == read() offsets, fuzzed input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamesh.codecs.hessian2 import (
    Hessian2Decoder,
    Hessian2Encoder,
    HessianError,
    JavaObject,
    Long,
    TypedList,
    TypedMap,
    dumps,
    loads,
)
from tests.codecs.hessian2.javaview import same_types

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

java_chars = st.characters(codec=None, exclude_categories=())  # surrogates included
keys = st.one_of(st.text(max_size=8), st.integers(-(1 << 31), (1 << 31) - 1))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.integers(-(1 << 63), (1 << 63) - 1).map(Long),
    st.floats(allow_nan=False),
    st.text(java_chars, max_size=40),
    st.text(max_size=3000).filter(lambda s: len(s) > 1000),
    st.binary(max_size=300),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=10),
        st.dictionaries(keys, children, max_size=6),
        st.builds(TypedList, st.sampled_from(["[int", "[object", "java.util.LinkedList"]),
                  st.lists(children, max_size=10)),
        st.builds(TypedMap, st.sampled_from(["java.util.TreeMap", "x.M"]),
                  st.dictionaries(keys, children, max_size=6)),
        st.builds(JavaObject, st.sampled_from(["a.B", "a.C", "com.example.Address"]),
                  st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=5)),
    )  # fmt: skip


values = st.recursive(scalars, containers, max_leaves=30)


@SETTINGS
@given(values)
def test_round_trip(value: Any) -> None:
    assert same_types(loads(dumps(value)), value)


@SETTINGS
@given(values, values, st.data())
def test_skip_lands_where_read_does_and_refs_to_skipped_values_resolve(
    first: Any, second: Any, data: st.DataObject
) -> None:
    shared = data.draw(containers(scalars))
    encoder = Hessian2Encoder()
    encoder.write([first, shared])
    encoder.write([shared, second])
    wire = encoder.getvalue()

    reader = Hessian2Decoder(wire)
    skipper = Hessian2Decoder(wire)
    read_first = reader.read()
    skipper.skip()
    assert skipper.offset == reader.offset
    read_second = reader.read()
    skip_then_read = skipper.read()
    assert skipper.offset == reader.offset == len(wire)
    assert read_second[0] is read_first[1]
    assert same_types(skip_then_read, read_second)
    assert same_types(skip_then_read, [shared, second])


def _decode_all_ways(data: bytes) -> None:
    for method in ("read", "skip", "read_string_or_none", "read_int"):
        decoder = Hessian2Decoder(data)
        try:
            while not decoder.at_end():
                getattr(decoder, method)()
        except HessianError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_hessian_error(data: bytes) -> None:
    _decode_all_ways(data)


@SETTINGS
@given(values, st.data())
def test_corrupted_encodings_only_raise_hessian_error(value: Any, data: st.DataObject) -> None:
    wire = bytearray(dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    _decode_all_ways(bytes(wire[:cut]))
