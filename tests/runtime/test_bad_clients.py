"""Misbehaving clients next to well-behaved ones, through the real proxy to a real Thrift server.

* Garbage, an oversized frame and a truncated frame (half a request, then EOF) each get their
  connection closed, a counter on ``/stats/prometheus`` and a log line, while real Apache
  clients on other connections keep calling successfully at the same time.
* Half-close: a client that sends its calls and then ends its sending side gets every reply
  before the proxy closes the connection (Aeraki's proxy aborts them).
* Idle clients: with the listener's ``idle_timeout``, a client that stops calling is closed
  (and counted) while an Apache client calling all along keeps its connection.
* Flow control: a client that sends large requests and never reads its replies gets its reads
  paused once the proxy's write buffer towards it passes the high-water mark, so the proxy
  stops taking its requests (no unbounded buffering: the client's own sends stall), while
  another client on the same listener and upstream connection is served as usual; when the
  stuck client finally reads, it gets every reply.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import types
from contextlib import ExitStack
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from tests.codecs.thrift.apache_peer import connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.test_thrift_traffic import http_get, wait_until
from tests.runtime.thrift_servers import AnyClientServer, NamedCalc
from tests.support.prom import total

pytestmark = pytest.mark.interop

MAX_FRAME = 64 * 1024


def calc_mesh(
    stack: ExitStack, gen: types.ModuleType, idle_timeout: str | None = None, **proxy_options: Any
) -> tuple[ProxyThread, NamedCalc]:
    handler = NamedCalc(gen, "s")
    server = stack.enter_context(AnyClientServer(gen.Calc.Processor(handler)))
    snap = mc.snapshot(
        [mc.listener("calc", "thrift", "calc", MAX_FRAME, idle_timeout)],
        [mc.cluster("outbound|9090||calc.test", server.port)],
        {"calc": [mc.route("all", "outbound|9090||calc.test", method="~.*")]},
    )
    return stack.enter_context(ProxyThread(snap, **proxy_options)), handler


def echo_frame(gen: types.ModuleType, text: str, seqid: int = 1) -> bytes:
    """A framed strict-binary ``echo(text)`` call, built with Apache's own protocol."""
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.writeMessageBegin("echo", TMessageType.CALL, seqid)
    gen.Calc.echo_args(s=text).write(proto)
    proto.writeMessageEnd()
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def closed_by_proxy(sock: socket.socket) -> bool:
    """True once the proxy closed ``sock`` (EOF or reset), reading at most 10 s."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def read_replies(gen: types.ModuleType, data: bytes) -> list[tuple[str, int, str]]:
    """(method, seqid, result) of every framed ``echo`` reply in ``data``, read with Apache's
    own protocol."""
    out = []
    while data:
        (size,) = struct.unpack_from(">i", data)
        proto = TBinaryProtocol(TMemoryBuffer(data[4 : 4 + size]))
        name, mtype, seqid = proto.readMessageBegin()
        assert mtype == TMessageType.REPLY
        result = gen.Calc.echo_result()
        result.read(proto)
        out.append((name, seqid, result.success))
        data = data[4 + size :]
    return out


def test_a_half_closed_client_gets_its_replies_then_the_close(
    calc_gen: types.ModuleType,
) -> None:
    with ExitStack() as stack:
        proxy, handler = calc_mesh(stack, calc_gen, admin_port=0)
        handler.release.clear()  # the server holds every echo: the EOF comes first
        with socket.create_connection(("127.0.0.1", proxy.port("calc"))) as sock:
            sock.sendall(echo_frame(calc_gen, "first", 1) + echo_frame(calc_gen, "second", 2))
            sock.shutdown(socket.SHUT_WR)
            wait_until(
                lambda: proxy.call(lambda: proxy.server.core.stats.downstream_half_closed) == 1,
                "the proxy to see the client's EOF with both calls in flight",
            )
            handler.release.set()
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(65536):  # every reply, then the proxy's close
                data += chunk
        assert read_replies(calc_gen, data) == [("echo", 1, "s:first"), ("echo", 2, "s:second")]
        assert proxy.server is not None
        admin = proxy.server.bound_admin_port
        assert admin is not None
        wait_until(
            lambda: proxy.call(lambda: proxy.server.core.stats.active_downstream_connections) == 0,
            "the proxy to forget the connection",
        )
        status, metrics = http_get(admin, "/stats/prometheus")
        assert status == 200
        assert "metamesh_downstream_half_closed_total 1.0" in metrics


def test_an_idle_client_is_closed_and_a_busy_one_is_not(calc_gen: types.ModuleType) -> None:
    with ExitStack() as stack:
        proxy, _ = calc_mesh(stack, calc_gen, idle_timeout="1s", admin_port=0)
        port = proxy.port("calc")
        busy = stack.enter_context(connect(calc_gen.Calc, "framed", "binary", port))
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(echo_frame(calc_gen, "once", 7))
            idle.settimeout(10)
            data = b""
            while not read_replies_complete(data):
                data += idle.recv(65536)
            assert read_replies(calc_gen, data) == [("echo", 7, "s:once")]
            calls = 0
            deadline = time.monotonic() + 30
            while proxy.call(lambda: proxy.server.core.stats.downstream_idle_timeouts) == 0:
                assert time.monotonic() < deadline, "the idle client was never closed"
                client: Any = busy.client  # calls every 50 ms: never idle for 1 s
                assert client.echo(f"busy {calls}") == f"s:busy {calls}"
                calls += 1
                time.sleep(0.05)
            assert closed_by_proxy(idle)  # EOF: the proxy closed the idle one
        for _ in range(5):  # the busy client's connection is still the same one
            assert busy.client.echo("still") == "s:still"
        assert calls > 0
        assert proxy.server is not None
        admin = proxy.server.bound_admin_port
        assert admin is not None
        status, metrics = http_get(admin, "/stats/prometheus")
        assert status == 200
        assert "metamesh_downstream_idle_timeouts_total 1.0" in metrics


def read_replies_complete(data: bytes) -> bool:
    """Whether ``data`` holds at least one whole framed message."""
    return len(data) >= 4 and len(data) >= 4 + struct.unpack_from(">i", data)[0]


# -- garbage, oversized and truncated frames --------------------------------------------------

GARBAGE = b"\x00\x00\x00\x10" + b"\xff" * 28  # a length, then no Thrift message at all
OVERSIZED = struct.pack(">i", 1 << 20) + b"\x80\x01\x00\x01"  # declares a 1 MiB frame


def test_bad_frames_close_only_their_connection(
    calc_gen: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metamesh.proxy")
    rounds = 10
    with ExitStack() as stack:
        proxy, _ = calc_mesh(stack, calc_gen, admin_port=0)
        port = proxy.port("calc")
        bad_done = threading.Event()
        good_calls: list[int] = []
        errors: list[BaseException] = []

        def good_client(i: int) -> None:
            try:
                with connect(calc_gen.Calc, "framed", "binary", port) as peer:
                    c: Any = peer.client
                    k = 0
                    while not bad_done.is_set() or k < 20:
                        assert c.echo(f"good {i} call {k}") == f"s:good {i} call {k}"
                        k += 1
                    good_calls.append(k)
            except BaseException as e:
                errors.append(e)

        good = [threading.Thread(target=good_client, args=(i,)) for i in range(3)]
        for t in good:
            t.start()
        truncated = echo_frame(calc_gen, "never finished")[:20]
        for _ in range(rounds):
            for payload, half_close in ((GARBAGE, False), (OVERSIZED, False), (truncated, True)):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(payload)
                    if half_close:
                        sock.shutdown(socket.SHUT_WR)  # EOF in the middle of a frame
                    assert closed_by_proxy(sock)
        bad_done.set()
        for t in good:
            t.join(60)
        assert errors == [] and len(good_calls) == 3

        assert proxy.server is not None
        admin = proxy.server.bound_admin_port
        assert admin is not None
        wait_until(
            lambda: proxy.call(lambda: proxy.server.core.stats.downstream_truncated) == rounds,
            "the proxy to see every truncated client close",
        )
        status, metrics = http_get(admin, "/stats/prometheus")
        assert status == 200
        assert f"metamesh_downstream_decode_errors_total {rounds}.0" in metrics
        assert f"metamesh_downstream_frame_too_large_total {rounds}.0" in metrics
        assert f"metamesh_downstream_truncated_frames_total {rounds}.0" in metrics
        good_total = sum(good_calls)
        calc = {"destination_service": "calc.test", "destination_version": "unknown"}
        ok = {"reporter": "source", "request_protocol": "thrift", "response_code": "0"}
        assert total(metrics, "istio_requests_total", **calc, **ok) == good_total
    messages = [r.getMessage() for r in caplog.records if r.name == "metamesh.proxy"]
    assert sum("cannot detect transport" in m for m in messages) == rounds
    assert sum(f"exceeds the {MAX_FRAME} limit" in m for m in messages) == rounds
    assert sum("closed mid-frame (20 bytes)" in m for m in messages) == rounds


# -- flow control -----------------------------------------------------------------------------

HIGH_WATER = 64 * 1024


class StuckClient:
    """Sends ``echo`` calls on a raw socket and reads nothing until told to drain."""

    def __init__(self, port: int, frame: bytes, max_frames: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.connect(("127.0.0.1", port))
        self.local_port: int = self.sock.getsockname()[1]
        self.frame = frame
        self.max_frames = max_frames
        self.sent_bytes = 0
        self.stalled = threading.Event()  # no byte accepted for 2 s in a row
        self.finish = threading.Event()
        self.frames_sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        try:
            self._send_frames()
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.stalled.set()

    def _send_frames(self) -> None:
        stream = memoryview(self.frame)
        size = len(self.frame)
        total = size * self.max_frames
        self.sock.settimeout(0.25)
        idle = 0
        while self.sent_bytes < total and not self.finish.is_set():
            offset = self.sent_bytes % size
            try:
                self.sent_bytes += self.sock.send(stream[offset:])
                idle = 0
            except TimeoutError:
                idle += 1
                if idle >= 8:
                    self.stalled.set()
        # Complete the frame in progress so every request sent gets a reply.
        self.sock.settimeout(30)
        rest = (-self.sent_bytes) % size
        if rest:
            self.sock.sendall(stream[size - rest :])
            self.sent_bytes += rest
        self.frames_sent = self.sent_bytes // size

    def drain(self) -> list[bytes]:
        """Read replies until every request sent (the last frame completed) is answered.

        Returns the first 20 bytes of each reply frame.
        """
        self.finish.set()
        buf = bytearray()
        replies: list[bytes] = []
        while True:
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">i", buf)[0]:
                n = 4 + struct.unpack_from(">i", buf)[0]
                replies.append(bytes(buf[:20]))
                del buf[:n]
            if not self.thread.is_alive() and len(replies) >= self.frames_sent:
                assert self.error is None
                return replies
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            assert data, "proxy closed the stuck client"
            buf += data


def test_client_that_never_reads_is_paused_and_others_are_unaffected(
    calc_gen: types.ModuleType,
) -> None:
    payload = "x" * (48 * 1024)  # under the listener's 64 KiB max_frame_size
    frame = echo_frame(calc_gen, payload, seqid=77)
    max_frames = 1200  # ~59 MB: far more than the kernel and the proxy may buffer between them
    with ExitStack() as stack:
        proxy, handler = calc_mesh(
            stack, calc_gen, high_water=HIGH_WATER, low_water=HIGH_WATER // 4
        )
        server = proxy.server
        assert server is not None
        stuck = StuckClient(proxy.port("calc"), frame, max_frames)
        try:
            assert stuck.stalled.wait(60), "the stuck client never stalled"
            assert stuck.error is None

            def stuck_side() -> tuple[bool, int]:
                [reader] = [
                    r
                    for r in server.readers
                    if r.conn is not None and r.conn.peer.endswith(f":{stuck.local_port}")
                ]
                assert reader.transport is not None
                return reader.paused_by_self, reader.transport.get_write_buffer_size()

            paused, buffered = proxy.call(stuck_side)
            served_while_stuck = len(handler.echoes())
            assert paused, "the proxy kept reading a client that does not read"
            assert stuck.sent_bytes < len(frame) * max_frames // 2
            assert served_while_stuck < max_frames // 2
            # What the proxy holds for the client is bounded by what it took in before the
            # pause, not by what the client tried to send.
            assert buffered < 16 * 1024 * 1024

            # Another client on the same listener and upstream connection is served normally.
            with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
                c: Any = peer.client
                for k in range(20):
                    assert c.echo(f"other {k}") == f"s:other {k}"
            assert proxy.call(stuck_side)[0], "the stuck client was resumed without reading"

            # Once it reads, the stuck client gets a reply to every request it sent.
            replies = stuck.drain()
            assert len(replies) == stuck.frames_sent >= served_while_stuck
            reply_version = struct.pack(">I", 0x80010002)  # strict binary, REPLY
            assert all(r[4:8] == reply_version and r[8:16] == b"\0\0\0\x04echo" for r in replies)
            assert all(struct.unpack_from(">i", r, 16)[0] == 77 for r in replies)
        finally:
            stuck.finish.set()
            stuck.sock.close()
