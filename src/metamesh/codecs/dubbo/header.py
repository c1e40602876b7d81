"""The Dubbo 2 frame header: 16 fixed bytes in front of every frame.

Layout (big-endian)::

    0-1   magic 0xdabb
    2     flags: 0x80 request, 0x40 two-way, 0x20 event (heartbeat), low 5 bits serialization id
    3     status (responses only; 20 = OK)
    4-11  request id (64 bits)
    12-15 body length (signed 32 bits)

Framing needs nothing but these 16 bytes, so the header is parsed with a single
``struct.unpack_from`` and checked before any body byte is looked at: an oversized body is
rejected as soon as the header is in, without buffering it.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from metamesh.codecs.message import CodecError, FrameTooLargeError

HEADER_SIZE: Final = 16
MAGIC: Final = 0xDABB
MAGIC_BYTES: Final = b"\xda\xbb"

FLAG_REQUEST: Final = 0x80
FLAG_TWO_WAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F

#: The only serialization metamesh can read (Dubbo's default).
HESSIAN2_ID: Final = 2

_HEADER: Final = struct.Struct(">HBBQi")
#: ``(magic, flags, status, request_id, body_length)`` at the front of a buffer, unchecked.
unpack_header: Final = _HEADER.unpack_from
_unpack_header: Final = unpack_header
_pack_header: Final = _HEADER.pack
_pack_length: Final = struct.Struct(">i").pack


class DubboStatus(enum.IntEnum):
    """Response status byte (Dubbo's ``Response`` constants)."""

    OK = 20
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED_ERROR = 100


KNOWN_STATUSES: Final = frozenset(int(s) for s in DubboStatus)

#: Serialization ids Dubbo defines, for error messages only.
_SERIALIZATION_NAMES: Final = {
    2: "hessian2",
    3: "java",
    4: "compactedjava",
    6: "fastjson",
    7: "nativejava",
    8: "kryo",
    9: "fst",
    10: "native-hessian",
    11: "avro",
    12: "protostuff",
    16: "gson",
    21: "protobuf-json",
    22: "protobuf",
    25: "kryo2",
}


def parse_header(buffer: bytes | bytearray, max_frame_size: int) -> tuple[int, int, int, int]:
    """``(flags, status, request_id, body_length)`` of the header at the front of ``buffer``.

    The caller guarantees at least :data:`HEADER_SIZE` bytes. Raises :class:`CodecError` for a
    bad magic, an unsupported serialization, an unknown response status, a negative body length
    or a frame larger than ``max_frame_size``.
    """
    magic, flags, status, request_id, body_length = _unpack_header(buffer, 0)
    if magic != MAGIC:
        raise CodecError(f"dubbo: bad magic 0x{magic:04x} (expected 0xdabb)")
    serialization = flags & SERIALIZATION_MASK
    if serialization != HESSIAN2_ID:
        name = _SERIALIZATION_NAMES.get(serialization, "unknown")
        raise CodecError(
            f"dubbo: unsupported serialization id {serialization} ({name}); only hessian2 (2)"
        )
    if body_length < 0:
        raise CodecError(f"dubbo: negative body length {body_length}")
    if body_length + HEADER_SIZE > max_frame_size:
        raise FrameTooLargeError(
            f"dubbo: frame of {body_length + HEADER_SIZE} bytes exceeds max_frame_size "
            f"{max_frame_size}"
        )
    if not flags & FLAG_REQUEST and status not in KNOWN_STATUSES:
        raise CodecError(f"dubbo: unknown response status {status}")
    return flags, status, request_id, body_length


def pack_header(flags: int, status: int, request_id: int, body_length: int) -> bytes:
    """The 16 header bytes for the given fields."""
    return _pack_header(MAGIC, flags, status, request_id & 0xFFFFFFFFFFFFFFFF, body_length)


def with_body_length(header: bytes | bytearray, body_length: int) -> bytes:
    """The 16-byte header at the front of ``header`` (a header, or a whole frame) with bytes
    12-15 replaced by ``body_length``. A ``Struct``'s ``pack``: ``int.to_bytes`` with its
    keyword is a call by name with parsed arguments in the native build."""
    return bytes(header[:12]) + _pack_length(body_length)


def with_request_id(frame: bytes, request_id: int) -> bytes:
    """``frame`` with its 8-byte request id replaced (ids are taken modulo 2**64)."""
    return b"".join((frame[:4], (request_id & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"), frame[12:]))
