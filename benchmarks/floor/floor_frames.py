"""The framing and id mapping the two Python floors share (``floor_py``, ``floor_epoll``).

:class:`Peer` is one socket's side of a featureless forwarder: :meth:`Peer.feed` cuts the
complete frames out of what was read (Dubbo: 16-byte header, body length at offset 12; Thrift:
framed transport, strict binary), gives a request a fresh id on the shared upstream connection
and remembers its caller, or gives a reply back its caller's id, and queues the frame on the
peer it goes to. The floors differ only in how they read, write and flush, which is what they
are there to compare; they subclass :class:`Peer` and say what "this peer has output" means
(:meth:`Peer.mark`). Compiled with mypyc together with each floor.
"""

from __future__ import annotations

import struct

_DUBBO = struct.Struct(">HBBqi")  # magic, flags, status, id, body length
_THRIFT = struct.Struct(">iIi")  # frame length, version|type, name length
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")


class Peer:
    """A client (requests in, ``upstream`` set) or the upstream (replies in)."""

    def __init__(self, thrift: bool, upstream: Peer | None) -> None:
        self.thrift = thrift
        self.upstream = upstream
        self.out: list[bytes] = []
        self.dirty = False
        self.buf = bytearray()
        self.pending: dict[int, tuple[Peer, int]] = {}  # upstream only: new id -> caller, id
        self.next_id = 1

    def mark(self, target: Peer) -> None:
        """``target`` has output: have it written at the end of the turn."""
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Cut the complete frames, rewrite their ids and queue them for their peer."""
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while True:
            if self.thrift:
                if end - pos < 12:
                    break
                size, _version, name_len = _THRIFT.unpack_from(buf, pos)
                size += 4
                at = pos + 12 + name_len
                fmt = _I32
            else:
                if end - pos < 16:
                    break
                _magic, _flags, _status, _rid, body = _DUBBO.unpack_from(buf, pos)
                size, at, fmt = 16 + body, pos + 4, _I64
            if end - pos < size:
                break
            rid = fmt.unpack_from(buf, at)[0]
            up = self.upstream
            if up is not None:  # a request: give it a fresh upstream id
                new = up.next_id
                up.next_id = new + 1 if new < 0x7FFFFFFF else 1
                up.pending[new] = (self, rid)
                target = up
            else:  # a reply: back to its caller, with its own id
                target, new = self.pending.pop(rid)
            fmt.pack_into(buf, at, new)
            target.out.append(bytes(buf[pos : pos + size]))
            if not target.dirty:
                self.mark(target)
            pos += size
        del buf[:pos]
