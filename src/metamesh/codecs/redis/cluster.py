"""Redis Cluster facts the proxy needs, sans-IO: key slots (CRC16 with hashtags) and the
``-MOVED`` / ``-ASK`` redirections.

A key's slot is ``CRC16(key) mod 16384`` (the XMODEM CRC16 Redis Cluster specifies), computed
over the part between the first ``{`` and the next ``}`` when that part is not empty (a
hashtag: ``{user1}.name`` and ``{user1}.mail`` share a slot). A node that does not own a
slot answers ``-MOVED <slot> <host>:<port>`` (the slot has moved: remember it) or, during a
migration, ``-ASK <slot> <host>:<port>`` (ask that node once, after ``ASKING``).
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs.message import Redirect
from metamesh.codecs.redis.resp import encode_command

SLOTS: Final = 16384
ASKING: Final = encode_command([b"ASKING"])


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16: Final = _table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster uses."""
    crc = 0
    table = _CRC16
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The cluster slot of ``key`` (its hashtag's, when it has a non-empty one)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


def parse_redirect(frame: bytes) -> Redirect | None:
    """The redirection in an error reply frame (``-MOVED 3999 127.0.0.1:6381\\r\\n``), or None."""
    if not (frame.startswith(b"-MOVED ") or frame.startswith(b"-ASK ")):
        return None
    parts = frame[1:].split()
    if len(parts) != 3:
        return None
    host, sep, port = parts[2].rpartition(b":")
    if not sep or not parts[1].isdigit() or not port.isdigit():
        return None
    once = parts[0] == b"ASK"
    address = host.decode("ascii", "replace") or "127.0.0.1"
    return Redirect(int(parts[1]), address, int(port), once, ASKING if once else b"")
