"""The DNS responder's sockets: UDP and TCP on ``127.0.0.1:15053``, forwarding the rest.

Each query goes to :func:`~metamesh.runtime.dnsproxy.table.answer` with the name table of the
config snapshot in force (rebuilt when the snapshot changes, so a new ServiceEntry resolves
as soon as its listener exists). Mesh names are answered at once. Other names are relayed
unchanged to the workload's own nameservers (``nameserver`` lines of ``/etc/resolv.conf``
read at start, or ``--dns-upstream``), in order, each given :data:`FORWARD_TIMEOUT` seconds,
over the transport the query came on, from sockets carrying the proxy's mark so the
interception rules let them out; the first reply goes back as it came. No upstream answering
is SERVFAIL, no upstream configured is REFUSED. At most :data:`MAX_FORWARDS` forwards are in
flight; past that a query is dropped (counted) instead of queueing without bound.

TCP uses the two-byte length framing of RFC 7766; a length over
:data:`~metamesh.runtime.dnsproxy.table.MAX_QUERY` closes the connection (counted as oversized),
and a connection idle for :data:`TCP_IDLE` seconds is closed. Every outcome is counted by its
reason (``metamesh_dns_queries``); a failure inside this module is a counted
``internal_error`` for that query, never the end of the responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, cast

import dns.rcode
from prometheus_client.core import CounterMetricFamily, Metric

from metamesh.runtime.dnsproxy.table import HEADER, MAX_QUERY, NameTable, answer, error_reply
from metamesh.runtime.intercept import mark_socket

log = logging.getLogger("metamesh.dns")

FORWARD_TIMEOUT: Final = 2.0
MAX_FORWARDS: Final = 256
TCP_IDLE: Final = 10.0


def resolv_conf_nameservers(path: str | Path = "/etc/resolv.conf") -> tuple[tuple[str, int], ...]:
    """The ``nameserver`` addresses of a resolv.conf (port 53); none if it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return ()
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append((words[1].split("%", 1)[0], 53))
    return tuple(found)


class DnsResponder:
    """UDP + TCP DNS servers answering from ``table()`` (see the module docstring)."""

    def __init__(
        self,
        table: Callable[[], NameTable],
        *,
        host: str = "127.0.0.1",
        port: int = 15053,
        upstreams: tuple[tuple[str, int], ...] = (),
        mark: int | None = None,
    ) -> None:
        self.table = table
        self.host = host
        self.port = port
        self.upstreams = upstreams
        self.mark = mark
        self.queries: Counter[str] = Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        #: The same on ``[::1]`` (where the redirect sends IPv6 queries), when there is one.
        self._v6: list[asyncio.BaseTransport | asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients: set[asyncio.Transport] = set()

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (port 0: one the kernel picks, free for both)."""
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind()
                break
            except OSError:
                if attempt == attempts - 1:
                    raise
        if self.host == "127.0.0.1":
            await self._bind_v6()
        where = ", ".join(f"{h}:{p}" for h, p in self.upstreams) or "none (REFUSED)"
        log.info(
            "DNS responder on %s:%d (UDP, TCP); other names to %s", self.host, self.port, where
        )

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
        )
        port = udp.get_extra_info("sockname")[1]
        try:
            self._tcp = await loop.create_server(
                lambda: cast(asyncio.Protocol, _TcpProtocol(self)), self.host, port
            )
        except OSError:
            udp.close()
            raise
        self._udp, self.port = udp, port

    async def _bind_v6(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=("::1", self.port)
            )
            self._v6.append(udp)
            self._v6.append(
                await loop.create_server(
                    lambda: cast(asyncio.Protocol, _TcpProtocol(self)), "::1", self.port
                )
            )
        except OSError as exc:
            log.info("DNS responder: not on [::1]:%d (%s)", self.port, exc)

    async def stop(self) -> None:
        for v6 in self._v6:
            v6.close()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for client in list(self._tcp_clients):
            client.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one query -----------------------------------------------------------------------

    def handle(self, wire: bytes, send: Callable[[bytes], None], *, tcp: bool = False) -> None:
        """Answer ``wire`` through ``send`` now, or after forwarding it."""
        try:
            outcome = answer(wire, self.table(), tcp=tcp)
        except Exception:  # a per-query boundary: counted, logged, the responder goes on
            self.queries["internal_error"] += 1
            log.exception("DNS query of %d bytes", len(wire))
            if len(wire) >= HEADER:
                send(error_reply(wire, dns.rcode.SERVFAIL))
            return
        if not outcome.forward:
            self.queries[outcome.reason] += 1
            if outcome.reply is not None:
                send(outcome.reply)
            return
        if not self.upstreams:
            self.queries["refused"] += 1
            send(error_reply(wire, dns.rcode.REFUSED))
            return
        if len(self._tasks) >= MAX_FORWARDS:
            self.queries["overloaded"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._forward(wire, send, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, wire: bytes, send: Callable[[bytes], None], tcp: bool) -> None:
        for host, port in self.upstreams:
            try:
                exchange = _exchange_tcp if tcp else _exchange_udp
                reply = await asyncio.wait_for(
                    exchange(host, port, wire, self.mark), FORWARD_TIMEOUT
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("DNS forward to %s:%d: %s", host, port, exc)
                continue
            self.queries["forwarded"] += 1
            send(reply)
            return
        self.queries["forward_failed"] += 1
        send(error_reply(wire, dns.rcode.SERVFAIL))

    def metrics(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "metamesh_dns_queries", "DNS queries by outcome", labels=["result"]
        )
        for reason, n in sorted(self.queries.items()):
            family.add_metric([reason], n)
        yield family


def _socket(host: str, kind: int, mark: int | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if mark is not None:
            mark_socket(sock, mark)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _exchange_udp(host: str, port: int, wire: bytes, mark: int | None) -> bytes:
    loop = asyncio.get_running_loop()
    with _socket(host, socket.SOCK_DGRAM, mark) as sock:
        sock.connect((host, port))
        await loop.sock_sendall(sock, wire)
        while True:
            reply = await loop.sock_recv(sock, 65535)
            if len(reply) >= HEADER and reply[:2] == wire[:2]:  # the answer to this query
                return reply


async def _exchange_tcp(host: str, port: int, wire: bytes, mark: int | None) -> bytes:
    loop = asyncio.get_running_loop()
    sock = _socket(host, socket.SOCK_STREAM, mark)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)
    finally:
        writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        assert transport is not None

        def send(reply: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(reply, addr)

        self.responder.handle(data, send)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP socket: %s", exc)


class _TcpProtocol:
    """RFC 7766 framing: two-byte length, then the message; several queries per connection."""

    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.responder._tcp_clients.add(self.transport)
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        transport = self.transport
        if transport is not None:
            self._idle = asyncio.get_running_loop().call_later(TCP_IDLE, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if size > MAX_QUERY:
                self.responder.queries["oversized"] += 1
                if self.transport is not None:
                    self.transport.abort()
                return
            if len(self.buffer) < 2 + size:
                return
            wire = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            self.responder.handle(wire, self._send, tcp=True)

    def _send(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(struct.pack("!H", len(reply)) + reply)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        with contextlib.suppress(KeyError):
            if self.transport is not None:
                self.responder._tcp_clients.remove(self.transport)
        self.transport = None
