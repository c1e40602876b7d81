"""Thrift protocol layer: message headers, a skip-walk over values, and TApplicationException.

The proxy never builds Thrift objects. It needs four things from a serialized message, and this
module gets each one by reading as few bytes as possible with ``struct.unpack_from``:

* the **message header** (name, message type, seqid, and *where* the seqid sits so it can be
  patched in place) -- :func:`parse_header`;
* the **end of the message** when the transport has no length prefix (unframed):
  :func:`skip_struct` walks field types and lengths without decoding any value;
* the **first field id** of a reply's result struct (0 = success, anything else = a declared
  exception) -- :func:`first_field_id`;
* a **TApplicationException** for local error replies -- :func:`write_application_exception`.

Three protocols are understood: binary strict (``0x8001`` version word), binary non-strict (the
old form: i32 name length first, then name, type byte, seqid) and compact (``0x82``). Binary
integers are big-endian; compact ones are ULEB128 varints, zigzag-encoded for signed values,
except the message seqid, which is the i32 written as an unsigned 32-bit varint.

Running out of bytes raises :class:`Short` (carrying the number of bytes known to be needed):
the transport layer turns that into "need more data" for unframed streams and into a
:class:`~metamesh.codecs.message.CodecError` inside a frame whose length is already known.
Anything structurally wrong raises ``CodecError`` directly.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from metamesh.codecs.message import CodecError

_I32: Final = struct.Struct(">i")
_I16: Final = struct.Struct(">h")

#: Nesting limit for the skip-walk (structs in lists in maps ...); deeper input is rejected.
MAX_DEPTH: Final = 64


class Protocol(enum.IntEnum):
    """A Thrift serialization, numbered as THeader's protocol ids where one exists."""

    BINARY = 0
    COMPACT = 2
    BINARY_NON_STRICT = 100


class WireType(enum.IntEnum):
    """Thrift message types as they appear on the wire."""

    CALL = 1
    REPLY = 2
    EXCEPTION = 3
    ONEWAY = 4


