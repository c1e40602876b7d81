"""Hostile clients beside good ones, through ``metamesh proxy --config --frame-timeout 2``.

One proxy serves a Thrift listener (real Apache server, its own process) and a Dubbo listener
(dubbo-py provider, its own process). Two Apache Thrift clients and two dubbo-py consumers call
all along while, on both listeners:

* 500 idle connections (250 each) are opened first and held to the end;
* garbage: bytes that are no frame of the protocol;
* a frame header announcing 2 GB (2**31 - 1 bytes);
* slow-loris: a frame announcing 1 MiB (within the limit) trickled one byte every 0.25 s,
  so never complete; the frame timeout (2 s here, 30 s by default) closes it, though bytes
  keep coming;
* half-closes with requests in flight: two requests the server takes 0.2 s over, then the
  client's FIN at once; both replies must arrive before the proxy's close.

Exact counts: every good call answered right (none lost, none wrong, none hung); the proxy's
``istio_requests_total`` per protocol is exactly the good calls plus the half-closed clients'
requests, all with response code 0; each attack is counted exactly once per connection
(decode errors, frames too large, frame timeouts, half-closes); no local reply; the 500
idle clients are still connected at the end.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import types
from contextlib import ExitStack
from pathlib import Path

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from tests.chaos.traffic import (
    IFACE,
    OK,
    Caller,
    DubboPeer,
    ServerProcess,
    ThriftPeer,
    kinds,
    metric,
    peer_closed,
    scrape,
    static_config,
)
from tests.codecs.dubbo import frames as dubbo_frames
from tests.e2e.mesh import Metamesh, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.interop]

IDLE_PER_LISTENER = 250
GARBAGE_PER_LISTENER = 10
HUGE_PER_LISTENER = 10
SLOWLORIS_PER_LISTENER = 3
HALF_CLOSED_PER_LISTENER = 3
FRAME_TIMEOUT = 2.0
TRICKLE_EVERY = 0.25

TWO_GB = 2**31 - 1
MIB = 1 << 20  # what a slow-loris frame announces: within the limit, never complete
GARBAGE = {
    # neither a Thrift frame (a 16-byte one would start with a message header) nor an
    # unframed message (a 16-byte name, then field type 0xff); note that 28 bytes after
    # 0x0000001c would be a valid start of a non-strict unframed message with a 28-byte name,
    # which only the frame timeout can end
    "thrift": b"\x00\x00\x00\x10" + b"\xff" * 28,
    # no Dubbo magic
    "dubbo": b"\xde\xad\xbe\xef" + b"\x00" * 28,
}
HUGE = {
    "thrift": struct.pack(">i", TWO_GB) + b"\x80\x01\x00\x01",  # framed strict binary
    "dubbo": struct.pack(">HBBQI", 0xDABB, 0xC2, 0, 1, TWO_GB),
}


def thrift_echo(gen: types.ModuleType, text: str, seqid: int) -> bytes:
    """A framed strict-binary ``echo(text)`` call, written by Apache's own protocol."""
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.writeMessageBegin("echo", TMessageType.CALL, seqid)
    gen.Calc.echo_args(s=text).write(proto)
    proto.writeMessageEnd()
    body = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def thrift_answers(gen: types.ModuleType, data: bytes) -> list[tuple[int, str]]:
    """(seqid, result) of every framed ``echo`` reply in ``data``, read by Apache's protocol."""
    out = []
    while data:
        (size,) = struct.unpack_from(">i", data)
        proto = TBinaryProtocol(TMemoryBuffer(data[4 : 4 + size]))
        _, mtype, seqid = proto.readMessageBegin()
        assert mtype == TMessageType.REPLY
        result = gen.Calc.echo_result()
        result.read(proto)
        out.append((seqid, result.success))
        data = data[4 + size :]
    return out


def dubbo_echo(text: str, request_id: int) -> bytes:
    return dubbo_frames.request(
        request_id, method="echo", args=(text,), attachments={"path": IFACE}
    )


def dubbo_answers(data: bytes) -> list[tuple[int, str]]:
    """(id, value) of every Dubbo response in ``data``, read by dubbo-py's decoder."""
    from dubbo.codec.hessian2 import Decoder

    stream = io.BytesIO(data)
    out = []
    while stream.tell() < len(data):
        answer = Decoder(stream).decode()
        assert answer.status == 20, (answer.status, answer.error)
        out.append((answer.id, answer.data))
    return out


