"""Hessian 2.0 decoder: bytes -> Python values (see the package docstring for the value model).

Reading is a dispatch on the first byte through a 256-entry table of reader methods, so each
value costs one indexed call plus its own work. Fixed-size reads rely on ``IndexError`` /
``struct.error`` for truncation and every public method turns those into :class:`HessianError`;
variable-size reads (strings, binaries, list lengths) check the remaining length explicitly, so
a forged length can neither allocate memory nor loop without consuming input.

Hessian state lives for the whole decoder, as in Java's ``Hessian2Input``: class definitions
('C'), the type table of typed lists/maps, and the reference table (0x51) of every list, map and
object read so far. A container is entered in the reference table *before* its contents are
read, which is what makes back-references and cycles decode to the very same Python object.

:meth:`Hessian2Decoder.skip` walks past a value without building it, keeping that bookkeeping:
class definitions and types are recorded, and each skipped container takes its reference slot
with a placeholder (the ``int`` offset where it starts). If a later back-reference points at a
placeholder, the container is decoded then, from that offset, in "replay" mode where the slots
and definitions inside it are filled in rather than added again.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from metamesh.codecs.hessian2.javastr import decode_java, utf8_end
from metamesh.codecs.hessian2.model import HessianError, JavaObject, Long, TypedList, TypedMap

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DEPTH = 200
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_INT16 = struct.Struct(">h")
_DOUBLE = struct.Struct(">d")

_END = 0x5A  # 'Z': end of a variable-length list or map
_STRING_CODES = frozenset([*range(0x00, 0x20), *range(0x30, 0x34), 0x52, 0x53])
_INT_CODES = frozenset(
    [*range(0x80, 0xD8), 0x49, *range(0xD8, 0x100), *range(0x38, 0x40), 0x59, 0x4C]
)
_NAMES = {
    0x41: "binary chunk 'A'", 0x42: "binary 'B'", 0x43: "class definition 'C'",
    0x44: "double 'D'", 0x46: "false", 0x48: "map 'H'", 0x49: "int 'I'", 0x4A: "date",
    0x4B: "compact date", 0x4C: "long 'L'", 0x4D: "typed map 'M'", 0x4E: "null",
    0x4F: "object 'O'", 0x51: "reference", 0x52: "string chunk 'R'", 0x53: "string 'S'",
    0x54: "true", 0x55: "list 'U'", 0x56: "list 'V'", 0x57: "list 'W'", 0x58: "list 'X'",
    0x59: "long int32", 0x5A: "end marker 'Z'",
}  # fmt: skip


def describe_code(code: int) -> str:
    """Name the kind of value a first byte starts, for error messages."""
    if code in _NAMES:
        return f"{_NAMES[code]} (0x{code:02x})"
    kinds = (
        (0x20, "string"), (0x30, "binary"), (0x34, "string"), (0x38, "binary"), (0x40, "long"),
        (0x41, "reserved code"), (0x5B, "reserved code"), (0x60, "double"), (0x70, "object"),
        (0x80, "list"), (0xD8, "int"), (0x100, "long"),
    )  # fmt: skip
    return next(f"{name} (0x{code:02x})" for limit, name in kinds if code < limit)


Reader = Callable[["Hessian2Decoder", int], Any]
Skipper = Callable[["Hessian2Decoder", int], None]


class Hessian2Decoder:
    """Reads Hessian 2.0 values one after another from ``data``, starting at ``offset``.

    ``offset`` is public: it always points at the next unread byte. A ``memoryview`` is copied
    to ``bytes`` once; ``bytes`` and ``bytearray`` are read in place.
    """

    __slots__ = ("_classes", "_data", "_depth", "_end", "_refs", "_replay", "_types", "offset")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._data: bytes | bytearray = data.tobytes() if isinstance(data, memoryview) else data
        self._end = len(self._data)
        self.offset = offset
        self._refs: list[Any] = []
        self._classes: list[tuple[str, tuple[str, ...]]] = []
        self._types: list[str] = []
        self._depth = 0
        self._replay = -1  # >= 0 while re-reading a skipped value: the next ref slot to fill

    # ---- public API -------------------------------------------------------------------------

    def at_end(self) -> bool:
        """True when every byte has been consumed."""
        return self.offset >= self._end

    def read(self) -> Any:
        """Decode the next value."""
        start = self.offset
        try:
            return self._read()
        except (IndexError, struct.error):
            raise self._truncated(start) from None
        except RecursionError:
            raise HessianError(f"value at offset {start} is nested too deeply") from None

    def skip(self) -> None:
        """Move past the next value without building it (definitions and refs still count)."""
        start = self.offset
        try:
            self._skip()
        except (IndexError, struct.error):
            raise self._truncated(start) from None
        except RecursionError:
            raise HessianError(f"value at offset {start} is nested too deeply") from None

    def read_string(self) -> str:
        """Decode the next value, which must be a string (null is an error)."""
        value = self.read_string_or_none()
        if value is None:
            raise HessianError(f"expected a string at offset {self.offset - 1}, found null")
        return value

    def read_string_or_none(self) -> str | None:
        """Decode the next value, which must be a string or null."""
        data = self._data
        pos = self.offset
        if pos >= self._end:
            raise HessianError(f"expected a string at offset {pos}, found the end of the data")
        code = data[pos]
        if code < 0x20 or (0x30 <= code < 0x34 and pos + 1 < self._end):  # fast: ASCII
            start = pos + 1 if code < 0x20 else pos + 2
            end = start + (code if code < 0x20 else ((code - 0x30) << 8) + data[start - 1])
            raw = data[start:end]
            if raw.isascii() and end <= self._end:
                self.offset = end
                return raw.decode("ascii")
        if code == 0x4E:
            self.offset = pos + 1
            return None
        if code not in _STRING_CODES:
            raise HessianError(f"expected a string at offset {pos}, found {describe_code(code)}")
        return self.read()  # type: ignore[no-any-return]

    def read_int(self) -> int:
        """Decode the next value, which must be an int or a long (any of their forms)."""
        pos = self.offset
        if pos >= self._end:
            raise HessianError(f"expected an int at offset {pos}, found the end of the data")
        code = self._data[pos]
        if code not in _INT_CODES:
            raise HessianError(f"expected an int at offset {pos}, found {describe_code(code)}")
        return self.read()  # type: ignore[no-any-return]

    # ---- dispatch ---------------------------------------------------------------------------

    def _read(self) -> Any:
        pos = self.offset
        if pos >= self._end:
            raise HessianError(f"unexpected end of data at offset {pos}")
        code = self._data[pos]
        self.offset = pos + 1
        return _READERS[code](self, code)

    def _skip(self) -> None:
        pos = self.offset
        if pos >= self._end:
            raise HessianError(f"unexpected end of data at offset {pos}")
        code = self._data[pos]
        size = _FIXED_SIZES[code]
        if size:
            if pos + size > self._end:
                raise self._truncated(pos)
            self.offset = pos + size
            return
        if code < 0x20:  # fast path: short ASCII string
            end = pos + 1 + code
            if end <= self._end and self._data[pos + 1 : end].isascii():
                self.offset = end
                return
        self.offset = pos + 1
        _SKIPPERS[code](self, code)

    def _truncated(self, start: int) -> HessianError:
        return HessianError(
            f"truncated data: the value at offset {start} runs past the end ({self._end} bytes)"
        )

    def _bad_code(self, code: int) -> Any:
        pos = self.offset - 1
        raise HessianError(f"unexpected {describe_code(code)} at offset {pos}")

    # ---- numbers ----------------------------------------------------------------------------

    def _int_1(self, code: int) -> int:
        return code - 0x90

    def _int_2(self, code: int) -> int:
        pos = self.offset
        self.offset = pos + 1
        return ((code - 0xC8) << 8) + self._data[pos]

    def _int_3(self, code: int) -> int:
        pos = self.offset
        data = self._data
        self.offset = pos + 2
        return ((code - 0xD4) << 16) + (data[pos] << 8) + data[pos + 1]

    def _int_4(self, code: int) -> int:
        pos = self.offset
        value: int = _INT32.unpack_from(self._data, pos)[0]
        self.offset = pos + 4
        return value

    def _long_1(self, code: int) -> Long:
        return Long(code - 0xE0)

    def _long_2(self, code: int) -> Long:
        pos = self.offset
        self.offset = pos + 1
        return Long(((code - 0xF8) << 8) + self._data[pos])

    def _long_3(self, code: int) -> Long:
        pos = self.offset
        data = self._data
        self.offset = pos + 2
        return Long(((code - 0x3C) << 16) + (data[pos] << 8) + data[pos + 1])

    def _long_4(self, code: int) -> Long:
        return Long(self._int_4(code))

    def _long_8(self, code: int) -> Long:
        pos = self.offset
        value: int = _INT64.unpack_from(self._data, pos)[0]
        self.offset = pos + 8
        return Long(value)

    def _double_zero(self, code: int) -> float:
        return 0.0

    def _double_one(self, code: int) -> float:
        return 1.0

    def _double_byte(self, code: int) -> float:
        pos = self.offset
        self.offset = pos + 1
        byte = self._data[pos]
        return float(byte - 256 if byte > 127 else byte)

    def _double_short(self, code: int) -> float:
        pos = self.offset
        value: int = _INT16.unpack_from(self._data, pos)[0]
        self.offset = pos + 2
        return float(value)

    def _double_mill(self, code: int) -> float:
        return 0.001 * self._int_4(code)

    def _double_8(self, code: int) -> float:
        pos = self.offset
        value: float = _DOUBLE.unpack_from(self._data, pos)[0]
        self.offset = pos + 8
        return value

    def _date_ms(self, code: int) -> datetime:
        pos = self.offset
        millis: int = _INT64.unpack_from(self._data, pos)[0]
        self.offset = pos + 8
        return _to_datetime(millis, pos - 1)

    def _date_minutes(self, code: int) -> datetime:
        pos = self.offset
        minutes: int = _INT32.unpack_from(self._data, pos)[0]
        self.offset = pos + 4
        return _to_datetime(minutes * 60_000, pos - 1)

    def _null(self, code: int) -> None:
        return None

    def _true(self, code: int) -> bool:
        return True

    def _false(self, code: int) -> bool:
        return False

    # ---- strings and binaries ---------------------------------------------------------------

    def _string_span(self, units: int) -> tuple[int, int]:
        """Consume ``units`` UTF-16 code units of string bytes; return their byte span."""
        data = self._data
        start = self.offset
        end = start + units
        if end > self._end:
            raise self._truncated(start)
        if not data[start:end].isascii():
            end = utf8_end(data, start, units)
        self.offset = end
        return start, end

    def _string_short(self, code: int) -> str:
        units = code if code < 0x20 else ((code - 0x30) << 8) + self._next_byte()
        data = self._data
        start = self.offset
        end = start + units
        raw = data[start:end]
        if raw.isascii() and end <= self._end:
            self.offset = end
            return raw.decode("ascii")
        end = utf8_end(data, start, units)
        self.offset = end
        return decode_java(data[start:end], start)

    def _string_chunks(self, code: int) -> str:
        start = self.offset - 1
        pieces: list[bytes | bytearray] = []
        while True:
            units = self._chunk_length(code, start)
            span_start, span_end = self._string_span(units)
            pieces.append(self._data[span_start:span_end])
            if code != 0x52:
                return decode_java(b"".join(pieces), start)
            code = self._next_chunk_code(_STRING_CODES, "string", start)

    def _skip_string(self, code: int) -> None:
        start = self.offset - 1
        while True:
            self._string_span(self._chunk_length(code, start))
            if code != 0x52:
                return
            code = self._next_chunk_code(_STRING_CODES, "string", start)

    def _binary(self, code: int) -> bytes:
        start = self.offset - 1
        pieces: list[bytes | bytearray] = []
        while True:
            length = self._chunk_length(code, start)
            pos = self.offset
            if pos + length > self._end:
                raise self._truncated(start)
            pieces.append(self._data[pos : pos + length])
            self.offset = pos + length
            if code != 0x41:
                return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
            code = self._next_chunk_code(_BINARY_CODES, "binary", start)

    def _skip_binary(self, code: int) -> None:
        start = self.offset - 1
        while True:
            length = self._chunk_length(code, start)
            self.offset += length
            if self.offset > self._end:
                raise self._truncated(start)
            if code != 0x41:
                return
            code = self._next_chunk_code(_BINARY_CODES, "binary", start)

    def _chunk_length(self, code: int, start: int) -> int:
        """Length of a string/binary chunk whose code byte was just consumed."""
        if code < 0x20:  # short string
            return code
        if code < 0x30:  # short binary
            return code - 0x20
        if code < 0x38:  # 0x30-0x33 string, 0x34-0x37 binary: 10-bit length
            return (((code - 0x30) & 0x03) << 8) + self._next_byte()
        pos = self.offset
        self.offset = pos + 2
        return (self._data[pos] << 8) + self._data[pos + 1]

    def _next_chunk_code(self, codes: frozenset[int], kind: str, start: int) -> int:
        pos = self.offset
        code = self._data[pos]
        if code not in codes:
            raise HessianError(
                f"{kind} starting at offset {start}: expected another chunk at offset {pos}, "
                f"found {describe_code(code)}"
            )
        self.offset = pos + 1
        return code

    def _next_byte(self) -> int:
        pos = self.offset
        self.offset = pos + 1
        return self._data[pos]

    # ---- lists and maps ---------------------------------------------------------------------

    def _list_short(self, code: int) -> list[Any]:
        return self._list_items([], code - 0x78)

    def _list_fixed(self, code: int) -> list[Any]:
        return self._list_items([], self._read_length())

    def _list_typed_short(self, code: int) -> list[Any]:
        return self._list_items(TypedList(self._read_type()), code - 0x70)

    def _list_typed_fixed(self, code: int) -> list[Any]:
        items = TypedList(self._read_type())
        return self._list_items(items, self._read_length())

    def _list_variable(self, code: int) -> list[Any]:
        items: list[Any] = [] if code == 0x57 else TypedList(self._read_type())
        self._add_ref(items)
        self._enter()
        data = self._data
        read = self._read
        while data[self.offset] != _END:
            items.append(read())
        self.offset += 1
        self._depth -= 1
        return items

    def _list_items(self, items: list[Any], length: int) -> list[Any]:
        if length > self._end - self.offset:
            raise HessianError(
                f"list length {length} before offset {self.offset} exceeds the remaining data"
            )
        self._add_ref(items)
        self._enter()
        read = self._read
        for _ in range(length):
            items.append(read())
        self._depth -= 1
        return items

    def _map(self, code: int) -> dict[Any, Any]:
        entries: dict[Any, Any] = {} if code == 0x48 else TypedMap(self._read_type())
        self._add_ref(entries)
        self._enter()
        data = self._data
        read = self._read
        while data[self.offset] != _END:
            key_offset = self.offset
            key = read()
            try:
                entries[key] = read()
            except TypeError:
                raise HessianError(
                    f"map key at offset {key_offset} is a {type(key).__name__}, "
                    "which cannot be a Python dict key"
                ) from None
        self.offset += 1
        self._depth -= 1
        return entries

    def _skip_list(self, code: int) -> None:
        self._add_placeholder()
        if code in (0x55, 0x56) or 0x70 <= code < 0x78:
            self._read_type()
        if code >= 0x78:
            length = code - 0x78
        elif code >= 0x70:
            length = code - 0x70
        elif code in (0x56, 0x58):
            length = self._read_length()
        else:
            length = -1
        self._skip_items(length)

    def _skip_map(self, code: int) -> None:
        self._add_placeholder()
        if code == 0x4D:
            self._read_type()
        self._skip_items(-1)

    def _skip_items(self, count: int) -> None:
        """Skip ``count`` values, or values up to and including 'Z' when ``count`` < 0."""
        self._enter()
        skip = self._skip
        if count >= 0:
            if count > self._end - self.offset:
                raise HessianError(
                    f"list length {count} before offset {self.offset} exceeds the remaining data"
                )
            for _ in range(count):
                skip()
        else:
            data = self._data
            while data[self.offset] != _END:
                skip()
            self.offset += 1
        self._depth -= 1

    def _read_length(self) -> int:
        pos = self.offset
        length = self._read_int_value("a length")
        if length < 0:
            raise HessianError(f"negative length {length} at offset {pos}")
        return length

    def _read_type(self) -> str:
        """A list/map type: a string (added to the type table) or an index into that table."""
        pos = self.offset
        code = self._data[pos]
        if code in _STRING_CODES:
            self.offset = pos + 1
            name: str = _READERS[code](self, code)
            if self._replay < 0:
                self._types.append(name)
            return name
        index = self._read_int_value("a type")
        if not 0 <= index < len(self._types):
            raise HessianError(
                f"type reference {index} at offset {pos} but only {len(self._types)} types seen"
            )
        return self._types[index]

    def _read_int_value(self, what: str) -> int:
        pos = self.offset
        code = self._data[pos]
        if code not in _INT_CODES:
            raise HessianError(
                f"expected {what} (an int) at offset {pos}, found {describe_code(code)}"
            )
        self.offset = pos + 1
        value: int = _READERS[code](self, code)
        return value

    # ---- objects and references ---------------------------------------------------------------

    def _class_def(self, code: int) -> Any:
        self._read_class_def()
        return self._read()

    def _skip_class_def(self, code: int) -> None:
        self._read_class_def()
        self._skip()

    def _read_class_def(self) -> None:
        pos = self.offset - 1
        name = self._read_def_string(pos)
        count = self._read_length()
        if count > self._end - self.offset:
            raise HessianError(f"class definition at offset {pos} claims {count} fields")
        fields = tuple(self._read_def_string(pos) for _ in range(count))
        if self._replay < 0:
            self._classes.append((name, fields))

    def _read_def_string(self, def_offset: int) -> str:
        code = self._data[self.offset]
        if code not in _STRING_CODES:
            raise HessianError(
                f"class definition at offset {def_offset}: expected a string at offset "
                f"{self.offset}, found {describe_code(code)}"
            )
        return self.read_string()

    def _object(self, code: int) -> JavaObject:
        name, fields = self._class_for(code)
        obj = JavaObject(name, {})
        self._add_ref(obj)
        self._enter()
        values = obj.fields
        read = self._read
        for field_name in fields:
            values[field_name] = read()
        self._depth -= 1
        return obj

    def _skip_object(self, code: int) -> None:
        fields = self._class_for(code)[1]
        self._add_placeholder()
        self._skip_items(len(fields))

    def _class_for(self, code: int) -> tuple[str, tuple[str, ...]]:
        pos = self.offset - 1
        index = code - 0x60 if code >= 0x60 else self._read_int_value("a class index")
        if not 0 <= index < len(self._classes):
            raise HessianError(
                f"object at offset {pos} uses class definition {index} "
                f"but only {len(self._classes)} were defined"
            )
        return self._classes[index]

    def _ref(self, code: int) -> Any:
        slot = self._ref_slot()
        value = self._refs[slot]
        if type(value) is int:  # a placeholder left by skip(): decode the value now
            value = self._replay_skipped(slot, value)
        return value

    def _skip_ref(self, code: int) -> None:
        self._ref_slot()

    def _ref_slot(self) -> int:
        pos = self.offset - 1
        slot = self._read_int_value("a reference index")
        if not 0 <= slot < len(self._refs):
            raise HessianError(
                f"reference to #{slot} at offset {pos} but only {len(self._refs)} "
                "lists/maps/objects seen"
            )
        return slot

    def _replay_skipped(self, slot: int, start: int) -> Any:
        saved_offset, saved_replay = self.offset, self._replay
        self.offset, self._replay = start, slot
        try:
            return self._read()
        finally:
            self.offset, self._replay = saved_offset, saved_replay

    def _add_ref(self, value: Any) -> None:
        if self._replay < 0:
            self._refs.append(value)
            return
        slot = self._replay
        self._replay = slot + 1
        if type(self._refs[slot]) is int:
            self._refs[slot] = value

    def _add_placeholder(self) -> None:
        self._refs.append(self.offset - 1)

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise HessianError(f"values nested deeper than {_MAX_DEPTH} at offset {self.offset}")


def _to_datetime(millis: int, offset: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise HessianError(
            f"date at offset {offset} ({millis} ms since the epoch) is outside Python's range"
        ) from None


_BINARY_CODES = frozenset([*range(0x20, 0x30), *range(0x34, 0x38), 0x41, 0x42])


def _build_tables() -> tuple[list[Reader], list[Skipper], list[int]]:
    d = Hessian2Decoder
    readers: list[Reader] = [d._bad_code] * 256
    skippers: list[Skipper] = [d._bad_code] * 256
    sizes = [0] * 256

    def put(codes: range | list[int], reader: Reader, skipper: Skipper | None, size: int) -> None:
        for code in codes:
            readers[code] = reader
            if skipper is not None:
                skippers[code] = skipper
            sizes[code] = size

    put(range(0x80, 0xC0), d._int_1, None, 1)
    put(range(0xC0, 0xD0), d._int_2, None, 2)
    put(range(0xD0, 0xD8), d._int_3, None, 3)
    put([0x49], d._int_4, None, 5)
    put(range(0xD8, 0xF0), d._long_1, None, 1)
    put(range(0xF0, 0x100), d._long_2, None, 2)
    put(range(0x38, 0x40), d._long_3, None, 3)
    put([0x59], d._long_4, None, 5)
    put([0x4C], d._long_8, None, 9)
    put([0x5B], d._double_zero, None, 1)
    put([0x5C], d._double_one, None, 1)
    put([0x5D], d._double_byte, None, 2)
    put([0x5E], d._double_short, None, 3)
    put([0x5F], d._double_mill, None, 5)
    put([0x44], d._double_8, None, 9)
    put([0x4A], d._date_ms, None, 9)
    put([0x4B], d._date_minutes, None, 5)
    put([0x4E], d._null, None, 1)
    put([0x54], d._true, None, 1)
    put([0x46], d._false, None, 1)
    put([*range(0x00, 0x20), *range(0x30, 0x34)], d._string_short, d._skip_string, 0)
    put([0x52, 0x53], d._string_chunks, d._skip_string, 0)
    put([*range(0x20, 0x30), *range(0x34, 0x38), 0x41, 0x42], d._binary, d._skip_binary, 0)
    put(range(0x78, 0x80), d._list_short, d._skip_list, 0)
    put([0x58], d._list_fixed, d._skip_list, 0)
    put(range(0x70, 0x78), d._list_typed_short, d._skip_list, 0)
    put([0x56], d._list_typed_fixed, d._skip_list, 0)
    put([0x55, 0x57], d._list_variable, d._skip_list, 0)
    put([0x48, 0x4D], d._map, d._skip_map, 0)
    put([0x43], d._class_def, d._skip_class_def, 0)
    put([*range(0x60, 0x70), 0x4F], d._object, d._skip_object, 0)
    put([0x51], d._ref, d._skip_ref, 0)
    return readers, skippers, sizes


_READERS, _SKIPPERS, _FIXED_SIZES = _build_tables()
