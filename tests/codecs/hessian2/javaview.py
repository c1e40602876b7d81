"""How Java sees a value of metamesh's Hessian model, for comparing with the real peers.

:func:`same_types` is equality that also tells ``int`` from ``Long`` and ``list`` from
``TypedList``. :class:`JavaCanon` prints a Python value in the canonical text form that
``tests/peers/java/HessianOracle.java`` prints for the Java object it decoded, so a test can say
"Java read exactly this" with one string comparison.
"""

from __future__ import annotations

import hashlib
import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from metamesh.codecs.hessian2 import JavaObject, Long, TypedList, TypedMap
from metamesh.codecs.hessian2.javastr import to_java_chars

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ENUMS = {"com.example.Color"}
#: declared fields of the oracle's POJOs: field -> primitive kind (None = a reference type)
POJO_FIELDS: dict[str, dict[str, str | None]] = {
    "com.example.User": {
        "id": "long",
        "name": None,
        "tags": None,
        "attrs": None,
        "addr": None,
        "age": "int",
    },
    "com.example.Address": {"city": None, "zip": "int"},
}
ARRAY_COMPONENTS = {
    "[int": "int",
    "[long": "long",
    "[double": "double",
    "[boolean": "boolean",
    "[string": "java.lang.String",
    "[object": "java.lang.Object",
}


def same_types(a: Any, b: Any) -> bool:
    """Equality that also compares types all the way down (NaN equals NaN, strings as Java)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, str):  # equal as Java strings: a surrogate pair is its character
        return to_java_chars(a) == to_java_chars(b)
    if isinstance(a, dict):
        if getattr(a, "type", None) != getattr(b, "type", None) or a.keys() != b.keys():
            return False
        return all(same_types(a[k], b[k]) for k in a)
    if isinstance(a, list):
        if getattr(a, "type", None) != getattr(b, "type", None) or len(a) != len(b):
            return False
        return all(same_types(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, JavaObject):
        return a.class_name == b.class_name and same_types(a.fields, b.fields)
    return bool(a == b)


def java_string(s: str) -> str:
    chars = to_java_chars(s)
    if len(chars) > 100:
        digest = hashlib.sha256(chars.encode("utf-16-be", "surrogatepass")).hexdigest()
        return f"len={len(chars)}:sha={digest}"
    return "".join(c if " " <= c < "\x7f" and c != "\\" else f"\\u{ord(c):04x}" for c in chars)


class JavaCanon:
    """The oracle's canonical text for a value (containers printed before show as ``^N``)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def canon(self, v: Any, kind: str | None = None) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return f"bool:{str(v).lower()}"
        if isinstance(v, int):
            if kind == "double":
                return self.canon(float(v))
            fits_int = -(1 << 31) <= v < (1 << 31)
            is_long = kind == "long" or (kind != "int" and (isinstance(v, Long) or not fits_int))
            return f"long:{v}" if is_long else f"int:{v}"
        if isinstance(v, float):
            return "double:" + struct.pack(">d", v).hex()
        if isinstance(v, str):
            return "str:" + java_string(v)
        if isinstance(v, bytes | bytearray):
            return f"bytes:{len(v)}:{hashlib.sha256(v).hexdigest()}"
        if isinstance(v, datetime):
            aware = v if v.tzinfo else v.replace(tzinfo=UTC)
            return f"date:{(aware - EPOCH) // timedelta(milliseconds=1)}"
        if isinstance(v, JavaObject) and v.class_name in ENUMS:
            return f"enum:{v.class_name}.{v.fields['name']}"
        if id(v) in self._seen:
            return f"^{self._seen[id(v)]}"
        self._seen[id(v)] = len(self._seen)
        if isinstance(v, TypedList) and v.type.startswith("["):
            component = ARRAY_COMPONENTS.get(v.type, v.type[1:])
            hint = component if component in ("int", "long", "double") else None
            return f"array:{component}[{','.join(self.canon(x, hint) for x in v)}]"
        if isinstance(v, list | tuple):
            name = v.type if isinstance(v, TypedList) else "java.util.ArrayList"
            return f"{name}[{','.join(self.canon(x) for x in v)}]"
        if isinstance(v, dict):
            name = v.type if isinstance(v, TypedMap) else "java.util.HashMap"
            keyed = sorted(((self.canon(k), value) for k, value in v.items()), key=lambda e: e[0])
            return self._fields(name, [(k, self.canon(value)) for k, value in keyed])
        if isinstance(v, JavaObject):
            declared = POJO_FIELDS[v.class_name]
            names = sorted(declared)
            return self._fields(
                v.class_name,
                [(n, self._field(v.fields.get(n), declared[n])) for n in names],
            )
        raise TypeError(f"no Java view for {type(v).__name__}")

    def _field(self, value: Any, kind: str | None) -> str:
        if value is None and kind is not None:
            value = 0  # a primitive field the object did not carry keeps Java's default
        return self.canon(value, kind)

    @staticmethod
    def _fields(name: str, entries: list[tuple[str, str]]) -> str:
        return name + "{" + ",".join(f"{k}={v}" for k, v in entries) + "}"


def java_canon(value: Any) -> str:
    return JavaCanon().canon(value)
