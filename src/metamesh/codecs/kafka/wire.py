"""Kafka's primitive wire types, read from and written to ``bytes`` at an offset (sans-IO).

Kafka messages are built from big-endian integers, length-prefixed strings and arrays, and, in a
message's *flexible* versions (KIP-482), "compact" forms whose lengths are unsigned varints
holding length + 1, plus a tagged-field section after each structure. :class:`Reader` walks a
frame with a position and raises :class:`~metamesh.codecs.CodecError` on anything that runs past
the end or announces a negative length, so a truncated or lying frame never reads garbage; the
``write_*`` functions build the few structures the codec writes itself (rewritten broker
addresses, error responses).
"""

from __future__ import annotations

import struct
from typing import Final

from metamesh.codecs.message import CodecError

_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_I64: Final = struct.Struct(">q")


class Reader:
    """A position in ``data`` (a whole frame); every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def _take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise CodecError(f"kafka: field of {n} bytes at offset {pos} runs past the frame")
        self.pos = pos + n
        return pos

    def skip(self, n: int) -> None:
        self._take(n)

    def int8(self) -> int:
        pos = self._take(1)
        value = self.data[pos]
        return value - 256 if value > 127 else value

    def int16(self) -> int:
        value: int = _I16.unpack_from(self.data, self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = _I32.unpack_from(self.data, self._take(4))[0]
        return value

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.data[self._take(1)]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise CodecError(f"kafka: varint too long at offset {self.pos}")

    def string(self, compact: bool = False) -> str | None:
        """A (nullable) string: int16 length, or in compact form a varint of length + 1."""
        n = self.uvarint() - 1 if compact else self.int16()
        if n < 0:
            return None
        pos = self._take(n)
        try:
            return self.data[pos : pos + n].decode()
        except UnicodeDecodeError:
            raise CodecError(f"kafka: string at offset {pos} is not UTF-8") from None

    def array_length(self, compact: bool = False) -> int:
        """Elements in an array (-1, null, counts as 0); each element is at least one byte, so
        a count larger than the bytes left is refused here rather than looped over."""
        n = self.uvarint() - 1 if compact else self.int32()
        if n > self.end - self.pos:
            raise CodecError(f"kafka: array of {n} elements at offset {self.pos} is too long")
        return max(n, 0)

    def bytes_field(self, compact: bool = False) -> None:
        """Skip a (nullable) byte string: int32 length, or compact varint length + 1."""
        n = self.uvarint() - 1 if compact else self.int32()
        if n > 0:
            self._take(n)

    def tagged_fields(self) -> None:
        """Skip a tagged-field section (count, then tag, size and bytes of each)."""
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())


def write_int16(value: int) -> bytes:
    return _I16.pack(value)


def write_int32(value: int) -> bytes:
    return _I32.pack(value)


def write_int64(value: int) -> bytes:
    return _I64.pack(value)


def write_uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def write_string(value: str | None, compact: bool = False) -> bytes:
    if value is None:
        return b"\x00" if compact else _I16.pack(-1)
    raw = value.encode()
    return (write_uvarint(len(raw) + 1) if compact else _I16.pack(len(raw))) + raw


def write_array_length(n: int, compact: bool = False) -> bytes:
    return write_uvarint(n + 1) if compact else _I32.pack(n)
