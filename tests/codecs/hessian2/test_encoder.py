"""Encoder forms, checked against the bytes Caucho's Hessian2Output writes for the same value."""

from __future__ import annotations

import math
import struct
from datetime import UTC, date, datetime

import pytest

from metamesh.codecs.hessian2 import (
    Hessian2Encoder,
    HessianError,
    JavaObject,
    Long,
    TypedList,
    TypedMap,
    dumps,
    loads,
)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "90"),
        (-16, "80"),
        (47, "bf"),
        (48, "c830"),
        (-2048, "c000"),
        (2047, "cfff"),
        (2048, "d40800"),
        (-262144, "d00000"),
        (262144, "4900040000"),
        (1 << 31, "4c0000000080000000"),  # beyond int32: a plain int becomes a long
        (Long(0), "e0"),
        (Long(-8), "d8"),
        (Long(16), "f810"),
        (Long(262143), "3fffff"),
        (Long(-262145), "59fffbffff"),
        (Long(1 << 40), "4c0000010000000000"),
        (0.0, "5b"),
        (1.0, "5c"),
        (-128.0, "5d80"),
        (128.0, "5e0080"),
        (32768.0, "5f01f40000"),
        (12.25, "5f00002fda"),
        (math.pi, "44400921fb54442d18"),
        (-0.0, "448000000000000000"),
        (True, "54"),
        (False, "46"),
        (None, "4e"),
        ("", "00"),
        ("a\U0001f600", "0361eda0bdedb880"),
        (b"", "20"),
        (b"\x01" * 16, "3410" + "01" * 16),
        (datetime(2023, 11, 14, 22, 14, tzinfo=UTC), "4b01b05516"),
        ([], "78"),
        (list(range(8)), "5898" + "".join(f"{0x90 + i:02x}" for i in range(8))),
        (TypedList("[int", [1]), "71045b696e7491"),
        ({}, "485a"),
        (TypedMap("java.util.TreeMap", {}), "4d116a6176612e7574696c2e547265654d61705a"),
    ],
)
def test_forms_match_java(value: object, wire: str) -> None:
    assert dumps(value).hex() == wire


def test_type_names_and_class_definitions_are_written_once() -> None:
    first, second = TypedList("[int", [1]), TypedList("[int", [2])
    assert dumps([first, second]).hex() == "7a" + "71045b696e7491" + "719092"
    a = JavaObject("P", {"x": 1})
    b = JavaObject("P", {"x": 2})
    assert dumps([a, b]).hex() == "7a" + "43015091017860" + "91" + "6092"


def test_object_index_above_15_uses_o_form() -> None:
    objs = [JavaObject(f"C{i}", {}) for i in range(17)]
    data = dumps(objs)
    assert data.endswith(bytes([0x43, 0x03]) + b"C16" + b"\x90" + b"O\xa0")
    assert loads(data) == objs


def test_same_object_twice_becomes_a_reference() -> None:
    shared = {"a": 1}
    assert dumps([shared, shared]).hex() == "7a" + "480161915a" + "5191"
    cycle: list[object] = []
    cycle.append(cycle)
    decoded = loads(dumps(cycle))
    assert decoded[0] is decoded


def test_strings_never_contain_four_byte_utf8() -> None:
    data = dumps("\U0010ffff" * 3 + "\U0001f600")
    assert not any(0xF0 <= b <= 0xF7 for b in data)
    assert data[0] == 8  # four non-BMP characters are eight Java chars


def test_long_string_chunks_never_split_a_surrogate_pair() -> None:
    text = "x" * 32767 + "\U0001f600" + "y"
    data = dumps(text)
    assert data[:3] == b"R\x7f\xff"  # 32767 chars: the pair moves to the next chunk
    assert loads(data) == text


def test_dates_naive_and_plain_date_are_utc() -> None:
    assert loads(dumps(datetime(2024, 1, 1, 8, 30))) == datetime(2024, 1, 1, 8, 30, tzinfo=UTC)
    assert loads(dumps(date(2024, 1, 1))) == datetime(2024, 1, 1, tzinfo=UTC)
    ms = datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert dumps(ms)[0] == 0x4A
    assert loads(dumps(ms)) == ms.replace(microsecond=123000)


def test_explicit_writers() -> None:
    encoder = Hessian2Encoder()
    encoder.write_string("svc")
    encoder.write_int(7)
    encoder.write_long(7)
    encoder.write_null()
    encoder.write_map({"k": "v"}, "java.util.LinkedHashMap")
    assert loads(encoder.getvalue()[:4]) == "svc"
    decoded = [loads(b) for b in (encoder.getvalue()[4:5], encoder.getvalue()[5:6])]
    assert decoded == [7, Long(7)] and type(decoded[1]) is Long
    assert encoder.getvalue()[6:] == b"N" + dumps(TypedMap("java.util.LinkedHashMap", {"k": "v"}))


@pytest.mark.parametrize(
    ("call", "arg"),
    [("write_int", 1 << 31), ("write_long", 1 << 63), ("write", object()), ("write", {1, 2})],
)
def test_unencodable_values_raise_hessian_error(call: str, arg: object) -> None:
    with pytest.raises(HessianError):
        getattr(Hessian2Encoder(), call)(arg)


def test_nan_and_infinities_use_the_full_double() -> None:
    for value in (math.inf, -math.inf, math.nan):
        data = dumps(value)
        assert data[0] == 0x44
        assert struct.unpack(">d", data[1:])[0] == value or math.isnan(value)
