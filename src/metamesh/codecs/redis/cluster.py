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

from metamesh.codecs.message import CodecError, Ownership, Redirect
from metamesh.codecs.redis.resp import CRLF, encode_command

SLOTS: Final = 16384
ASKING: Final = encode_command([b"ASKING"])
CLUSTER_SLOTS: Final = encode_command([b"CLUSTER", b"SLOTS"])
READONLY: Final = encode_command([b"READONLY"])
#: RedisService ``readPolicy`` values that may read from replicas (``MASTER`` never does).
REPLICA_READ_POLICIES: Final = frozenset({"PREFER_MASTER", "REPLICA", "PREFER_REPLICA", "ANY"})


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


def parse_cluster_slots(frame: bytes) -> Ownership:
    """The slot ranges of a ``CLUSTER SLOTS`` reply: ``[[first, last, [host, port, id, ...],
    [replica host, port, id, ...]...], ...]``: each range's primary in ``ranges``, its
    replicas in ``replicas`` (an empty host means the node's own address)."""
    value, _ = _value(frame, 0, 0)
    if not isinstance(value, list):
        raise CodecError("CLUSTER SLOTS reply is not an array")
    ranges = []
    replicas = []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[2], list)):
            raise CodecError("CLUSTER SLOTS entry is not [first, last, [host, port, ...]]")
        first, last = entry[0], entry[1]
        if not (isinstance(first, int) and isinstance(last, int)):
            raise CodecError("CLUSTER SLOTS entry has no slot range")
        host, port = _node(entry[2])
        ranges.append((first, last, host, port))
        for node in entry[3:]:
            host, port = _node(node)
            replicas.append((first, last, host, port))
    return Ownership(tuple(ranges), tuple(replicas))


def _node(node: object) -> tuple[str, int]:
    """(address, port) of a ``CLUSTER SLOTS`` node entry ``[host, port, id, ...]``."""
    if not (isinstance(node, list) and len(node) >= 2):
        raise CodecError("CLUSTER SLOTS entry has no node")
    host, port = node[0], node[1]
    if not isinstance(host, bytes) or not isinstance(port, int):
        raise CodecError("CLUSTER SLOTS node is not [host, port]")
    return host.decode("ascii", "replace") or "127.0.0.1", port


_Value = int | bytes | None | list["_Value"]


def _value(buf: bytes, pos: int, depth: int) -> tuple[_Value, int]:
    """One RESP2/RESP3 value of a complete frame (numbers and strings as such, aggregates as
    lists, maps as flat key/value lists), and the offset after it."""
    if depth > 8:
        raise CodecError("CLUSTER SLOTS reply nested too deep")
    end = buf.index(CRLF, pos)
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    if kind == b":":
        return int(line), end + 2
    if kind in (b"+", b"-", b",", b"#", b"("):
        return line, end + 2
    if kind == b"_":
        return None, end + 2
    if kind in (b"$", b"=", b"!"):
        n = int(line)
        return (None, end + 2) if n < 0 else (buf[end + 2 : end + 2 + n], end + 4 + n)
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = max(int(line), 0) * (2 if kind in (b"%", b"|") else 1)
        items: list[_Value] = []
        pos = end + 2
        for _ in range(count):
            item, pos = _value(buf, pos, depth + 1)
            items.append(item)
        if kind == b"|":  # an attribute: the value it annotates follows
            return _value(buf, pos, depth)
        return items, pos
    raise CodecError(f"unexpected {kind!r} in a CLUSTER SLOTS reply")
