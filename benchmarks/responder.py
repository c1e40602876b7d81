"""A minimal upstream for the benchmark: answers every Thrift call or Dubbo request at once.

Run as ``python benchmarks/responder.py --protocol thrift`` (or ``dubbo``). It listens on
127.0.0.1 (an ephemeral port unless ``--port`` is given), prints ``PORT <n>`` on stdout once it
accepts connections, and exits by itself after ``--max-seconds`` (or on SIGTERM/SIGINT).

It must cost ~1 µs of CPU per request so that the proxy in front of it is what a benchmark sees:
one ``asyncio.Protocol`` per connection, every complete frame of a ``data_received`` answered in a
single ``write``, replies built from precomputed bytes with the request's id copied in. Thrift
``add(a, b)`` gets ``a + b`` back (so real clients can check the answer), any other Thrift call
gets 0; Dubbo requests get status 20 with the string "Hello world"; Dubbo heartbeats get a
heartbeat response; oneway calls get nothing.

``--hold`` adds a control port (printed as ``CONTROL <n>``) for the in-flight memory benchmark
(``benchmarks/inflight.py``): after ``hold`` the responder still reads and parses every request
but keeps its reply, so the proxy in front holds the request in flight; ``count`` answers the
number of requests held now; ``release`` writes every held reply, stops holding and answers the
number released. One command per line, one answer line per command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.frames import (
    DUBBO_FLAG_EVENT,
    DUBBO_FLAG_REQUEST,
    DUBBO_FLAG_TWOWAY,
    DUBBO_HEARTBEAT_HEAD,
    DUBBO_HEARTBEAT_TAIL,
    DUBBO_MAGIC,
    DUBBO_REPLY_HEAD,
    DUBBO_REPLY_TAIL,
    THRIFT_CALL,
    THRIFT_VERSION_1,
    FrameError,
    join_pending,
    keep_unused,
)

_THRIFT_HEAD = struct.Struct(">iIi")
_THRIFT_ADD_ARGS = struct.Struct(">ibhibhi")  # seqid, then i32 field 1, i32 field 2
_THRIFT_SEQ_RESULT = struct.Struct(">ibhqb")  # seqid, then i64 field 0 and STOP
_DUBBO_HEAD = struct.Struct(">HBBqi")


class _ThriftReplies:
    """Builds Thrift replies; the per-method prefix (length, version, name) is cached."""

    def __init__(self) -> None:
        self._prefix: dict[bytes, bytes] = {}

    def prefix(self, name: bytes) -> bytes:
        p = self._prefix.get(name)
        if p is None:
            size = 4 + 4 + len(name) + _THRIFT_SEQ_RESULT.size
            p = struct.pack(">iIi", size, THRIFT_VERSION_1 | 2, len(name)) + name
            self._prefix[name] = p
        return p


def answer_thrift(buf: bytes | bytearray, out: list[bytes], replies: _ThriftReplies) -> int:
    """Append replies for the complete frames at the front of ``buf``; return bytes used."""
    pos, end = 0, len(buf)
    while end - pos >= 12:
        size, version, name_len = _THRIFT_HEAD.unpack_from(buf, pos)
        if end - pos - 4 < size:
            break
        if version & 0xFFFF0000 != THRIFT_VERSION_1 or not 0 <= name_len <= size - 12:
            raise FrameError(f"not a strict-binary thrift frame: version {version:#x}")
        if version & 0xFF == THRIFT_CALL:
            name = bytes(buf[pos + 12 : pos + 12 + name_len])
            at = pos + 12 + name_len
            value = 0
            if size - 12 - name_len >= _THRIFT_ADD_ARGS.size - 4:
                seqid, t1, f1, a, t2, f2, b = _THRIFT_ADD_ARGS.unpack_from(buf, at)
                if t1 == 8 and f1 == 1 and t2 == 8 and f2 == 2:
                    value = a + b
            else:
                seqid = struct.unpack_from(">i", buf, at)[0]
            out.append(replies.prefix(name) + _THRIFT_SEQ_RESULT.pack(seqid, 10, 0, value, 0))
        pos += 4 + size
    return pos


def answer_dubbo(buf: bytes | bytearray, out: list[bytes]) -> int:
    """Append responses for the complete frames at the front of ``buf``; return bytes used."""
    pos, end = 0, len(buf)
    while end - pos >= 16:
        magic, flag, _status, _rid, body_len = _DUBBO_HEAD.unpack_from(buf, pos)
        if magic != DUBBO_MAGIC or body_len < 0:
            raise FrameError(f"not a dubbo frame: magic {magic:#x}")
        if end - pos - 16 < body_len:
            break
        if flag & DUBBO_FLAG_REQUEST and flag & DUBBO_FLAG_TWOWAY:
            rid = buf[pos + 4 : pos + 12]
            if flag & DUBBO_FLAG_EVENT:
                out.append(DUBBO_HEARTBEAT_HEAD + rid + DUBBO_HEARTBEAT_TAIL)
            else:
                out.append(DUBBO_REPLY_HEAD + rid + DUBBO_REPLY_TAIL)
        pos += 16 + body_len
    return pos


class Hold:
    """Replies kept back while holding (``--hold``): per connection, in arrival order."""

    def __init__(self) -> None:
        self.on = False
        self.count = 0
        self.kept: dict[ResponderProtocol, list[bytes]] = {}

    def keep(self, conn: ResponderProtocol, out: list[bytes]) -> None:
        self.kept.setdefault(conn, []).extend(out)
        self.count += len(out)

    def release(self) -> int:
        """Write every kept reply and stop holding; the number of replies released."""
        released, self.on = self.count, False
        for conn, out in self.kept.items():
            conn.write(out)
        self.kept, self.count = {}, 0
        return released


class ResponderProtocol(asyncio.Protocol):
    """One upstream connection: answer all complete frames of each read in one write."""

    def __init__(self, protocol: str, replies: _ThriftReplies, hold: Hold | None = None) -> None:
        self._thrift = protocol == "thrift"
        self._replies = replies
        self._hold = hold
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = join_pending(self._buf, data)
        out: list[bytes] = []
        try:
            used = (
                answer_thrift(buf, out, self._replies) if self._thrift else answer_dubbo(buf, out)
            )
        except FrameError as exc:
            print(f"responder: closing connection: {exc}", file=sys.stderr)
            assert self._transport is not None
            self._transport.close()
            return
        keep_unused(self._buf, buf, used)
        if out:
            hold = self._hold
            if hold is not None and hold.on:
                hold.keep(self, out)
            else:
                self.write(out)

    def write(self, out: list[bytes]) -> None:
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hold is not None and self in self._hold.kept:  # its replies have nowhere to go
            self._hold.count -= len(self._hold.kept.pop(self))


class ControlProtocol(asyncio.Protocol):
    """``--hold``'s control connection: ``hold``, ``count``, ``release``, one per line."""

    def __init__(self, hold: Hold) -> None:
        self._hold = hold
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            command = line.strip().decode()
            if command == "hold":
                self._hold.on = True
                answer = "holding"
            elif command == "count":
                answer = str(self._hold.count)
            elif command == "release":
                answer = str(self._hold.release())
            else:
                answer = f"unknown command {command!r}"
            assert self._transport is not None
            self._transport.write(answer.encode() + b"\n")


async def serve(protocol: str, port: int, max_seconds: float, hold: bool = False) -> None:
    loop = asyncio.get_running_loop()
    replies = _ThriftReplies()
    held = Hold() if hold else None
    server = await loop.create_server(
        lambda: ResponderProtocol(protocol, replies, held), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    if held is not None:
        control = await loop.create_server(lambda: ControlProtocol(held), "127.0.0.1", 0)
        print(f"CONTROL {control.sockets[0].getsockname()[1]}", flush=True)
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    server.close()


def install_event_loop() -> str:
    """Use uvloop when it is installed; return the loop's name for reports."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["thrift", "dubbo"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    parser.add_argument("--hold", action="store_true", help="add the hold/release control port")
    args = parser.parse_args(argv)
    install_event_loop()
    asyncio.run(serve(args.protocol, args.port, args.max_seconds, args.hold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
