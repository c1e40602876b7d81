"""RESP framing: where one RESP2/RESP3 value ends, and a request's arguments (sans-IO).

The proxy never needs reply values, only their extent, so :func:`value_end` walks a value's
type bytes and lengths without building anything: simple types end at CRLF, bulk types
(``$ ! =``) at their declared length + CRLF, aggregates (``* ~ > % |``) after their elements
(maps and attributes count pairs). The walk is iterative with an explicit count of elements
still owed per open aggregate, so a hostile ``*1\\r\\n*1\\r\\n...`` costs a counter, not a
Python stack frame, and nesting deeper than ``max_depth`` is refused.

Requests are either arrays of bulk strings (what every client library sends) or inline
commands (``PING\\r\\n``, what a human types into telnet); :func:`parse_command` returns the
arguments of either. Lengths are checked against ``max_size`` as soon as they are read, so a
bulk string announcing 2 GB is refused before any of it is buffered.

``None`` means "need more data" everywhere, and nothing is consumed; invalid bytes raise
:class:`~metamesh.codecs.message.CodecError` (or :class:`FrameTooLargeError` for sizes).
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs.message import CodecError, FrameTooLargeError

CRLF: Final = b"\r\n"
#: Types whose payload is the rest of the line.
SIMPLE_TYPES: Final = frozenset(b"+-:_,#(")
#: Types with a length and a binary-safe payload.
BULK_TYPES: Final = frozenset(b"$!=")
#: Aggregates counted in elements; maps and attributes carry twice as many (key, value).
ARRAY_TYPES: Final = frozenset(b"*~>")
PAIR_TYPES: Final = frozenset(b"%|")
#: Longest header line (type byte + length) or inline command a client may send.
MAX_INLINE: Final = 64 * 1024
#: Arguments of one request (redis-server's own limit is much higher; this is per frame).
MAX_ARGS: Final = 1024 * 1024


def _line(buf: bytes | bytearray, pos: int, limit: int) -> int | None:
    """Index of the CR of the CRLF ending the line at ``pos``; None if not all there."""
    end = buf.find(CRLF, pos)
    if end < 0:
        if len(buf) - pos > limit:
            raise CodecError(f"line longer than {limit} bytes without CRLF")
        return None
    return end


def _length(buf: bytes | bytearray, start: int, end: int) -> int:
    raw = bytes(buf[start:end])
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 18:
        raise CodecError(f"bad length {raw[:32]!r}")
    return int(raw)


def value_end(buf: bytes | bytearray, pos: int, max_size: int, max_depth: int = 64) -> int | None:
    """Offset just past the complete RESP value at ``buf[pos:]``, or None if incomplete.

    Most replies are one bulk string (``GET``) or one simple value (``+OK``, ``:1``): those are
    measured in a few steps before the general walk over nested aggregates."""
    size = len(buf)
    if pos < size:
        kind = buf[pos]
        if kind == 0x24:  # '$': its length read digit by digit (no line search, no int())
            i = pos + 1
            n = 0
            while i < size:
                c = buf[i]
                if c < 48 or c > 57:
                    break
                n = n * 10 + c - 48
                i += 1
            # a bulk string of < 1 GB within the limit, its header complete
            if pos + 1 < i <= pos + 10 and i + 1 < size and buf[i] == 13 and n <= max_size:
                stop = i + 2 + n
                if size < stop + 2:
                    return None
                if buf[i + 1] == 10 and buf[stop] == 13 and buf[stop + 1] == 10:
                    return stop + 2
        elif kind in SIMPLE_TYPES:  # '+', '-', ':', ...: one line
            end = buf.find(CRLF, pos + 1)
            if end > 0:
                return end + 2
    return _value_end(buf, pos, max_size, max_depth)


def _value_end(buf: bytes | bytearray, pos: int, max_size: int, max_depth: int) -> int | None:
    """:func:`value_end`'s general walk: every type, nesting, and the errors."""
    start = pos
    owed: list[int] = []  # elements still owed by each open aggregate, innermost last
    while True:
        if pos >= len(buf):
            return None
        kind = buf[pos]
        end = _line(buf, pos + 1, MAX_INLINE)
        if end is None:
            return None
        if kind in SIMPLE_TYPES:
            pos = end + 2
        elif kind in BULK_TYPES:
            n = _length(buf, pos + 1, end)
            if n < -1:
                raise CodecError(f"bad bulk length {n}")
            if n > max_size:
                raise FrameTooLargeError(f"bulk string of {n} bytes (limit {max_size})")
            if n == -1:
                pos = end + 2
            else:
                stop = end + 2 + n
                if len(buf) < stop + 2:
                    return None
                if buf[stop : stop + 2] != CRLF:
                    raise CodecError("bulk string not followed by CRLF")
                pos = stop + 2
        elif kind in ARRAY_TYPES or kind in PAIR_TYPES:
            n = _length(buf, pos + 1, end)
            if n < -1:
                raise CodecError(f"bad aggregate length {n}")
            if kind in PAIR_TYPES:
                n *= 2
            if kind == 0x7C:  # '|': an attribute, then the value it annotates
                n += 1
            if n > MAX_ARGS:
                raise FrameTooLargeError(f"aggregate of {n} elements (limit {MAX_ARGS})")
            pos = end + 2
            if n > 0:
                if len(owed) >= max_depth:
                    raise CodecError(f"values nested deeper than {max_depth}")
                owed.append(n)
                continue
        else:
            raise CodecError(f"unknown RESP type byte {bytes([kind])!r} at offset {pos}")
        if pos - start > max_size:
            raise FrameTooLargeError(f"reply of over {pos - start} bytes (limit {max_size})")
        while owed:
            owed[-1] -= 1
            if owed[-1]:
                break
            owed.pop()
        if not owed:
            return pos