class Short(Exception):
    """The data ended before the message did; ``needed`` is a lower bound on the bytes required."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class Header:
    """A parsed message header. Offsets are absolute positions in the buffer that was parsed."""

    __slots__ = ("body_offset", "mtype", "name", "seqid", "seqid_offset", "seqid_size")

    def __init__(
        self, name: bytes, mtype: int, seqid: int, seqid_offset: int, seqid_size: int, body: int
    ) -> None:
        self.name = name
        self.mtype = mtype
        self.seqid = seqid
        self.seqid_offset = seqid_offset
        self.seqid_size = seqid_size
        self.body_offset = body


def sniff(data: bytes | bytearray, pos: int) -> Protocol | None:
    """The protocol a message starting at ``pos`` is written in, from its first two bytes.

    Returns ``None`` when the bytes do not start a strict-binary or compact message (the caller
    decides whether non-strict binary fits, which needs more context).
    """
    b0 = data[pos]
    if b0 == 0x80 and data[pos + 1] == 0x01:
        return Protocol.BINARY
    if b0 == 0x82 and data[pos + 1] & 0x1F == 1:
        return Protocol.COMPACT
    return None


def parse_header(data: bytes | bytearray, pos: int, end: int, protocol: Protocol) -> Header:
    """Parse the message header at ``pos``; raises :class:`Short` if it runs past ``end``."""
    try:
        if protocol is Protocol.COMPACT:
            return _compact_header(data, pos, end)
        return _binary_header(data, pos, end, protocol is Protocol.BINARY)
    except (IndexError, struct.error):
        raise Short(len(data) + 1) from None


def _binary_header(data: bytes | bytearray, pos: int, end: int, strict: bool) -> Header:
    if end - pos < 4:
        raise Short(pos + 4)
    if strict:
        if data[pos] != 0x80 or data[pos + 1] != 0x01:
            raise CodecError(f"thrift binary: bad version bytes {bytes(data[pos : pos + 2])!r}")
        mtype = data[pos + 3]
        pos += 4
        if end - pos < 4:
            raise Short(pos + 4)
    (size,) = _I32.unpack_from(data, pos)
    if size < 0:
        raise CodecError(f"thrift binary: negative method name length {size}")
    name_at = pos + 4
    pos = name_at + size
    if not strict:
        if pos + 1 > end:
            raise Short(pos + 1)
        mtype = data[pos]
        pos += 1
    if pos + 4 > end:
        raise Short(pos + 4)
    _check_type(mtype)
    (seqid,) = _I32.unpack_from(data, pos)
    return Header(bytes(data[name_at : name_at + size]), mtype, seqid, pos, 4, pos + 4)


def _compact_header(data: bytes | bytearray, pos: int, end: int) -> Header:
    if end - pos < 2:
        raise Short(pos + 2)
    if data[pos] != 0x82 or data[pos + 1] & 0x1F != 1:
        raise CodecError(f"thrift compact: bad protocol bytes {bytes(data[pos : pos + 2])!r}")
    mtype = data[pos + 1] >> 5
    _check_type(mtype)
    seqid_at = pos + 2
    if seqid_at + 2 <= end and data[seqid_at] < 0x80 and data[seqid_at + 1] < 0x80:
        seqid, size, seqid_size, pos = data[seqid_at], data[seqid_at + 1], 1, seqid_at + 2
    else:  # multi-byte varints (the common case above is one byte each)
        seqid, pos = read_varint(data, seqid_at, end, 5)
        seqid_size = pos - seqid_at
        size, pos = read_varint(data, pos, end, 5)
    name_at = pos
    pos += size
    if pos > end:
        raise Short(pos)
    seqid &= 0xFFFFFFFF
    if seqid & 0x80000000:
        seqid -= 0x100000000
    return Header(bytes(data[name_at:pos]), mtype, seqid, seqid_at, seqid_size, pos)


def _check_type(mtype: int) -> None:
    if not 1 <= mtype <= 4:
        raise CodecError(f"thrift: unknown message type {mtype}")


def read_varint(data: bytes | bytearray, pos: int, end: int, max_bytes: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at ``pos``: ``(value, next position)``."""
    result = 0
    shift = 0
    for i in range(max_bytes):
        if pos + i >= end:
            raise Short(pos + i + 1)
        b = data[pos + i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos + i + 1
        shift += 7
    raise CodecError(f"thrift compact: varint longer than {max_bytes} bytes at offset {pos}")


_ONE_BYTE_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))


def write_varint(value: int) -> bytes:
    """``value`` (non-negative) as an unsigned LEB128 varint."""
    if value < 0x80:  # seqids and lengths are mostly one or two bytes: no loop for those
        return _ONE_BYTE_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_seqid(protocol: Protocol, seqid: int) -> bytes:
    """The wire form of a seqid (any value in ``[-2**31, 2**32)``) in ``protocol``."""
    if protocol is Protocol.COMPACT:
        return write_varint(seqid & 0xFFFFFFFF)
    return _I32.pack(_signed32(seqid))


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


# --- the skip-walk --------------------------------------------------------------------------

# Binary field types -> fixed width (absent = variable or invalid).
_BINARY_FIXED: Final = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8, 16: 16}
# Smallest encoding of one element of each binary type (for early size checks on collections).
_BINARY_MIN: Final = {**_BINARY_FIXED, 11: 4, 12: 1, 13: 6, 14: 5, 15: 5}
# Compact element types -> fixed width inside collections (bools take one byte there).
_COMPACT_FIXED: Final = {1: 1, 2: 1, 3: 1, 7: 8, 13: 16}
_COMPACT_VARINT: Final = frozenset({4, 5, 6})


def skip_struct(data: bytes | bytearray, pos: int, end: int, protocol: Protocol) -> int:
    """The position just after the struct starting at ``pos`` (no value is decoded)."""
    try:
        if protocol is Protocol.COMPACT:
            return _compact_struct(data, pos, end, 0)
        return _binary_struct(data, pos, end, 0)
    except (IndexError, struct.error):
        raise Short(len(data) + 1) from None


