"""Thrift transports: which framing a connection uses, told from its first bytes.

Three framings carry Thrift messages over TCP:

* **framed**: an i32 length, then one message;
* **unframed** (Apache's "buffered"): the bare message, so its end is only found by walking it;
* **THeader**: framed, and the frame starts with the 0x0FFF magic (see :mod:`.header`).

:func:`detect` looks at the first bytes of a connection and returns ``(transport, protocol)``,
or ``None`` while it cannot tell yet. It never consumes anything, so a partial first frame is
left whole in the buffer. The rules, in order:

1. ``80 01`` (strict binary) or ``82 x1`` (compact) at offset 0: unframed; a frame length can't
   start with those bytes because it would be negative.
2. a positive i32 length followed by ``0F FF`` (THeader), ``80 01`` or ``82 x1``: framed.
3. otherwise non-strict binary (i32 name length, name, type byte, seqid): framed if the bytes
   after the length parse as such a header inside the frame, else unframed if the bytes from
   offset 0 do. Method names are printable, so an unframed name read as a length is far too
   large to pass for the framed form.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from metamesh.codecs.message import CodecError, FrameTooLargeError
from metamesh.codecs.thrift.header import MAGIC
from metamesh.codecs.thrift.protocol import Protocol, sniff

_I32: Final = struct.Struct(">i")
#: A framed message: 4-byte length + the smallest possible message (non-strict, empty name).
_MIN_PROBE: Final = 8


class Transport(enum.IntEnum):
    FRAMED = 0
    UNFRAMED = 1
    HEADER = 2


def detect(buf: bytearray, max_frame_size: int) -> tuple[Transport, Protocol] | None:
    """Transport and protocol of a stream starting at ``buf[0]``; ``None`` = need more bytes."""
    n = len(buf)
    if n < 2:
        return None
    protocol = sniff(buf, 0)
    if protocol is not None:
        return Transport.UNFRAMED, protocol
    if n < _MIN_PROBE:
        return None
    (length,) = _I32.unpack_from(buf, 0)
    if length < 0:
        raise CodecError(f"thrift: cannot detect transport from first bytes {bytes(buf[:8])!r}")
    if length > max_frame_size:
        raise FrameTooLargeError(
            f"thrift: frame of {length} bytes exceeds the {max_frame_size} limit"
        )
    if buf[4] << 8 | buf[5] == MAGIC:
        return Transport.HEADER, Protocol.BINARY  # per-frame protocol id in the header
    protocol = sniff(buf, 4)
    if protocol is not None:
        return Transport.FRAMED, protocol
    return _detect_non_strict(buf, length)


def _detect_non_strict(buf: bytearray, length: int) -> tuple[Transport, Protocol] | None:
    (name_size,) = _I32.unpack_from(buf, 4)
    if 0 <= name_size <= length - 9:  # length, name, type, seqid, at least a STOP byte
        type_at = 8 + name_size
        if len(buf) <= type_at:
            return None
        if 1 <= buf[type_at] <= 4:
            return Transport.FRAMED, Protocol.BINARY_NON_STRICT
    type_at = 4 + length  # here ``length`` is read as the name length of an unframed message
    if len(buf) <= type_at:
        return None
    if 1 <= buf[type_at] <= 4:
        return Transport.UNFRAMED, Protocol.BINARY_NON_STRICT
    raise CodecError(f"thrift: cannot detect transport from first bytes {bytes(buf[:8])!r}")
