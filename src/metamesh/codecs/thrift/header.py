"""THeader: the framed transport with out-of-band headers (Apache/fbthrift ``HeaderFormat``).

Wire layout (all integers big-endian, varints ULEB128)::

    i32 frame length (counts everything after itself)
    u16 magic 0x0FFF | u16 flags | i32 seqid | u16 header length in 4-byte words
    header: varint protocol id (0 binary, 2 compact)
            varint transform count, varint transform ids
            info sections: varint type (1 INFO_KEYVALUE, 2 INFO_PKEYVALUE),
                           varint count, count x (varint-length key, varint-length value)
            zero padding up to the word boundary
    payload: one Thrift message in that protocol (zlib-compressed if transform 1 is listed)

Decoding only needs the protocol id and transforms (to find and read the payload); the info
headers are parsed when metadata is first asked for or when a mutation rewrites them. A
mutation rebuilds just the header region: the payload bytes are copied untouched and only the
two lengths change. zlib (transform 1) is supported; other transforms are rejected.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Final

from metamesh.codecs.message import CodecError, FrameTooLargeError
from metamesh.codecs.thrift.protocol import Protocol, Short, read_varint, write_varint

MAGIC: Final = 0x0FFF
#: Bytes before the header region: length, magic, flags, seqid, header length.
PREFIX: Final = 14
SEQID_OFFSET: Final = 8
INFO_KEYVALUE: Final = 1
INFO_PKEYVALUE: Final = 2
ZLIB_TRANSFORM: Final = 1

_PROTOCOLS: Final = {0: Protocol.BINARY, 2: Protocol.COMPACT}
_PREFIX: Final = struct.Struct(">iHHiH")


class HeaderFrame:
    """Where things are in one THeader frame (offsets into the frame, length prefix included)."""

    __slots__ = ("flags", "header_end", "info_offset", "payload_offset", "protocol", "seqid")

    def __init__(
        self,
        flags: int,
        seqid: int,
        protocol: Protocol,
        info_offset: int,
        header_end: int,
        payload_offset: int,
    ) -> None:
        self.flags = flags
        self.seqid = seqid
        self.protocol = protocol
        self.info_offset = info_offset
        self.header_end = header_end
        self.payload_offset = payload_offset


def parse_frame(frame: bytes, max_size: int) -> tuple[HeaderFrame, bytes | None]:
    """Locate the parts of a complete THeader ``frame``.

    Returns the layout and, when the payload is zlib-compressed, the decompressed payload
    (``None`` otherwise: the payload is ``frame[payload_offset:]``).
    """
    end = len(frame)
    if end < PREFIX:
        raise CodecError(f"thrift header: frame of {end} bytes is shorter than the header")
    _, magic, flags, seqid, words = _PREFIX.unpack_from(frame, 0)
    if magic != MAGIC:
        raise CodecError(f"thrift header: bad magic {magic:#06x}")
    header_end = PREFIX + words * 4
    if header_end > end:
        raise CodecError("thrift header: header length runs past the frame")
    try:
        proto_id, pos = read_varint(frame, PREFIX, header_end, 5)
        count, pos = read_varint(frame, pos, header_end, 5)
        transforms = []
        for _ in range(count):
            transform, pos = read_varint(frame, pos, header_end, 5)
            transforms.append(transform)
    except Short:
        raise CodecError("thrift header: truncated header section") from None
    protocol = _PROTOCOLS.get(proto_id)
    if protocol is None:
        raise CodecError(f"thrift header: unsupported payload protocol id {proto_id}")
    layout = HeaderFrame(flags, seqid, protocol, pos, header_end, header_end)
    if not transforms:
        return layout, None
    if any(t != ZLIB_TRANSFORM for t in transforms):
        raise CodecError(f"thrift header: unsupported transform(s) {transforms} (only zlib=1)")
    payload = frame[header_end:]
    for _ in transforms:
        payload = _inflate(payload, max_size)
    return layout, payload


def _inflate(data: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size)
    except zlib.error as e:
        raise CodecError(f"thrift header: bad zlib payload ({e})") from None
    if inflater.unconsumed_tail:
        raise FrameTooLargeError(f"thrift header: zlib payload inflates past {max_size} bytes")
    return out


def deflate(payload: bytes) -> bytes:
    """Compress a payload for a frame that lists the zlib transform."""
    return zlib.compress(payload)


def transform_count(frame: bytes) -> int:
    """How many transforms a (valid, already parsed) frame lists."""
    _, pos = read_varint(frame, PREFIX, len(frame), 5)
    return read_varint(frame, pos, len(frame), 5)[0]


# --- info headers ---------------------------------------------------------------------------


class InfoSection:
    """One parsed info section: its type and its ordered key/value pairs."""

    __slots__ = ("kind", "pairs")

    def __init__(self, kind: int, pairs: list[tuple[bytes, bytes]]) -> None:
        self.kind = kind
        self.pairs = pairs


def parse_info(frame: bytes, layout: HeaderFrame) -> tuple[list[InfoSection], bytes]:
    """The info sections, and the unparsed rest of the header (unknown sections, padding)."""
    pos, end = layout.info_offset, layout.header_end
    sections: list[InfoSection] = []
    try:
        while pos < end:
            kind, after = read_varint(frame, pos, end, 5)
            if kind not in (INFO_KEYVALUE, INFO_PKEYVALUE):
                break  # padding (0) or a section type we do not know: keep it verbatim
            count, pos = read_varint(frame, after, end, 5)
            pairs = []
            for _ in range(count):
                key, pos = _read_string(frame, pos, end)
                value, pos = _read_string(frame, pos, end)
                pairs.append((key, value))
            sections.append(InfoSection(kind, pairs))
    except Short:
        raise CodecError("thrift header: info headers run past the header length") from None
    return sections, frame[pos:end]


def _read_string(frame: bytes, pos: int, end: int) -> tuple[bytes, int]:
    size, pos = read_varint(frame, pos, end, 5)
    if pos + size > end:
        raise Short(pos + size)
    return frame[pos : pos + size], pos + size


def info_headers(frame: bytes, layout: HeaderFrame) -> dict[str, str]:
    """All key/value info headers as strings (KEYVALUE wins over PKEYVALUE on a clash)."""
    sections, _ = parse_info(frame, layout)
    out: dict[str, str] = {}
    for section in sorted(sections, key=lambda s: s.kind == INFO_KEYVALUE):
        for key, value in section.pairs:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def with_headers(frame: bytes, layout: HeaderFrame, mutation: Mapping[str, str]) -> bytes:
    """``frame`` with ``mutation`` applied to its info headers; payload and prefix kept.

    A key already present (in either section type) is replaced in place; new keys go into the
    first KEYVALUE section, which is written before any PKEYVALUE section so that readers that
    stop at the first section they do not know (Apache's Python reader) still see them.
    """
    sections, rest = parse_info(frame, layout)
    pending = {k.encode("utf-8"): v.encode("utf-8") for k, v in mutation.items()}
    for section in sections:
        section.pairs = [(k, pending.pop(k, v)) for k, v in section.pairs]
    kv = [s for s in sections if s.kind == INFO_KEYVALUE]
    if not kv:
        kv = [InfoSection(INFO_KEYVALUE, [])]
    kv[0].pairs.extend(pending.items())
    ordered = kv + [s for s in sections if s.kind != INFO_KEYVALUE]
    body = bytearray(frame[PREFIX : layout.info_offset])
    for section in ordered:
        body += write_varint(section.kind) + write_varint(len(section.pairs))
        for key, value in section.pairs:
            body += write_varint(len(key)) + key + write_varint(len(value)) + value
    if rest.strip(b"\x00"):
        body += rest  # an unknown section type: keep it (and whatever follows) verbatim
    body += b"\x00" * (-len(body) % 4)
    words = len(body) // 4
    if words > 0xFFFF:
        raise CodecError("thrift header: mutated headers exceed the 256 KiB header limit")
    payload = frame[layout.header_end :]
    head = struct.pack(">iHHiH", 10 + len(body) + len(payload), MAGIC, layout.flags, 0, words)
    return head[:SEQID_OFFSET] + frame[SEQID_OFFSET : SEQID_OFFSET + 4] + head[12:] + body + payload


def build_frame(flags: int, seqid: int, protocol: Protocol, payload: bytes) -> bytes:
    """A THeader frame with no transforms and no info headers around ``payload``."""
    header = bytes((protocol.value, 0, 0, 0))  # protocol id, 0 transforms, 2 bytes padding
    return (
        _PREFIX.pack(10 + len(header) + len(payload), MAGIC, flags, seqid, len(header) // 4)
        + header
        + payload
    )


def set_lengths(frame: bytearray) -> None:
    """Fix the frame length after the payload changed size."""
    struct.pack_into(">i", frame, 0, len(frame) - 4)