def _binary_struct(data: bytes | bytearray, pos: int, end: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise CodecError(f"thrift: structs nested deeper than {MAX_DEPTH}")
    while True:
        if pos >= end:
            raise Short(pos + 1)
        ftype = data[pos]
        if ftype == 0:
            return pos + 1
        pos = _binary_value(data, pos + 3, end, ftype, depth)


def _binary_value(data: bytes | bytearray, pos: int, end: int, ftype: int, depth: int) -> int:
    width = _BINARY_FIXED.get(ftype)
    if width is not None:
        pos += width
    elif ftype == 11:
        pos = _skip_bytes(pos + 4, _binary_length(data, pos, end), end)
    elif ftype == 12:
        return _binary_struct(data, pos, end, depth + 1)
    elif ftype == 13:
        if pos + 6 > end:
            raise Short(pos + 6)
        ktype, vtype = data[pos], data[pos + 1]
        count = _binary_length(data, pos + 2, end)
        pos += 6
        _check_room(pos, count, _binary_min(ktype) + _binary_min(vtype), end)
        for _ in range(count):
            pos = _binary_value(data, pos, end, ktype, depth + 1)
            pos = _binary_value(data, pos, end, vtype, depth + 1)
    elif ftype in (14, 15):
        if pos + 5 > end:
            raise Short(pos + 5)
        etype = data[pos]
        count = _binary_length(data, pos + 1, end)
        pos += 5
        width = _BINARY_FIXED.get(etype)
        if width is not None:
            return _skip_bytes(pos, count * width, end)
        _check_room(pos, count, _binary_min(etype), end)
        for _ in range(count):
            pos = _binary_value(data, pos, end, etype, depth + 1)
    else:
        raise CodecError(f"thrift binary: unknown field type {ftype}")
    if pos > end:
        raise Short(pos)
    return pos


def _binary_min(ftype: int) -> int:
    width = _BINARY_MIN.get(ftype)
    if width is None:
        raise CodecError(f"thrift binary: unknown field type {ftype}")
    return width


def _binary_length(data: bytes | bytearray, pos: int, end: int) -> int:
    if pos + 4 > end:
        raise Short(pos + 4)
    size: int = _I32.unpack_from(data, pos)[0]
    if size < 0:
        raise CodecError(f"thrift: negative length {size} at offset {pos}")
    return size


def _skip_bytes(pos: int, size: int, end: int) -> int:
    pos += size
    if pos > end:
        raise Short(pos)
    return pos


def _check_room(pos: int, count: int, min_size: int, end: int) -> None:
    if pos + count * min_size > end:
        raise Short(pos + count * min_size)


def _compact_struct(data: bytes | bytearray, pos: int, end: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise CodecError(f"thrift: structs nested deeper than {MAX_DEPTH}")
    while True:
        if pos >= end:
            raise Short(pos + 1)
        b = data[pos]
        pos += 1
        if b == 0:
            return pos
        if not b & 0xF0:  # long form: zigzag i16 field id follows
            _, pos = read_varint(data, pos, end, 3)
        ftype = b & 0x0F
        if ftype not in (1, 2):  # bools carry their value in the type nibble
            pos = _compact_value(data, pos, end, ftype, depth)


def _compact_value(data: bytes | bytearray, pos: int, end: int, ftype: int, depth: int) -> int:
    width = _COMPACT_FIXED.get(ftype)
    if width is not None:
        pos += width
    elif ftype in _COMPACT_VARINT:
        _, pos = read_varint(data, pos, end, 10)
    elif ftype == 8:
        size, pos = read_varint(data, pos, end, 5)
        pos += size
    elif ftype == 12:
        return _compact_struct(data, pos, end, depth + 1)
    elif ftype in (9, 10):
        if pos >= end:
            raise Short(pos + 1)
        b = data[pos]
        count, etype = b >> 4, b & 0x0F
        pos += 1
        if count == 15:
            count, pos = read_varint(data, pos, end, 5)
        pos = _compact_elements(data, pos, end, etype, count, depth)
    elif ftype == 11:
        count, pos = read_varint(data, pos, end, 5)
        if count:
            if pos >= end:
                raise Short(pos + 1)
            b = data[pos]
            pos += 1
            _check_room(pos, count, 2, end)
            for _ in range(count):
                pos = _compact_element(data, pos, end, b >> 4, depth)
                pos = _compact_element(data, pos, end, b & 0x0F, depth)
    else:
        raise CodecError(f"thrift compact: unknown field type {ftype}")
    if pos > end:
        raise Short(pos)
    return pos


def _compact_elements(
    data: bytes | bytearray, pos: int, end: int, etype: int, count: int, depth: int
) -> int:
    width = _COMPACT_FIXED.get(etype)
    if width is not None:
        return _skip_bytes(pos, count * width, end)
    _check_room(pos, count, 1, end)
    for _ in range(count):
        pos = _compact_element(data, pos, end, etype, depth)
    return pos


def _compact_element(data: bytes | bytearray, pos: int, end: int, etype: int, depth: int) -> int:
    if etype in (1, 2):
        return pos + 1
    return _compact_value(data, pos, end, etype, depth + 1)


def first_field_id(data: bytes | bytearray, pos: int, end: int, protocol: Protocol) -> int:
    """Id of the first field of the struct at ``pos``; 0 when the struct is empty.

    A reply's result struct has field 0 for the return value and 1.. for declared exceptions,
    so this is all the proxy reads of a reply body.
    """
    if pos >= end:
        raise Short(pos + 1)
    b = data[pos]
    if b == 0:
        return 0
    if protocol is not Protocol.COMPACT:
        if pos + 3 > end:
            raise Short(pos + 3)
        field_id: int = _I16.unpack_from(data, pos + 1)[0]
        return field_id
    delta = b >> 4
    if delta:
        return delta
    raw, _ = read_varint(data, pos + 1, end, 3)
    decoded: int = (raw >> 1) ^ -(raw & 1)
    return decoded


# --- TApplicationException ------------------------------------------------------------------


class AppExceptionType(enum.IntEnum):
    """``TApplicationException.type`` values (Apache Thrift)."""

    UNKNOWN = 0
    UNKNOWN_METHOD = 1
    INVALID_MESSAGE_TYPE = 2
    WRONG_METHOD_NAME = 3
    BAD_SEQUENCE_ID = 4
    MISSING_RESULT = 5
    INTERNAL_ERROR = 6
    PROTOCOL_ERROR = 7


def write_application_exception(
    protocol: Protocol, name: bytes, seqid: int, message: str, kind: AppExceptionType
) -> bytes:
    """A whole EXCEPTION message (header + TApplicationException struct), no transport framing."""
    text = message.encode("utf-8")
    if protocol is Protocol.COMPACT:
        zigzag = (kind << 1) ^ (kind >> 31)
        return b"".join(
            (
                bytes((0x82, (WireType.EXCEPTION << 5) | 1)),
                write_varint(seqid & 0xFFFFFFFF),
                write_varint(len(name)),
                name,
                b"\x18",  # field 1 (delta 1), type binary
                write_varint(len(text)),
                text,
                b"\x15",  # field 2 (delta 1), type i32
                write_varint(zigzag),
                b"\x00",
            )
        )
    if protocol is Protocol.BINARY:
        head = struct.pack(">Ii", 0x80010000 | WireType.EXCEPTION, len(name)) + name
    else:
        head = _I32.pack(len(name)) + name + bytes((WireType.EXCEPTION,))
    return b"".join(
        (
            head,
            _I32.pack(_signed32(seqid)),
            b"\x0b\x00\x01",
            _I32.pack(len(text)),
            text,
            b"\x08\x00\x02",
            _I32.pack(kind),
            b"\x00",
        )
    )
