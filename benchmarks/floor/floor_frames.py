"""The framing and id mapping the two Python floors share (``floor_py``, ``floor_epoll``).

:class:`Peer` is one socket's side of a featureless forwarder: :meth:`Peer.feed` cuts the
complete frames out of what was read (Dubbo: 16-byte header, body length at offset 12; Thrift:
framed transport, strict binary), gives a request an id on the shared upstream connection (its
own while free, else a fresh one) and remembers its caller, or gives a reply back its caller's
id, and queues the frame on the peer it goes to. It cuts frames as cheaply as metamesh's core
does (whole frames straight from the bytes read, no copy for a read that is one frame), so
the floor stays a floor. The floors differ only in how they read, write and flush, which is
what they are there to compare; they subclass :class:`Peer` and say what "this peer has
output" means (:meth:`Peer.mark`). Compiled with mypyc together with each floor.
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
        """Cut the complete frames, map their ids and queue them for their peer."""
        buf = self.buf
        if buf:  # a frame began in an earlier read: finish it from the buffer
            buf += data
            data = bytes(buf)
            buf.clear()
        pos = self.cut(data)
        if pos < len(data):
            buf += data[pos:] if pos else data

    def cut(self, data: bytes) -> int:
        """Queue every whole frame of ``data``; return where the first incomplete one starts.

        The frames are taken straight from ``data`` as metamesh does (``Codec.decode_at``): a
        read that is exactly one frame is forwarded as that very object, others are sliced
        out. A request keeps its caller's id while no request in flight upstream holds it
        (metamesh's rule, which spares a rewrite each way); otherwise it gets a fresh one.
        """
        pos, end = 0, len(data)
        while True:
            if self.thrift:
                if end - pos < 12:
                    break
                size, _version, name_len = _THRIFT.unpack_from(data, pos)
                size += 4
                at = pos + 12 + name_len
                fmt = _I32
            else:
                if end - pos < 16:
                    break
                _magic, _flags, _status, _rid, body = _DUBBO.unpack_from(data, pos)
                size, at, fmt = 16 + body, pos + 4, _I64
            if end - pos < size:
                break
            frame = data if not pos and size == end else data[pos : pos + size]
            rid: int = fmt.unpack_from(data, at)[0]
            up = self.upstream
            if up is not None:  # a request
                target = up
                new = rid
                if rid in up.pending:  # taken: a fresh id on the shared connection
                    new = up.next_id
                    up.next_id = new + 1 if new < 0x7FFFFFFF else 1
                    while new in up.pending:
                        new = up.next_id
                        up.next_id = new + 1 if new < 0x7FFFFFFF else 1
                up.pending[new] = (self, rid)
            else:  # a reply: back to its caller, with its own id
                target, new = self.pending.pop(rid)
            if new != rid:
                patched = bytearray(frame)
                fmt.pack_into(patched, at - pos, new)
                frame = bytes(patched)
            target.out.append(frame)
            if not target.dirty:
                self.mark(target)
            pos += size
        return pos
