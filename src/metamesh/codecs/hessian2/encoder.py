"""Hessian 2.0 encoder: Python values -> bytes (see the package docstring for the value model).

Every choice of form follows Caucho's ``Hessian2Output`` (4.0.38), so for the values Java would
write the bytes are the same: the shortest int/long form, the double shortcuts in Java's order
(0.0, 1.0, byte, short, then "mills" when ``0.001 * int == value``), minute dates when whole
minutes fit 32 bits, strings in 32768-char chunks that never end on a high surrogate, fixed-length
lists, 'H' for untyped maps, and the type table and class definitions written once and then
referred to by number. One deliberate difference: ``-0.0`` is written as a full double, because
Java's shortcut would turn it into ``0.0``.

Like ``Hessian2Output``, an encoder remembers what it wrote: a list, map or object written again
(the same Python object, by identity) becomes a back-reference (0x51), so shared and cyclic
structures survive. The encoder keeps each such object alive so ``id()`` stays unique.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from metamesh.codecs.hessian2.javastr import encode_java, to_java_chars
from metamesh.codecs.hessian2.model import HessianError, JavaObject, Long, TypedList, TypedMap

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_CHUNK = 0x8000
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class Hessian2Encoder:
    """Writes Hessian 2.0 values one after another; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_classes", "_keepalive", "_out", "_refs", "_types")

    def __init__(self) -> None:
        self._out = bytearray()
        self._refs: dict[int, int] = {}  # id(container) -> reference number
        self._keepalive: list[Any] = []
        self._classes: dict[tuple[str, tuple[str, ...]], int] = {}
        self._types: dict[str, int] = {}

    def getvalue(self) -> bytes:
        """All bytes written so far."""
        return bytes(self._out)

    # ---- dispatch ---------------------------------------------------------------------------

    def write(self, value: Any) -> None:
        """Write any value of the model (raises :class:`HessianError` for other types)."""
        kind = type(value)
        writer = _WRITERS.get(kind)
        if writer is not None:
            writer(self, value)
        elif value is None:
            self._out.append(0x4E)
        else:
            self._write_other(value)

    def _write_other(self, value: Any) -> None:
        if isinstance(value, bool):
            self._write_bool(value)
        elif isinstance(value, Long):
            self.write_long(value)
        elif isinstance(value, int):
            self._write_number(value)
        elif isinstance(value, str):
            self.write_string(str(value))
        elif isinstance(value, float):
            self.write_double(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            self.write_binary(value)
        elif isinstance(value, datetime):
            self.write_date(value)
        elif isinstance(value, date):
            self.write_date(datetime(value.year, value.month, value.day, tzinfo=UTC))
        elif isinstance(value, TypedList):
            self.write_list(value, value.type)
        elif isinstance(value, list | tuple):
            self.write_list(value)
        elif isinstance(value, TypedMap):
            self.write_map(value, value.type)
        elif isinstance(value, Mapping):
            self.write_map(value)
        elif isinstance(value, JavaObject):
            self.write_object(value)
        else:
            raise HessianError(f"cannot encode a {type(value).__name__} as Hessian 2.0")

    # ---- scalars ----------------------------------------------------------------------------

    def write_null(self) -> None:
        """Write null."""
        self._out.append(0x4E)

    def _write_bool(self, value: bool) -> None:
        self._out.append(0x54 if value else 0x46)

    def _write_number(self, value: int) -> None:
        if _INT32_MIN <= value <= _INT32_MAX:
            self.write_int(value)
        else:
            self.write_long(value)

    def write_int(self, i: int) -> None:
        """Write a Java ``int`` in its shortest form."""
        out = self._out
        if -0x10 <= i <= 0x2F:
            out.append(0x90 + i)
        elif -0x800 <= i <= 0x7FF:
            out += bytes((0xC8 + (i >> 8), i & 0xFF))
        elif -0x40000 <= i <= 0x3FFFF:
            out += bytes((0xD4 + (i >> 16), (i >> 8) & 0xFF, i & 0xFF))
        elif _INT32_MIN <= i <= _INT32_MAX:
            out.append(0x49)
            out += _INT32.pack(i)
        else:
            raise HessianError(f"{i} does not fit a Java int")

    def write_long(self, i: int) -> None:
        """Write a Java ``long`` in its shortest form."""
        out = self._out
        if -0x08 <= i <= 0x0F:
            out.append(0xE0 + i)
        elif -0x800 <= i <= 0x7FF:
            out += bytes((0xF8 + (i >> 8), i & 0xFF))
        elif -0x40000 <= i <= 0x3FFFF:
            out += bytes((0x3C + (i >> 16), (i >> 8) & 0xFF, i & 0xFF))
        elif _INT32_MIN <= i <= _INT32_MAX:
            out.append(0x59)
            out += _INT32.pack(i)
        elif _INT64_MIN <= i <= _INT64_MAX:
            out.append(0x4C)
            out += _INT64.pack(i)
        else:
            raise HessianError(f"{i} does not fit a Java long")

    def write_double(self, value: float) -> None:
        """Write a Java ``double``, using the shortcut forms where Java would."""
        out = self._out
        if value == 0.0 and math.copysign(1.0, value) < 0:
            out.append(0x44)
            out += _DOUBLE.pack(value)
            return
        if value.is_integer() and -0x8000 <= value < 0x8000:
            i = int(value)
            if i == 0:
                out.append(0x5B)
            elif i == 1:
                out.append(0x5C)
            elif -0x80 <= i < 0x80:
                out += bytes((0x5D, i & 0xFF))
            else:
                out += bytes((0x5E, (i >> 8) & 0xFF, i & 0xFF))
            return
        scaled = value * 1000.0
        if _INT32_MIN <= scaled <= _INT32_MAX:  # false for NaN
            mills = int(scaled)  # truncates toward zero, like Java's (int) cast
            if 0.001 * mills == value:
                out.append(0x5F)
                out += _INT32.pack(mills)
                return
        out.append(0x44)
        out += _DOUBLE.pack(value)

    def write_date(self, value: datetime) -> None:
        """Write a ``java.util.Date`` (a naive datetime is taken as UTC; sub-ms is dropped)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        millis = (value - _EPOCH) // _ONE_MS
        out = self._out
        if millis % 60_000 == 0 and _INT32_MIN <= millis // 60_000 <= _INT32_MAX:
            out.append(0x4B)
            out += _INT32.pack(millis // 60_000)
        else:
            out.append(0x4A)
            out += _INT64.pack(millis)

    # ---- strings and binaries ---------------------------------------------------------------

    def write_string(self, s: str) -> None:
        """Write a string: length in Java chars, non-BMP characters as surrogate pairs."""
        out = self._out
        if not s.isascii():
            s = to_java_chars(s)
        length = len(s)
        start = 0
        while length - start > _CHUNK:
            size = _CHUNK
            if "\ud800" <= s[start + size - 1] <= "\udbff":
                size -= 1  # a chunk never ends between the two halves of a pair
            out += bytes((0x52, size >> 8, size & 0xFF))
            out += encode_java(s[start : start + size])
            start += size
        size = length - start
        if size <= 0x1F:
            out.append(size)
        elif size <= 0x3FF:
            out += bytes((0x30 + (size >> 8), size & 0xFF))
        else:
            out += bytes((0x53, size >> 8, size & 0xFF))
        out += encode_java(s[start:] if start else s)

    def write_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Write a ``byte[]``, in 32768-byte chunks when longer."""
        out = self._out
        view = memoryview(data).cast("B")
        start = 0
        while len(view) - start > _CHUNK:
            out += bytes((0x41, _CHUNK >> 8, 0))
            out += view[start : start + _CHUNK]
            start += _CHUNK
        size = len(view) - start
        if size <= 0x0F:
            out.append(0x20 + size)
        elif size <= 0x3FF:
            out += bytes((0x34 + (size >> 8), size & 0xFF))
        else:
            out += bytes((0x42, size >> 8, size & 0xFF))
        out += view[start:]

    # ---- containers -------------------------------------------------------------------------

    def write_list(self, items: list[Any] | tuple[Any, ...], type_name: str | None = None) -> None:
        """Write a fixed-length list: untyped (an ArrayList) or typed (an array, a list class)."""
        if self._write_ref(items):
            return
        out = self._out
        length = len(items)
        if type_name is None:
            if length <= 7:
                out.append(0x78 + length)
            else:
                out.append(0x58)
                self.write_int(length)
        elif length <= 7:
            out.append(0x70 + length)
            self._write_type(type_name)
        else:
            out.append(0x56)
            self._write_type(type_name)
            self.write_int(length)
        write = self.write
        for item in items:
            write(item)

    def write_map(self, d: Mapping[Any, Any], type_name: str | None = None) -> None:
        """Write a map: 'H' (a HashMap) without a type, 'M' with one."""
        if self._write_ref(d):
            return
        out = self._out
        if type_name is None:
            out.append(0x48)
        else:
            out.append(0x4D)
            self._write_type(type_name)
        write = self.write
        for key, value in d.items():
            write(key)
            write(value)
        out.append(0x5A)

    def write_object(self, obj: JavaObject) -> None:
        """Write an object, defining its class ('C') the first time that class is seen."""
        if self._write_ref(obj):
            return
        out = self._out
        fields = tuple(obj.fields)
        key = (obj.class_name, fields)
        index = self._classes.get(key)
        if index is None:
            index = self._classes[key] = len(self._classes)
            out.append(0x43)
            self.write_string(obj.class_name)
            self.write_int(len(fields))
            for name in fields:
                self.write_string(name)
        if index <= 0x0F:
            out.append(0x60 + index)
        else:
            out.append(0x4F)
            self.write_int(index)
        write = self.write
        for value in obj.fields.values():
            write(value)

    def _write_ref(self, container: Any) -> bool:
        """Write a back-reference if ``container`` was written before; else number it."""
        number = self._refs.get(id(container))
        if number is not None:
            self._out.append(0x51)
            self.write_int(number)
            return True
        self._refs[id(container)] = len(self._keepalive)
        self._keepalive.append(container)
        return False

    def _write_type(self, type_name: str) -> None:
        number = self._types.get(type_name)
        if number is None:
            self._types[type_name] = len(self._types)
            self.write_string(type_name)
        else:
            self.write_int(number)


_WRITERS: dict[type, Any] = {
    str: Hessian2Encoder.write_string,
    int: Hessian2Encoder._write_number,
    bool: Hessian2Encoder._write_bool,
    Long: Hessian2Encoder.write_long,
    float: Hessian2Encoder.write_double,
    bytes: Hessian2Encoder.write_binary,
    bytearray: Hessian2Encoder.write_binary,
    datetime: Hessian2Encoder.write_date,
    list: Hessian2Encoder.write_list,
    tuple: Hessian2Encoder.write_list,
    dict: Hessian2Encoder.write_map,
    TypedList: lambda self, value: self.write_list(value, value.type),
    TypedMap: lambda self, value: self.write_map(value, value.type),
    JavaObject: Hessian2Encoder.write_object,
}