def read_to_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the proxy sends until it closes ``sock``; fails if it never does."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def slowloris(port: int, first: bytes, closed_after: list[float]) -> None:
    """Trickle ``first`` (a frame announcing 1 MiB) then filler, one byte every
    :data:`TRICKLE_EVERY`; record when the proxy closed us."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        stream = first + b"\x00" * 10_000
        start = time.monotonic()
        for byte in stream:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(TRICKLE_EVERY)
            if peer_closed(sock):
                break
            assert time.monotonic() - start < 30, "the slow-loris was never closed"
        closed_after.append(time.monotonic() - start)


def half_close(port: int, requests: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(requests)
        sock.shutdown(socket.SHUT_WR)  # the requests are in flight: the server takes 0.2 s
        return read_to_close(sock)


def test_hostile_clients_beside_good_traffic(calc_gen: types.ModuleType, tmp_path: Path) -> None:
    ports = {"thrift": free_port(), "dubbo": free_port()}
    admin = free_port()
    stop = threading.Event()
    idle: list[socket.socket] = []
    with ExitStack() as stack:
        thrift = stack.enter_context(ServerProcess.thrift(calc_gen, "t"))
        dubbo = stack.enter_context(ServerProcess.dubbo("d"))
        config = tmp_path / "proxy.yaml"
        config.write_text(
            static_config(
                {
                    "calc": ("thrift", ports["thrift"], thrift.port),
                    "demo": ("dubbo", ports["dubbo"], dubbo.port),
                }
            )
        )
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--config", str(config),
                     "--admin-port", str(admin), "--frame-timeout", str(FRAME_TIMEOUT))
        )  # fmt: skip
        wait_until(lambda: "admin on" in proxy.stderr(), "the proxy to start", 20)
        for port in ports.values():
            for _ in range(IDLE_PER_LISTENER):
                idle.append(socket.create_connection(("127.0.0.1", port)))
                stack.callback(idle[-1].close)

        callers = [
            Caller(f"thrift{i}", ThriftPeer(calc_gen, "127.0.0.1", ports["thrift"]), stop)
            for i in range(2)
        ] + [Caller(f"dubbo{i}", DubboPeer("127.0.0.1", ports["dubbo"]), stop) for i in range(2)]
        for c in callers:
            c.start()
        closed_after: list[float] = []
        lorises = [
            threading.Thread(target=slowloris, args=(ports[p], first, closed_after))
            for p, first in (
                ("thrift", struct.pack(">i", MIB) + thrift_echo(calc_gen, "never finished", 1)[4:]),
                ("dubbo", dubbo_echo("never finished", 1)[:12] + struct.pack(">I", MIB)),
            )
            for _ in range(SLOWLORIS_PER_LISTENER)
        ]
        try:
            for t in lorises:
                t.start()
            for protocol, port in ports.items():
                for payloads, count in ((GARBAGE, GARBAGE_PER_LISTENER), (HUGE, HUGE_PER_LISTENER)):
                    for _ in range(count):
                        with socket.create_connection(("127.0.0.1", port)) as sock:
                            sock.sendall(payloads[protocol])
                            assert read_to_close(sock) == b""
            half_closed: dict[str, list[list[tuple[int, str]]]] = {"thrift": [], "dubbo": []}
            for i in range(HALF_CLOSED_PER_LISTENER):
                texts = [f"slow:0.2:hc{i}-1", f"slow:0.2:hc{i}-2"]
                data = half_close(
                    ports["thrift"],
                    b"".join(thrift_echo(calc_gen, t, k) for k, t in enumerate(texts)),
                )
                half_closed["thrift"].append(thrift_answers(calc_gen, data))
                data = half_close(
                    ports["dubbo"], b"".join(dubbo_echo(t, k + 7) for k, t in enumerate(texts))
                )
                half_closed["dubbo"].append(dubbo_answers(data))
            for t in lorises:
                t.join(30)
            time.sleep(0.5)  # good traffic after every attack too
        finally:
            stop.set()
        calls = []
        for c in callers:
            calls += c.finish()
        still_open = sum(not peer_closed(sock) for sock in idle)
        stats = scrape(f"127.0.0.1:{admin}")
        for c in callers:
            c.peer.close()

    tally = kinds(calls)
    assert tally[OK] == len(calls), [c for c in calls if c.kind != OK][:5]
    for i in range(HALF_CLOSED_PER_LISTENER):
        texts = [f"slow:0.2:hc{i}-1", f"slow:0.2:hc{i}-2"]
        assert half_closed["thrift"][i] == [(k, f"t:{t}") for k, t in enumerate(texts)]
        assert half_closed["dubbo"][i] == [(k + 7, f"d:{t}") for k, t in enumerate(texts)]
    assert len(closed_after) == 2 * SLOWLORIS_PER_LISTENER
    assert all(FRAME_TIMEOUT <= t < FRAME_TIMEOUT + 2.0 for t in closed_after), closed_after
    assert still_open == 2 * IDLE_PER_LISTENER

    for protocol, server in (("thrift", "t"), ("dubbo", "d")):
        good = sum(1 for c in calls if c.caller.startswith(protocol))
        assert {c.served_by for c in calls if c.caller.startswith(protocol)} == {server}
        expected = good + 2 * HALF_CLOSED_PER_LISTENER
        assert metric(stats, "istio_requests_total", request_protocol=protocol) == expected
        assert (
            metric(stats, "istio_requests_total", request_protocol=protocol, response_code="0")
            == expected
        )
    assert metric(stats, "metamesh_downstream_decode_errors_total") == 2 * GARBAGE_PER_LISTENER
    assert metric(stats, "metamesh_downstream_frame_too_large_total") == 2 * HUGE_PER_LISTENER
    assert metric(stats, "metamesh_downstream_frame_timeouts_total") == 2 * SLOWLORIS_PER_LISTENER
    assert metric(stats, "metamesh_downstream_half_closed_total") == 2 * HALF_CLOSED_PER_LISTENER
    assert metric(stats, "metamesh_local_replies_total") == 0
    print(
        f"hostile clients: {len(calls)} good calls answered right beside "
        f"{2 * IDLE_PER_LISTENER} idle clients; slow-loris closed after "
        f"{min(closed_after):.2f}-{max(closed_after):.2f} s"
    )
