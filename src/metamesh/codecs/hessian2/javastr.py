"""Java string semantics for Hessian 2.0: lengths in UTF-16 code units, CESU-8 style bytes.

Hessian counts a string's length in Java ``char``s (UTF-16 code units), and Java writes each
``char`` on its own, so a character outside the BMP goes on the wire as two 3-byte encodings of
its surrogates (never as a 4-byte UTF-8 sequence), and a chunk boundary may fall between them.

Python's own codecs do most of the work in C: a Python ``str`` holding surrogate code points *is*
a Java string, and ``encode("utf-8", "surrogatepass")`` writes it exactly as Java does. Decoding
joins the bytes of all chunks first and decodes once, then pairs surrogates through UTF-16.
The only thing the codecs cannot do is find where N code units end in a byte string; that is
done by counting lead bytes over whole slices (``bytes.translate`` deletes the continuation
bytes), so a non-ASCII string costs a few C passes, not a Python loop per byte.
"""

from __future__ import annotations

import re

from metamesh.codecs.hessian2.model import HessianError

_CONTINUATION = bytes(range(0x80, 0xC0))
_NOT_FOUR_BYTE_LEAD = bytes(b for b in range(256) if not 0xF0 <= b <= 0xF7)
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")
_OVERLONG_NUL = b"\xc0\x80"


def utf8_end(data: bytes | bytearray, start: int, units: int) -> int:
    """Return the offset just past ``units`` UTF-16 code units of UTF-8 starting at ``start``."""
    pos = start
    remaining = units
    while remaining > 0:
        chunk = data[pos : pos + remaining]
        if len(chunk) < remaining:
            raise HessianError(
                f"truncated string at offset {start}: {units} chars run past the end"
            )
        pos += remaining
        leads = len(chunk.translate(None, _CONTINUATION))
        if leads:
            # a 4-byte sequence is one character but two UTF-16 code units
            leads += len(chunk.translate(None, _NOT_FOUR_BYTE_LEAD))
        remaining -= leads
    if remaining < 0:
        raise HessianError(f"string length at offset {start} ends inside a 4-byte UTF-8 sequence")
    return _complete_last_char(data, start, pos)


def _complete_last_char(data: bytes | bytearray, start: int, pos: int) -> int:
    """Move ``pos`` past the continuation bytes of the character whose lead is before it."""
    lead_pos = pos - 1
    while lead_pos > start and pos - lead_pos < 4 and 0x80 <= data[lead_pos] < 0xC0:
        lead_pos -= 1
    lead = data[lead_pos]
    size = 1 if lead < 0xC0 or lead >= 0xF8 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    end = max(pos, lead_pos + size)
    if end > len(data):
        raise HessianError(f"truncated string at offset {start}: cut inside a UTF-8 sequence")
    return end


def decode_java(raw: bytes | bytearray, offset: int) -> str:
    """Decode Java-written UTF-8 (surrogates encoded one by one) into a Python ``str``."""
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        if _OVERLONG_NUL not in raw:
            raise HessianError(f"invalid UTF-8 in the string at offset {offset}: {exc}") from None
        return decode_java(raw.replace(_OVERLONG_NUL, b"\x00"), offset)
    if b"\xed" in raw:
        # surrogates decoded one by one: let UTF-16 pair them (lone ones stay, as in Java)
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def _split_surrogates(match: re.Match[str]) -> str:
    code = ord(match.group()) - 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))


def to_java_chars(text: str) -> str:
    """Return ``text`` as Java chars: each character outside the BMP becomes two surrogates."""
    if text.isascii():
        return text
    return _NON_BMP.sub(_split_surrogates, text)


def encode_java(java_chars: str) -> bytes:
    """Encode a string of Java chars (see :func:`to_java_chars`) the way Java's Hessian does."""
    return java_chars.encode("utf-8", "surrogatepass")
