"""The DNS responder on real sockets (127.0.0.1): dnspython as the client, a real dnsmasq as
the upstream nameserver other names are forwarded to.

Covers UDP and TCP answers for mesh names, forwarding over each transport, REFUSED with no
upstream, SERVFAIL when the upstream does not answer, and bad input (garbage, short,
oversized, responses sent as queries, an oversized TCP length) answered FORMERR or dropped,
each counted, with the responder still answering afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from metamesh.proxy.config import Listener, Snapshot
from metamesh.runtime.dnsproxy.responder import DnsResponder, resolv_conf_nameservers
from metamesh.runtime.dnsproxy.table import MAX_QUERY, NameTable
from tests.support.ports import free_port

TABLE = NameTable.from_snapshot(
    Snapshot.build(
        [Listener("a", "198.18.10.10", 9090, "thrift", "r", "outbound|9090||calc.mesh.test")],
        [],
        [],
    )
)
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[int]:
    """A real dnsmasq on 127.0.0.1 that knows one name (and nothing else: no resolv.conf)."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (scripts/setup.sh installs dnsmasq-base)")
    port = free_port()
    proc = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--pid-file=",
         "--user=root", "--address=/upstream.test/192.0.2.7"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_udp(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_udp(port: int) -> None:
    query = dns.message.make_query("upstream.test", "A").to_wire()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            s.sendto(query, ("127.0.0.1", port))
            try:
                s.recv(512)
                return
            except OSError:
                continue
    raise AssertionError("dnsmasq did not start")


async def started(upstreams: tuple[tuple[str, int], ...]) -> DnsResponder:
    responder = DnsResponder(lambda: TABLE, port=0, upstreams=upstreams)
    await responder.start()
    return responder


def with_responder(
    upstreams: tuple[tuple[str, int], ...], test: Callable[[DnsResponder], Awaitable[None]]
) -> None:
    """Run ``test`` against a started responder on a fresh event loop (no async plugin here)."""

    async def main() -> None:
        r = await started(upstreams)
        try:
            await test(r)
        finally:
            await r.stop()

    asyncio.run(main())


def values(reply: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in reply.answer for r in rrset]


def test_mesh_names_over_udp_and_tcp(dnsmasq: int) -> None:
    with_responder((("127.0.0.1", dnsmasq),), mesh_names)


async def mesh_names(responder: DnsResponder) -> None:
    query = dns.message.make_query("calc.mesh.test", "A")
    udp = await dns.asyncquery.udp(query, "127.0.0.1", port=responder.port, timeout=2)
    tcp = await dns.asyncquery.tcp(query, "127.0.0.1", port=responder.port, timeout=2)
    assert values(udp) == values(tcp) == ["198.18.10.10"]
    assert responder.queries["mesh"] == 2


def test_other_names_go_to_the_upstream_over_the_same_transport(dnsmasq: int) -> None:
    with_responder((("127.0.0.1", dnsmasq),), forwarded)


async def forwarded(responder: DnsResponder) -> None:
    query = dns.message.make_query("upstream.test", "A")
    udp = await dns.asyncquery.udp(query, "127.0.0.1", port=responder.port, timeout=5)
    tcp = await dns.asyncquery.tcp(query, "127.0.0.1", port=responder.port, timeout=5)
    assert values(udp) == values(tcp) == ["192.0.2.7"]
    unknown = await dns.asyncquery.udp(
        dns.message.make_query("nowhere.test", "A"), "127.0.0.1", port=responder.port, timeout=5
    )
    assert unknown.rcode() == dns.rcode.REFUSED  # dnsmasq's own answer, relayed as it came
    assert responder.queries["forwarded"] == 3


@pytest.mark.parametrize("dead", [False, True], ids=["no-upstream", "dead-upstream"])
def test_no_upstream_is_refused_and_a_dead_one_servfail(dead: bool) -> None:
    query = dns.message.make_query("upstream.test", "A")
    rcode, reason = (
        (dns.rcode.SERVFAIL, "forward_failed") if dead else (dns.rcode.REFUSED, "refused")
    )

    async def check(r: DnsResponder) -> None:
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=r.port, timeout=5)
        assert reply.rcode() == rcode and reply.id == query.id
        assert r.queries[reason] == 1

    with_responder((("127.0.0.1", free_port()),) if dead else (), check)


async def exchange_raw(port: int, wire: bytes, timeout: float = 0.3) -> bytes | None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        await loop.sock_sendall(s, wire)
        try:
            return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)
        except TimeoutError:
            return None


def test_bad_input_is_answered_formerr_or_dropped_and_counted() -> None:
    with_responder((), bad_input)


async def bad_input(responder: DnsResponder) -> None:
    port = responder.port
    head = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    formerr = await exchange_raw(port, head + b"\x3fnot a name")
    assert formerr is not None
    reply = dns.message.from_wire(formerr)
    assert reply.id == 0xBEEF and reply.rcode() == dns.rcode.FORMERR
    assert await exchange_raw(port, b"\x01\x02\x03") is None
    assert await exchange_raw(port, head + bytes(MAX_QUERY)) is None
    assert await exchange_raw(port, b"\xbe\xef\x81\x80" + head[4:]) is None  # a response
    # TCP: a length over the limit closes the connection
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((MAX_QUERY + 1).to_bytes(2, "big") + bytes(MAX_QUERY + 1))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert dict(responder.queries) == {
        "formerr": 1, "short": 1, "oversized": 2, "not_a_query": 1,
    }  # fmt: skip
    good = await dns.asyncquery.udp(
        dns.message.make_query("calc.mesh.test", "A"), "127.0.0.1", port=port, timeout=2
    )
    assert values(good) == ["198.18.10.10"]
    metrics = {tuple(m.labels.values()): m.value for f in responder.metrics() for m in f.samples}
    assert metrics[("formerr",)] == 1 and metrics[("mesh",)] == 1


def test_resolv_conf_nameservers(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch demo.svc\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n")
    assert resolv_conf_nameservers(path) == (("10.0.0.2", 53), ("fe80::1", 53))
    assert resolv_conf_nameservers(tmp_path / "missing") == ()
