"""Interop with hessian.js 2.11 (tests/peers/node) in both directions.

``hessian_oracle.js write`` encodes values built with js-to-java (java.long, typed arrays, POJOs,
enums, shared objects) for metamesh to decode; ``hessian_oracle.js read`` decodes what metamesh
wrote and prints JSON, compared with :func:`node_view`, a prediction of what hessian.js makes
of each value (numbers without int/long distinction, longs beyond 2^53 as strings, objects as
plain field maps, ``{"$ref": n}`` where the same container comes again).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
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
from tests.codecs.hessian2.interop_cases import PY_WRITES, user
from tests.codecs.hessian2.javaview import same_types

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).parents[2] / "peers" / "node"
ORACLE = NODE_DIR / "hessian_oracle.js"
SAFE_INTEGER = (1 << 53) - 1

NODE_WRITES: dict[str, Any] = {
    "int_small": 7,
    "int_java": -262145,
    "int_max": 2147483647,
    "long_small": Long(5),
    "long_big": Long((1 << 63) - 1),
    "long_min": Long(-(1 << 63)),
    "number_beyond_int32": Long(1 << 40),
    "double": 2.5,
    "double_java": 3.0,
    "double_pi": math.pi,
    "bool": True,
    "null": None,
    "str_utf8": "h\u00e9llo w\u00f6rld \u2713",
    "str_emoji": "a\U0001f600b",
    "str_mixed_70000": "h\u00e9\u2713\U0001f600xyz" * 8750,
    "bytes": b"\x00\x01\x02\xff",
    "bytes_5000": b"\x07" * 5000,
    "date": datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=1700000000123),
    "list": [1, "a", None, 2.5, True],
    "int_array": TypedList("[int", [1, 2, 3]),
    "string_array": TypedList("[java.lang.String", ["a", "b"]),
    "map_str": {"a": 1, "b": [1, 2]},
    "map_int_keys": {1: "x", 2: "y"},
    # hessian.js writes {$class, $} as an object even when the class is a map
    "typed_map": JavaObject("java.util.TreeMap", {"k": 1}),
    "pojo_user": user(),
    "enum": JavaObject("com.example.Color", {"name": "GREEN"}),
    "shared_pojo": [JavaObject("com.example.Address", {"city": "Oslo", "zip": 1})] * 2,
    "shared_map": [{"k": "v"}] * 2,
    "users": [user(), user()],
}


def node_view(value: Any, seen: dict[int, int] | None = None) -> Any:
    """What hessian.js's plain decode of ``value`` prints through the oracle."""
    seen = {} if seen is None else seen
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return str(value) if abs(value) > SAFE_INTEGER else int(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or (value == 0 and math.copysign(1, value) < 0):
            text = (
                "-0"
                if value == 0
                else {"nan": "NaN", "inf": "Infinity"}.get(str(value), "-Infinity")
            )
            return {"$double": text}
        return value
    if isinstance(value, bytes | bytearray):
        return {"$bytes": value.hex()}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {"$date": (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)}
    if id(value) in seen:
        return {"$ref": seen[id(value)]}
    seen[id(value)] = len(seen)
    if isinstance(value, list | tuple):
        return [node_view(item, seen) for item in value]
    entries = value.fields if isinstance(value, JavaObject) else value
    return {str(k): node_view(v, seen) for k, v in entries.items()}


def node_class(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"  # hessian.js's typed decode labels booleans
    if isinstance(value, TypedList | TypedMap):
        return value.type
    if isinstance(value, JavaObject):
        return value.class_name
    return "java.util.HashMap" if isinstance(value, dict) else None


@pytest.fixture(scope="module")
def node() -> str:
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node not installed")
    if not (NODE_DIR / "node_modules" / "hessian.js").is_dir():
        pytest.skip("hessian.js not installed in tests/peers/node (run scripts/setup.sh)")
    return node_bin


@pytest.fixture(scope="module")
def node_written(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("node_written")
    subprocess.run([node, str(ORACLE), "write", str(out)], check=True, timeout=120, cwd=NODE_DIR)
    return {p.stem: p.read_bytes() for p in out.glob("*.bin")}


@pytest.fixture(scope="module")
def node_read(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("py_written_for_node")
    for name, value in PY_WRITES.items():
        (out / f"{name}.bin").write_bytes(dumps(value))
    files = sorted(str(p) for p in out.glob("*.bin"))
    result = subprocess.run(
        [node, str(ORACLE), "read", *files],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {line["name"]: line for line in lines}


def test_node_wrote_every_case(node_written: dict[str, bytes]) -> None:
    assert set(node_written) == set(NODE_WRITES)


@pytest.mark.parametrize("name", sorted(NODE_WRITES))
def test_metamesh_decodes_what_hessian_js_wrote(node_written: dict[str, bytes], name: str) -> None:
    data = node_written[name]
    assert same_types(loads(data), NODE_WRITES[name])
    skipper = Hessian2Decoder(data)
    skipper.skip()
    assert skipper.offset == len(data)


@pytest.mark.parametrize("name", ["shared_pojo", "shared_map"])
def test_hessian_js_references_decode_to_one_object(
    node_written: dict[str, bytes], name: str
) -> None:
    first, second = loads(node_written[name])
    assert first is second


@pytest.mark.parametrize("name", sorted(set(NODE_WRITES) - {"bytes_5000"}))
def test_metamesh_reencodes_hessian_js_bytes_exactly(
    node_written: dict[str, bytes], name: str
) -> None:
    # (hessian.js, like Java, chunks binaries by its buffer size)
    data = node_written[name]
    assert dumps(loads(data)) == data


@pytest.mark.parametrize("name", sorted(PY_WRITES))
def test_hessian_js_reads_what_metamesh_wrote(
    node_read: dict[str, dict[str, Any]], name: str
) -> None:
    line = node_read[name]
    assert "error" not in line, line.get("error")
    assert line["value"] == node_view(PY_WRITES[name])
    assert line["class"] == node_class(PY_WRITES[name])
