"""Values exchanged with the real Java and Node peers, shared by both interop suites.

``JAVA_WRITES`` is what ``HessianOracle.java write`` produces, as metamesh must decode it.
``PY_WRITES`` is what metamesh encodes for the peers to read back.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from metamesh.codecs.hessian2 import JavaObject, Long, TypedList, TypedMap

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INTS = [0, -16, 47, -17, 48, -2048, 2047, -2049, 2048, -262144, 262143, -262145, 262144]
INTS += [-(1 << 31), (1 << 31) - 1]
LONGS = [0, -8, 15, -9, 16, -2048, 2047, -2049, 2048, -262144, 262143, -262145, 262144]
LONGS += [-(1 << 31), (1 << 31) - 1, -(1 << 31) - 1, 1 << 31, -(1 << 63), (1 << 63) - 1]
DOUBLES = [0.0, 1.0, -1.0, 127.0, -128.0, 128.0, -129.0, 32767.0, -32768.0, 32768.0, 12.25]
DOUBLES += [0.001, -0.5, math.pi, 1e300, -0.0, 40000.0, 2147483.647, math.inf, -math.inf]
DOUBLES += [5e-324]


def filled(n: int) -> bytes:
    return bytes((i * 7) & 0xFF for i in range(n))


def user() -> JavaObject:
    return JavaObject(
        "com.example.User",
        {
            "id": Long(42),
            "name": "alice",
            "age": 30,
            "tags": ["t1", "t2"],
            "attrs": {"score": 7},
            "addr": JavaObject("com.example.Address", {"city": "Paris", "zip": 75001}),
        },
    )


def _java_writes() -> dict[str, Any]:
    cases: dict[str, Any] = {f"int_{i}": v for i, v in enumerate(INTS)}
    cases |= {f"long_{i}": Long(v) for i, v in enumerate(LONGS)}
    # Java's writer turns -0.0 into the 0.0 shortcut
    cases |= {f"double_{i}": 0.0 if v == 0 else v for i, v in enumerate(DOUBLES)}
    address = JavaObject("com.example.Address", {"city": "Paris", "zip": 75001})
    a_map = {"a": 1, "b": [1, 2]}
    tree = TypedMap("java.util.TreeMap", {"j": 2, "k": 1})
    self_list: list[Any] = ["me"]
    self_list.append(self_list)
    cases |= {
        "double_nan": math.nan,
        "true": True,
        "false": False,
        "null": None,
        "str_empty": "",
        "str_31": "a" * 31,
        "str_32": "b" * 32,
        "str_1023": "c" * 1023,
        "str_1024": "d" * 1024,
        "str_utf8": "h\u00e9llo w\u00f6rld \u2713 \u0000 \u07ff \u0800 \uffff",
        "str_emoji": "a\U0001f600b\U0001f389",
        "str_70000": "z" * 70000,
        "str_mixed_70000": "h\u00e9\u2713\U0001f600xyz" * 8750,
        "str_pair_at_chunk_end": "x" * 32767 + "\U0001f600" + "y" * 5,
        "bytes_0": b"",
        "bytes_15": filled(15),
        "bytes_16": filled(16),
        "bytes_1023": filled(1023),
        "bytes_1024": filled(1024),
        "bytes_70000": filled(70000),
        "date_ms": EPOCH + timedelta(milliseconds=1700000000123),
        "date_min": EPOCH + timedelta(milliseconds=1700000040000),
        "date_neg": EPOCH - timedelta(days=365),
        "list_mixed": [1, "a", None, 2.5, True, Long(7)],
        "list_long": list(range(10)),
        "int_array": TypedList("[int", [1, 2, 3]),
        "long_array": TypedList("[long", [Long(1), Long(1 << 40)]),
        "double_array": TypedList("[double", [1.5, -2.0]),
        "string_array": TypedList("[string", ["a", "b"]),
        "object_array": TypedList("[object", [1, "x", None]),
        "two_int_arrays": [TypedList("[int", [1]), TypedList("[int", [2])],
        "map_str": a_map,
        "map_int_keys": {1: "x", 2: "y"},
        "treemap": tree,
        "pojo_user": user(),
        "list_same_pojo_twice": [address, address],
        "shared_maps": [a_map, a_map, tree, tree],
        "self_list": self_list,
        "enum": JavaObject("com.example.Color", {"name": "GREEN"}),
        "enum_list": [
            JavaObject("com.example.Color", {"name": "RED"}),
            JavaObject("com.example.Color", {"name": "GREEN"}),
            JavaObject("com.example.Color", {"name": "RED"}),
        ],
        "two_users": [user(), user()],
    }
    return cases


JAVA_WRITES = _java_writes()
#: containers that Java wrote once and referenced again: (case, index a, index b)
JAVA_SHARED = [("list_same_pojo_twice", 0, 1), ("shared_maps", 0, 1), ("shared_maps", 2, 3)]


def _field_subsets() -> list[JavaObject]:
    """20 objects of 20 different class definitions, so the 'O' + index form is needed."""
    names = ["id", "name", "age", "tags", "attrs", "addr"]
    values = user().fields
    subsets = [[n] for n in names] + [[a, b] for i, a in enumerate(names) for b in names[i + 1 :]]
    return [JavaObject("com.example.User", {n: values[n] for n in s}) for s in subsets[:20]]


def _py_writes() -> dict[str, Any]:
    cases: dict[str, Any] = {k: v for k, v in JAVA_WRITES.items() if k != "double_nan"}
    shared = {"k": "v"}
    cases |= {
        "double_neg_zero": -0.0,  # metamesh keeps the sign (Java's own writer does not)
        "py_int_beyond_int32": 1 << 40,
        "py_tuple": (1, "two", 3.0),
        "py_naive_date": datetime(2024, 2, 29, 12, 0, 0),
        "py_lone_surrogate": "a\ud800b",
        "py_bytearray": bytearray(b"\x00\xff"),
        "py_nested": {"list": [[1, [2, [3]]], {"x": {"y": None}}], "n": Long(-1)},
        "py_shared_dict_in_list": [shared, {"again": shared}],
        "py_many_classes": _field_subsets(),
        "py_linked_list": TypedList("java.util.LinkedList", ["a", "b"]),
        "py_address_array": TypedList(
            "[com.example.Address", [JavaObject("com.example.Address", {"city": "Oslo"})]
        ),
        "py_list_10": list(range(10)),
        "py_unicode_keys": {"\u00e9": 1, "\U0001f600": 2},
    }
    return cases


PY_WRITES = _py_writes()
