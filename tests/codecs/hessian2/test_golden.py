"""Golden vectors written by Caucho Java (shared/testdata/hessian2): decode, skip, re-encode."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metamesh.codecs.hessian2 import (
    Hessian2Decoder,
    JavaObject,
    Long,
    TypedList,
    TypedMap,
    dumps,
    loads,
)
from tests.codecs.hessian2.javaview import same_types

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ADDRESS = JavaObject("com.example.Address", {"city": "Paris", "zip": 75001})

EXPECTED: dict[str, Any] = {
    "int_0": 0,
    "int_neg16": -16,
    "int_47": 47,
    "int_2047": 2047,
    "int_262143": 262143,
    "int_max": 2147483647,
    "int_min": -2147483648,
    "long_0": Long(0),
    "long_15": Long(15),
    "long_2047": Long(2047),
    "long_262143": Long(262143),
    "long_i32": Long(2147483647),
    "long_max": Long(9223372036854775807),
    "long_min": Long(-9223372036854775808),
    "double_0": 0.0,
    "double_1": 1.0,
    "double_127": 127.0,
    "double_m32768": -32768.0,
    "double_12_25": 12.25,
    "double_mill": 0.001,
    "double_pi": 3.141592653589793,
    "true": True,
    "null": None,
    "str_empty": "",
    "str_hello": "hello",
    "str_utf8": "héllo wörld ✓",
    "str_emoji": "a\U0001f600b",
    "str_40": "x" * 40,
    "str_1100": "y" * 1100,
    "str_70000": "z" * 70000,
    "bytes_10": bytes(10),
    "bytes_5000": bytes(5000),
    "date_ms": EPOCH + timedelta(milliseconds=1700000000123),
    "date_min": EPOCH + timedelta(milliseconds=1700000040000),
    "list_mixed": [1, "a", None, 2.5, True],
    "int_array": TypedList("[int", [1, 2, 3]),
    "string_array": TypedList("[string", ["a", "b"]),
    "map_str": {"a": 1, "b": TypedList("java.util.Arrays$ArrayList", [1, 2])},
    "map_int_keys": {1: "x", 2: "y"},
    "treemap": TypedMap("java.util.TreeMap", {"k": 1}),
    "pojo_user": JavaObject(
        "com.example.User",
        {
            "id": Long(42),
            "name": "alice",
            "age": 30,
            "tags": ["t1", "t2"],
            "attrs": {"score": 7},
            "addr": ADDRESS,
        },
    ),
    "list_same_pojo_twice": [ADDRESS, ADDRESS],
    "enum": JavaObject("com.example.Color", {"name": "GREEN"}),
    "short": JavaObject("com.caucho.hessian.io.ShortHandle", {"_value": 7}),
    "float": JavaObject("com.caucho.hessian.io.FloatHandle", {"_value": 1.5}),
    # Caucho writes BigDecimal through its fields and leaves intVal null (see the README)
    "bigdecimal": JavaObject("java.math.BigDecimal", {"scale": 3, "intVal": None}),
}


def test_every_golden_file_has_an_expected_value(golden_dir: Path) -> None:
    assert {p.stem for p in golden_dir.glob("*.bin")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_decodes(golden_dir: Path, name: str) -> None:
    value = loads((golden_dir / f"{name}.bin").read_bytes())
    assert same_types(value, EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_skip_ends_where_read_ends(golden_dir: Path, name: str) -> None:
    data = (golden_dir / f"{name}.bin").read_bytes()
    decoder = Hessian2Decoder(data)
    decoder.skip()
    assert decoder.offset == len(data)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_reencodes_to_the_same_bytes(golden_dir: Path, name: str) -> None:
    # the encoder makes Java's choices, so every golden vector comes back byte for byte
    data = (golden_dir / f"{name}.bin").read_bytes()
    assert dumps(loads(data)) == data


def test_back_reference_is_the_same_object(golden_dir: Path) -> None:
    first, second = loads((golden_dir / "list_same_pojo_twice.bin").read_bytes())
    assert first is second


def test_non_bmp_string_is_two_surrogates_on_the_wire(golden_dir: Path) -> None:
    data = (golden_dir / "str_emoji.bin").read_bytes()
    assert data[0] == 4  # 'a', two surrogates, 'b': four Java chars
    assert dumps("a\U0001f600b") == data
