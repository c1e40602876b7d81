"""A pathological regex route with real clients: no input stalls the proxy.

``metamesh proxy --config`` serves a Thrift listener whose first MetaRouter route matches the
method with ``(a+)+$`` (catastrophic for a backtracking engine: with Python's ``re`` the method
``'a' * 28 + '!'`` took 6 s and doubled per character, stopping all traffic meanwhile), then a
catch-all route; both go to a real Apache Thrift server. Two Apache Thrift clients call ``echo``
all along while raw framed calls with the hostile method (and with ``'a' * 28``, which the route
matches) arrive on their own connections, several at once.

Exact outcome: every good call answered right within the clients' normal 20 s timeout (no
timing assertion beyond that: under a backtracking engine the hostile calls, matched one after
the other on the proxy's loop, would hold the good ones far past it); each hostile call answered
by the server's own ``TApplicationException`` for an unknown method, routed by the catch-all
(no match) or the regex route (``'a' * 28``); ``istio_requests_total`` counts them all.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import types
from contextlib import ExitStack
from pathlib import Path

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from tests.chaos.traffic import (
    OK,
    Caller,
    ServerProcess,
    ThriftPeer,
    cluster_yaml,
    kinds,
    listener_yaml,
    metric,
    scrape,
)
from tests.e2e.mesh import Metamesh, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.interop]

EVIL = "a" * 28 + "!"  # 2**28 steps for a backtracking (a+)+$
MATCHING = "a" * 28
HOSTILE_CALLS = 6  # at ~6 s each under Python's re: ~36 s, past the clients' 20 s timeout


def config(port: int, upstream: int) -> str:
    route = (
        "{name: evil, match: {metadata: [{name: method, safe_regex_match: {regex: '(a+)+$'}}]}, "
        "route: {cluster: calc}}"
    )
    return (
        f"static_resources:\n  listeners:{listener_yaml('calc', 'thrift', port)}\n"
        f"  clusters:{cluster_yaml('calc', upstream)}\n"
        f"  route_configs:\n  - name: calc\n    routes:\n    - {route}\n"
        "    - {name: all, route: {cluster: calc}}\n"
    )


def raw_call(method: str, seqid: int) -> bytes:
    """A framed strict-binary call of ``method`` with no arguments."""
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.writeMessageBegin(method, TMessageType.CALL, seqid)
    proto.writeStructBegin("args")
    proto.writeFieldStop()
    proto.writeStructEnd()
    proto.writeMessageEnd()
    body: bytes = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def answer(port: int, method: str, seqid: int, out: list[tuple[str, int, int, int]]) -> None:
    """Send one hostile call, read its reply: (method, message type, seqid, exception type)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw_call(method, seqid))
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack_from(">i", data)[0]:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer to {method!r}"
            data += chunk
    proto = TBinaryProtocol(TMemoryBuffer(data[4:]))
    name, mtype, rseq = proto.readMessageBegin()
    error = TApplicationException()
    error.read(proto)
    out.append((name, mtype, rseq, error.type))


def test_a_pathological_regex_route_stalls_nobody(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    stop = threading.Event()
    with ExitStack() as stack:
        server = stack.enter_context(ServerProcess.thrift(calc_gen, "t"))
        path = tmp_path / "proxy.yaml"
        path.write_text(config(port, server.port))
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--config", str(path),
                     "--admin-port", str(admin))
        )  # fmt: skip
        wait_until(lambda: "admin on" in proxy.stderr(), "the proxy to start", 20)
        callers = [
            Caller(f"thrift{i}", ThriftPeer(calc_gen, "127.0.0.1", port), stop) for i in range(2)
        ]
        for c in callers:
            c.start()
        answers: list[tuple[str, int, int, int]] = []
        try:
            for c in callers:
                assert c.started_calling.wait(10)
            hostile = [
                threading.Thread(target=answer, args=(port, method, i, answers))
                for i, method in enumerate([EVIL] * HOSTILE_CALLS + [MATCHING] * 2)
            ]
            for t in hostile:
                t.start()
            for t in hostile:
                t.join(30)
            time.sleep(0.5)  # good traffic after them too
        finally:
            stop.set()
        calls = [call for c in callers for call in c.finish()]
        stats = scrape(f"127.0.0.1:{admin}")
        for c in callers:
            c.peer.close()

    tally = kinds(calls)
    assert tally[OK] == len(calls), [c for c in calls if c.kind != OK][:5]
    unknown = TApplicationException.UNKNOWN_METHOD
    assert sorted(answers) == sorted(
        (method, TMessageType.EXCEPTION, i, unknown)
        for i, method in enumerate([EVIL] * HOSTILE_CALLS + [MATCHING] * 2)
    )
    assert metric(stats, "istio_requests_total") == len(calls) + HOSTILE_CALLS + 2