#: :func:`_parse_whole`'s answer when the request is not a complete, well-formed array (its
#: offset, -1, says so: tested by value, since the native build copies tuples).
_SLOW: Final[tuple[list[bytes], int]] = ([], -1)


def parse_command(
    buf: bytes | bytearray, pos: int, max_size: int
) -> tuple[list[bytes], int] | None:
    """The arguments of the request at ``buf[pos:]`` and the offset past it, or None.

    An empty inline line (a bare CRLF, which redis-server ignores) gives no arguments.
    """
    if isinstance(buf, bytes):  # the bytes of a read, as the client side decodes them
        found = _parse_whole(buf, pos, max_size)
        if found[1] >= 0:
            return found
    if pos >= len(buf):
        return None
    if buf[pos] != 0x2A:  # '*': anything else is an inline command
        return _inline(buf, pos)
    end = _line(buf, pos + 1, MAX_INLINE)
    if end is None:
        return None
    count = _length(buf, pos + 1, end)
    if count > MAX_ARGS:
        raise FrameTooLargeError(f"request of {count} arguments (limit {MAX_ARGS})")
    pos = end + 2
    args: list[bytes] = []
    total = 0
    size = len(buf)
    for _ in range(count):
        if pos >= size:
            return None
        if buf[pos] != 0x24:  # '$'
            raise CodecError(f"request argument is not a bulk string ({bytes([buf[pos]])!r})")
        end = buf.find(CRLF, pos + 1)
        if end < 0:
            if size - pos > MAX_INLINE:
                raise CodecError(f"line longer than {MAX_INLINE} bytes without CRLF")
            return None
        digits = buf[pos + 1 : end]
        # the common case checked inline (a short run of digits); anything else, _length
        n = int(digits) if 0 < end - pos <= 10 and digits.isdigit() else _length(buf, pos + 1, end)
        if n < 0:
            raise CodecError(f"bad argument length {n}")
        total += n
        if total > max_size:
            raise FrameTooLargeError(f"request of over {total} bytes (limit {max_size})")
        start = end + 2
        stop = start + n
        if size < stop + 2:
            return None
        if buf[stop] != 13 or buf[stop + 1] != 10:
            raise CodecError("argument not followed by CRLF")
        args.append(bytes(buf[start:stop]))
        pos = stop + 2
    return args, pos


def _parse_whole(buf: bytes, pos: int, max_size: int) -> tuple[list[bytes], int]:
    """:func:`parse_command`'s common case: a complete array of bulk strings in ``bytes``,
    its lengths read digit by digit (no line search, slice or ``int()`` per header: pipelined
    requests come many to a read, and this runs for each). Anything else, an incomplete or
    malformed request included, gives :data:`_SLOW`, for the general parse to answer."""
    size = len(buf)
    if pos >= size or buf[pos] != 0x2A:  # '*'
        return _SLOW
    i = pos + 1
    count = 0
    while i < size:
        c = buf[i]
        if c < 48 or c > 57:
            break
        count = count * 10 + c - 48
        i += 1
    if i == pos + 1 or i - pos > 8 or i + 1 >= size or buf[i] != 13 or buf[i + 1] != 10:
        return _SLOW
    if count > MAX_ARGS:
        return _SLOW
    pos = i + 2
    args: list[bytes] = []
    total = 0
    for _ in range(count):
        if pos >= size or buf[pos] != 0x24:  # '$'
            return _SLOW
        i = pos + 1
        n = 0
        while i < size:
            c = buf[i]
            if c < 48 or c > 57:
                break
            n = n * 10 + c - 48
            i += 1
        if i == pos + 1 or i - pos > 10 or i + 1 >= size or buf[i] != 13 or buf[i + 1] != 10:
            return _SLOW
        total += n
        if total > max_size:
            return _SLOW
        start = i + 2
        stop = start + n
        if size < stop + 2 or buf[stop] != 13 or buf[stop + 1] != 10:
            return _SLOW
        args.append(buf[start:stop])
        pos = stop + 2
    return args, pos


def _inline(buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int] | None:
    end = buf.find(b"\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_INLINE:
            raise FrameTooLargeError(f"inline command longer than {MAX_INLINE} bytes")
        return None
    line = bytes(buf[pos:end]).rstrip(b"\r")
    if b'"' in line or b"'" in line:
        raise CodecError("quoted inline commands are not supported (send a RESP array)")
    return line.split(), end + 1


def encode_command(args: list[bytes]) -> bytes:
    """A request as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def error(text: str) -> bytes:
    """A simple error reply; CR/LF in ``text`` become spaces (they would end the line)."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + CRLF


def bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
