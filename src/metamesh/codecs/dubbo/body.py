"""The Hessian2 body of Dubbo requests and responses: where things are, read as little as possible.

Request body, one Hessian2 value after another::

    dubbo version, service path, service version, method name     (four strings: the "head")
    parameter descriptor  (string, e.g. "Ljava/lang/String;[IJ")
    N arguments           (N = parameters in the descriptor)
    attachments           (map string -> string; absent or null in some old clients)

Response body (status 20 only; other statuses carry an error string)::

    result kind (int): 0 exception, 1 value, 2 null, 3/4/5 the same plus attachments
    exception or value    (absent for kinds 2 and 5)
    attachments           (kinds 3-5)

Routing needs only the head, so that is what decode reads. Attachments sit behind the
arguments and are found by *skipping* the arguments (never building them); the walk is done on
demand and its offsets are kept in a :class:`BodyLayout` (the message's ``codec_state``), so
that re-encoding with a mutation copies the arguments by offset and re-serialises only the
attachments map. Map entries that are not mutated are copied byte for byte too, so values that
are not strings survive untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from metamesh.codecs.dubbo.descriptor import count_parameters
from metamesh.codecs.dubbo.header import HEADER_SIZE
from metamesh.codecs.hessian2 import Hessian2Decoder, Hessian2Encoder, HessianError
from metamesh.codecs.message import CodecError

# Hessian2 tags the codec must recognise itself (everything else is the decoder's business).
_MAP_UNTYPED: Final = 0x48  # 'H'
_MAP_TYPED: Final = 0x4D  # 'M'
_MAP_END: Final = 0x5A  # 'Z'
_NULL: Final = 0x4E  # 'N'

#: Errors a malformed body provokes in the Hessian decoder; re-raised as CodecError that says
#: which part of the Dubbo body was wrong (the built-in ones only as a safety net).
DECODE_ERRORS: Final = (
    HessianError,
    IndexError,
    ValueError,
    TypeError,
    KeyError,
    struct.error,
    RecursionError,
)

RESULT_EXCEPTION: Final = 0
RESULT_VALUE: Final = 1
RESULT_NULL: Final = 2
RESULT_WITH_ATTACHMENTS: Final = 3  # kinds 3, 4, 5 = 0, 1, 2 plus an attachments map


def _is_string_tag(tag: int) -> bool:
    return tag < 0x20 or 0x30 <= tag <= 0x33 or tag == 0x52 or tag == 0x53


class AttachmentMap:
    """Where an attachments map sits in a frame, entry by entry.

    ``prefix`` is the map's opening bytes (``H``, or ``M`` + type) copied verbatim on
    re-encode; ``entries`` holds ``(key, key_start, value_start, value_end, value)`` with
    ``key``/``value`` ``None`` when they are not strings. ``start == end`` means no map at all.
    """

    __slots__ = ("end", "entries", "prefix", "start")

    def __init__(
        self,
        start: int,
        end: int,
        prefix: bytes,
        entries: list[tuple[str | None, int, int, int, str | None]],
    ) -> None:
        self.start = start
        self.end = end
        self.prefix = prefix
        self.entries = entries

    def strings(self) -> dict[str, str]:
        """The string -> string entries (later duplicates win, as in a Java map)."""
        return {k: v for k, _, _, _, v in self.entries if k is not None and v is not None}


class BodyLayout:
    """Offsets of one frame's body, filled in as far as they were needed (``codec_state``).

    ``tail_start`` is where the attachments map starts (after the arguments for a request,
    after the value for a response) and ``attachments`` the map; both unset (``-1``/``None``)
    until the arguments/value have been walked.
    ``head_end`` is where a request's four head strings end; ``kind`` is the response result
    kind (``-1`` for requests) and ``kind_end`` where the value starts.
    """

    __slots__ = ("attachments", "head_end", "kind", "kind_end", "tail_start")

    def __init__(
        self, head_end: int = -1, kind: int = -1, kind_end: int = -1, tail_start: int = -1
    ) -> None:
        self.head_end = head_end
        self.kind = kind
        self.kind_end = kind_end
        self.tail_start = tail_start
        self.attachments: AttachmentMap | None = None


def read_request_head(frame: bytes) -> tuple[str, str, str, str, int]:
    """``(dubbo_version, interface, version, method, head_end)`` of a request frame.

    Fast path: in practice the four strings are short ASCII, so each is a Hessian short (tag
    ``0x00-0x1f`` = length) or medium (``0x30-0x33`` + one length byte) string whose character
    count equals its byte count. The spans are found from the tags alone (four unrolled steps:
    this runs for every request), the whole head, tags included, is decoded once as latin-1 and,
    if that text is ASCII, sliced into the four strings. Anything else goes to the full Hessian2
    decoder, which returns the same values or raises the precise error: null, chunked or
    non-ASCII strings, a medium length byte >= 0x80 (128-255 characters), an empty service path
    or method, a head running past the frame (``IndexError`` or ``h > len(frame)``).
    """
    try:
        n = frame[HEADER_SIZE]
        if n < 0x20:
            a, b = HEADER_SIZE + 1, HEADER_SIZE + 1 + n
        else:
            a, b = _medium_string(frame, HEADER_SIZE)
        n = frame[b]
        if n < 0x20:
            c, d = b + 1, b + 1 + n
        else:
            c, d = _medium_string(frame, b)
        n = frame[d]
        if n < 0x20:
            e, f = d + 1, d + 1 + n
        else:
            e, f = _medium_string(frame, d)
        n = frame[f]
        if n < 0x20:
            g, h = f + 1, f + 1 + n
        else:
            g, h = _medium_string(frame, f)
    except (IndexError, _NotInline):
        return _read_request_head(frame)
    text = frame[HEADER_SIZE:h].decode("latin-1")
    if not text.isascii() or h > len(frame) or c == d or g == h:
        return _read_request_head(frame)
    base = HEADER_SIZE
    return (
        text[a - base : b - base],
        text[c - base : d - base],
        text[e - base : f - base],
        text[g - base : h - base],
        h,
    )


class _NotInline(Exception):
    """A head string the inline reader does not handle (the full decoder takes over)."""


def _medium_string(frame: bytes, pos: int) -> tuple[int, int]:
    """``(start, end)`` of a Hessian medium string (tag ``0x30-0x33`` + one length byte)."""
    tag = frame[pos]
    if 0x30 <= tag <= 0x33:
        start = pos + 2
        return start, start + ((tag - 0x30) << 8 | frame[pos + 1])
    raise _NotInline


def _read_request_head(frame: bytes) -> tuple[str, str, str, str, int]:
    """The general reader behind :func:`read_request_head`."""
    try:
        d = Hessian2Decoder(frame, HEADER_SIZE)
        dubbo_version = d.read_string_or_none() or ""
        interface = d.read_string_or_none()
        version = d.read_string_or_none() or ""
        method = d.read_string_or_none()
    except DECODE_ERRORS as e:
        raise CodecError(f"dubbo: malformed request body: {e}") from e
    if not interface or not method:
        raise CodecError("dubbo: request has no service path or method name")
    return dubbo_version, interface, version, method, d.offset


def read_result_kind(frame: bytes) -> tuple[int, int]:
    """``(kind, kind_end)`` of an OK response frame."""
    if len(frame) > HEADER_SIZE and 0x90 <= frame[HEADER_SIZE] <= 0x95:
        return frame[HEADER_SIZE] - 0x90, HEADER_SIZE + 1  # the one-byte int every client writes
    try:
        d = Hessian2Decoder(frame, HEADER_SIZE)
        kind = d.read_int()
    except DECODE_ERRORS as e:
        raise CodecError(f"dubbo: malformed response body: {e}") from e
    if not 0 <= kind <= 5:
        raise CodecError(f"dubbo: unknown response result kind {kind} (expected 0-5)")
    return kind, d.offset


def request_attachments(frame: bytes, layout: BodyLayout) -> AttachmentMap:
    """The attachments map of a request, walking past the arguments the first time.

    Fast path (:func:`_inline_attachments`): arguments that are short ASCII strings, ints,
    longs, booleans or nulls and a map of short ASCII strings, the common shape, are walked
    by their tags alone; anything else, or anything malformed, goes to the Hessian2 decoder,
    which finds the same offsets or raises the precise error."""
    if layout.attachments is None:
        try:
            tail_start, amap = _inline_attachments(frame, layout.head_end)
            layout.tail_start = tail_start
            layout.attachments = amap
            return amap
        except (_NotInline, IndexError, CodecError):
            pass
        try:
            d = Hessian2Decoder(frame, layout.head_end)
            n_args = count_parameters(d.read_string_or_none() or "")
            for _ in range(n_args):
                d.skip()
            layout.tail_start = d.offset
            layout.attachments = _read_map(frame, d)
        except DECODE_ERRORS as e:
            raise CodecError(f"dubbo: malformed request arguments or attachments: {e}") from e
    return layout.attachments


def _inline_attachments(frame: bytes, pos: int) -> tuple[int, AttachmentMap]:
    """``(tail_start, map)`` of a request whose descriptor, arguments and attachments have the
    common simple shape (see :func:`request_attachments`); raises :class:`_NotInline` (or
    ``IndexError``) for any other.

    The map's strings are found by their tags alone, then the whole map is decoded once and
    its keys and values sliced from that text: one decode and one ASCII check per map instead
    of a slice, a check and a decode per string (this runs for every sampled Dubbo request,
    whose ``traceparent`` is written into this map)."""
    descriptor, pos = _ascii_string(frame, pos)
    for _ in range(count_parameters(descriptor)):
        pos = _skip_scalar(frame, pos)
    end = len(frame)
    if pos >= end:
        return pos, AttachmentMap(pos, pos, b"", [])
    if frame[pos] == _NULL:
        return pos, AttachmentMap(pos, pos + 1, b"", [])
    if frame[pos] != _MAP_UNTYPED:
        raise _NotInline
    # per entry: where the key's tag is, where its characters start, then the same two for
    # the value (whose tag is where the key ends), and where the value ends
    spans: list[int] = []
    at = pos + 1
    while frame[at] != _MAP_END:
        for _ in range(2):  # the key, then its value
            spans.append(at)
            tag = frame[at]
            if tag < 0x20:
                start, at = at + 1, at + 1 + tag
            else:
                start, at = _medium_string(frame, at)
            spans.append(start)
        spans.append(at)
    text = frame[pos:at].decode("latin-1")
    # ASCII as a whole unless a medium string's length byte is >= 0x80 (or a string is not
    # ASCII: then its byte spans are not character spans, and the decoder takes over)
    ascii = text.isascii()
    entries: list[tuple[str | None, int, int, int, str | None]] = []
    for i in range(0, len(spans), 5):
        key_at = spans[i]
        value_at = spans[i + 2]
        value_end = spans[i + 4]
        key = text[spans[i + 1] - pos : value_at - pos]
        value = text[spans[i + 3] - pos : value_end - pos]
        if not ascii and not (key.isascii() and value.isascii()):
            raise _NotInline
        entries.append((key, key_at, value_at, value_end, value))
    return pos, AttachmentMap(pos, at + 1, frame[pos : pos + 1], entries)


def _ascii_string(frame: bytes, pos: int) -> tuple[str, int]:
    """``(value, end)`` of a short or medium Hessian string at ``pos`` that is ASCII (its
    character count is then its byte count); raises :class:`_NotInline` otherwise."""
    tag = frame[pos]
    if tag < 0x20:
        start, end = pos + 1, pos + 1 + tag
    else:
        start, end = _medium_string(frame, pos)
    raw = frame[start:end]
    if end > len(frame) or not raw.isascii():
        raise _NotInline
    return raw.decode("ascii"), end


#: Bytes taken by a scalar Hessian value, by its first byte (0: not a scalar handled inline):
#: null, true, false, the compact ints and longs, int32 'I', long 'L' and long-as-int32 'Y'.
_SCALAR_SIZE: Final = bytes(
    1 if t in (0x4E, 0x54, 0x46) or 0x80 <= t <= 0xBF or 0xD8 <= t <= 0xEF
    else 2 if 0xC0 <= t <= 0xCF or 0xF0 <= t <= 0xFF
    else 3 if 0xD0 <= t <= 0xD7 or 0x38 <= t <= 0x3F
    else 5 if t in (0x49, 0x59)
    else 9 if t == 0x4C
    else 0
    for t in range(256)
)  # fmt: skip


def _skip_scalar(frame: bytes, pos: int) -> int:
    """Where the argument at ``pos`` ends, if it is an ASCII string or a scalar (strings and
    scalars take no reference slot, so skipping them needs no decoder state)."""
    tag = frame[pos]
    if tag < 0x20 or 0x30 <= tag <= 0x33:  # a string: checked, not decoded
        if tag < 0x20:
            start, end = pos + 1, pos + 1 + tag
        else:
            start, end = _medium_string(frame, pos)
        if end > len(frame) or not frame[start:end].isascii():
            raise _NotInline
        return end
    size = _SCALAR_SIZE[tag]
    if not size or pos + size > len(frame):
        raise _NotInline
    return pos + size


def response_attachments(frame: bytes, layout: BodyLayout) -> AttachmentMap:
    """The attachments map of an OK response (empty for kinds 0-2), skipping the value."""
    if layout.attachments is None:
        try:
            d = Hessian2Decoder(frame, layout.kind_end)
            if layout.kind % 3 != RESULT_NULL:
                d.skip()
            layout.tail_start = d.offset
            if layout.kind >= RESULT_WITH_ATTACHMENTS:
                layout.attachments = _read_map(frame, d)
            else:
                end = layout.tail_start
                layout.attachments = AttachmentMap(end, end, b"", [])
        except DECODE_ERRORS as e:
            raise CodecError(f"dubbo: malformed response value or attachments: {e}") from e
    return layout.attachments


def _read_map(frame: bytes, d: Hessian2Decoder) -> AttachmentMap:
    """Walk the map at ``d.offset``; ``d`` has read the arguments, so back-references to
    class definitions and types made there still resolve."""
    start = d.offset
    if start >= len(frame):
        return AttachmentMap(start, start, b"", [])
    tag = frame[start]
    if tag == _NULL:
        return AttachmentMap(start, start + 1, b"", [])
    if tag == _MAP_UNTYPED:
        d.offset = start + 1
    elif tag == _MAP_TYPED:
        d.offset = start + 1
        d.skip()  # the map's type (a string, or an int reference to an earlier type)
    else:
        raise CodecError(f"dubbo: attachments at offset {start} are not a map (tag 0x{tag:02x})")
    prefix = frame[start : d.offset]
    entries: list[tuple[str | None, int, int, int, str | None]] = []
    end = len(frame)
    while True:
        key_start = d.offset
        if key_start >= end:
            raise CodecError("dubbo: attachments map is not terminated")
        if frame[key_start] == _MAP_END:
            break
        key = d.read_string() if _is_string_tag(frame[key_start]) else None
        if key is None:
            d.skip()
        value_start = d.offset
        if value_start >= end:
            raise CodecError("dubbo: attachments map entry has no value")
        value = d.read_string() if _is_string_tag(frame[value_start]) else None
        if value is None:
            d.skip()
        entries.append((key, key_start, value_start, d.offset, value))
    return AttachmentMap(start, key_start + 1, prefix, entries)


def encode_string(value: str) -> bytes:
    """``value`` as one Hessian2 string (an ASCII one under 1,024 characters, as trace and
    exchange headers are, written directly: a short or medium string)."""
    n = len(value)
    if n < 1024 and value.isascii():
        raw = value.encode("ascii")
        return bytes((n,)) + raw if n < 0x20 else bytes((0x30 + (n >> 8), n & 0xFF)) + raw
    enc = Hessian2Encoder()
    enc.write_string(value)
    return enc.getvalue()


def encode_int(value: int) -> bytes:
    """``value`` as one Hessian2 int."""
    enc = Hessian2Encoder()
    enc.write_int(value)
    return enc.getvalue()


#: Hessian2 encodings of the keys written by mutations (trace and exchange headers, the
#: routes' own keys): a handful per proxy, encoded once.
_ENCODED_KEYS: Final[dict[str, bytes]] = {}
_MAX_ENCODED_KEYS: Final = 256


def _encoded_key(key: str) -> bytes:
    raw = _ENCODED_KEYS.get(key)
    if raw is None:
        raw = encode_string(key)
        if len(_ENCODED_KEYS) < _MAX_ENCODED_KEYS:
            _ENCODED_KEYS[key] = raw
    return raw


def merged_map(frame: bytes, amap: AttachmentMap, mutation: Mapping[str, str]) -> bytes:
    """The attachments map with ``mutation`` set: untouched entries copied byte for byte,
    replaced values re-encoded in place, new keys appended before the end marker."""
    parts: list[bytes] = []
    merge_into(parts, frame, amap, mutation)
    return b"".join(parts)


def merge_into(
    parts: list[bytes], frame: bytes, amap: AttachmentMap, mutation: Mapping[str, str]
) -> None:
    """Append the pieces of :func:`merged_map` to ``parts`` (so an encoder joins the whole
    frame once). Entries that stay are copied as runs: one slice from one replaced value to
    the next, so a map that only gains keys (a sampled request's ``traceparent``) is one slice
    of the frame plus the new entries."""
    parts.append(amap.prefix or b"H")
    entries = amap.entries
    present: set[str] | None = None
    if entries:
        copy_from = entries[0][1]
        for key, _, value_start, value_end, _ in entries:
            if key is not None and key in mutation:
                if present is None:
                    present = set()
                present.add(key)
                parts.append(frame[copy_from:value_start])
                parts.append(encode_string(mutation[key]))
                copy_from = value_end
        parts.append(frame[copy_from : entries[-1][3]])
    for key, value in mutation.items():
        if present is not None and key in present:
            continue
        parts.append(_encoded_key(key))
        parts.append(encode_string(value))
    parts.append(b"Z")
