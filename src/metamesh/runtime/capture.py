"""The capture ports of ``--intercept``: original destination in, listener (or pass-through) out.

:class:`Interceptor` binds the two capture ports (outbound ``127.0.0.1:15001``, inbound
``0.0.0.0:15006``, and ``[::1]:15001``, ``[::]:15006`` where the namespace has IPv6), then
installs the nftables rules (:mod:`metamesh.runtime.intercept`) that send the workload's
traffic there, and removes them first thing when the proxy stops.

Per accepted connection (:class:`CaptureProtocol`), the runtime reads where the client was
going with ``getsockopt(SO_ORIGINAL_DST)`` (the address conntrack recorded before the
redirect) and hands it to the sans-IO :class:`~metamesh.proxy.original_dst.ListenerIndex`:

* a listener's ``(address, port)`` (the ServiceEntry VIP:port; on the inbound side the
  workload's address:port): the transport is given to that listener's usual adapter
  (``transport.set_protocol``; TLS listeners get their TLS layer first), exactly as if it had
  been accepted on the listener's own socket;
* no listener, ``ALLOW_ANY`` (Istio's default ``outboundTrafficPolicy``; inbound always): a
  plain TCP relay (:class:`Passthrough`) to the original destination, opened with the proxy's
  socket mark so the rules let it through, with backpressure both ways (Istio's
  ``PassthroughCluster`` / ``InboundPassthroughCluster``);
* no listener, ``REGISTRY_ONLY``; or a connection that was not redirected at all (no original
  destination, or one equal to the capture socket itself: a client dialling the capture port,
  which would otherwise loop): closed, counted by reason, logged once per 10 s.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from metamesh.proxy.original_dst import ListenerIndex
from metamesh.runtime import intercept
from metamesh.runtime.intercept import InterceptSettings, marked_connection

if TYPE_CHECKING:
    from metamesh.proxy.config import Snapshot
    from metamesh.runtime.server import ProxyServer

log = logging.getLogger("metamesh.intercept")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
PASSTHROUGH_CONNECT_TIMEOUT = 10.0
PENDING_LIMIT = 256 * 1024  # bytes held for a relay whose upstream is still connecting
REFUSAL_LOG_EVERY = 10.0


def original_destination(sock: Any) -> tuple[str, int] | None:
    """Where an accepted connection was sent before the redirect; None if it was not
    redirected (no conntrack entry). IPv4: ``sockaddr_in`` at ``SOL_IP``; IPv6:
    ``sockaddr_in6`` at ``SOL_IPV6``."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    v6 = sock.family == socket.AF_INET6
    try:
        if v6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    if v6:
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return socket.inet_ntop(socket.AF_INET6, packed), port
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class Interceptor:
    """Capture ports + rules + pass-through relays of one proxy; see the module docstring."""

    def __init__(self, settings: InterceptSettings, *, install_rules: bool = True) -> None:
        self.settings = settings
        self.install_rules = install_rules
        self.rules_installed = False
        self.server: ProxyServer | None = None
        self._servers: list[asyncio.Server] = []
        self._index: tuple[Snapshot | None, ListenerIndex] = (None, ListenerIndex({}, {}))
        self.relays: set[Passthrough] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections handed to a listener, by listener name.
        self.matched: Counter[str] = Counter()
        self.passthrough = 0
        #: Connections closed, by reason (not_redirected, registry_only, passthrough_failed,
        #: draining, listener_error).
        self.refused: Counter[str] = Counter()
        self._logged_at = -1e9

    @property
    def mark(self) -> int:
        return self.settings.mark

    async def start(self, server: ProxyServer) -> None:
        """Bind the capture ports, then install the rules (traffic never meets a closed port)."""
        self.server = server
        loop = asyncio.get_running_loop()
        s = self.settings
        binds = [("127.0.0.1", "::1", s.outbound_port)]
        if s.inbound:
            binds.append(("0.0.0.0", "::", s.inbound_port))
        for v4, v6, port in binds:
            self._servers.append(await self._capture_server(loop, v4, port))
            try:  # IPv6 too, where the namespace has it
                self._servers.append(await self._capture_server(loop, v6, port))
            except OSError as exc:
                log.info("no IPv6 capture on [%s]:%d (%s): IPv6 is not intercepted", v6, port, exc)
        rules = "installed by this proxy"
        if self.install_rules:
            try:
                await asyncio.to_thread(intercept.install, s)
            except intercept.InterceptNotPermittedError as exc:
                self.install_rules = False  # a proxy without CAP_NET_ADMIN (an init step's rules)
                log.warning(
                    "%s; serving the capture ports for rules installed by an init step "
                    "('metamesh intercept', which must leave this proxy's user out: "
                    "--intercept-exclude-uid %d)",
                    exc,
                    os.geteuid(),
                )
            else:
                self.rules_installed = True
                atexit.register(self._remove_rules)  # an unhandled error: gone all the same
        if not self.install_rules:
            rules = "installed by someone else, left in place"
        log.info(
            "intercepting: outbound TCP -> 127.0.0.1:%d, inbound TCP -> :%s, DNS -> %s "
            "(nftables table inet %s %s; sockets marked %#x pass)",
            s.outbound_port,
            s.inbound_port if s.inbound else "(not captured)",
            f"127.0.0.1:{s.dns_port}" if s.dns_port is not None else "(not captured)",
            intercept.TABLE,
            rules,
            s.mark,
        )

    async def _capture_server(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> asyncio.Server:
        return await loop.create_server(
            lambda: cast(asyncio.Protocol, CaptureProtocol(self)), host, port, reuse_address=True
        )

    def release(self) -> None:
        """Remove the rules and stop accepting (the proxy is stopping). Idempotent."""
        self._remove_rules()
        for srv in self._servers:
            srv.close()

    def _remove_rules(self) -> None:
        if not self.rules_installed:
            return
        self.rules_installed = False
        atexit.unregister(self._remove_rules)
        try:
            intercept.remove()
            log.info("interception rules removed")
        except intercept.InterceptError as exc:
            log.error("%s; run 'metamesh intercept --cleanup'", exc)

    async def stop(self) -> None:
        self.release()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for relay in list(self.relays):
            relay.close()

    def listener_for(self, address: str, port: int) -> str | None:
        assert self.server is not None
        snapshot = self.server.core.snapshot
        built_for, index = self._index
        if built_for is not snapshot:
            index = ListenerIndex.build(snapshot.listeners)
            self._index = (snapshot, index)
        return index.pick(address, port)

    def accept(self, transport: asyncio.Transport) -> None:
        """Route one captured connection (called from :meth:`CaptureProtocol.connection_made`)."""
        server = self.server
        assert server is not None
        dst = original_destination(transport.get_extra_info("socket"))
        here = transport.get_extra_info("sockname")
        if dst is None or (here is not None and dst == (here[0], here[1])):
            self._refuse(transport, "not_redirected", f"to {here}: not redirected")
            return
        if server.draining:  # a connection that raced the removal of the rules
            self._refuse(transport, "draining", f"to {dst[0]}:{dst[1]}: the proxy is stopping")
            return
        name = self.listener_for(*dst)
        if name is not None:
            self.matched[name] += 1
            protocol = downstream_protocol(server, name)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        inbound = here is not None and here[1] == self.settings.inbound_port
        if not inbound and not self.settings.allow_any:
            self._refuse(transport, "registry_only", f"to {dst[0]}:{dst[1]}: no such service")
            return
        self.passthrough += 1
        relay = Passthrough(self, transport)
        self.relays.add(relay)
        task = asyncio.get_running_loop().create_task(relay.connect(*dst))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, transport: asyncio.Transport, reason: str, what: str) -> None:
        self.refused[reason] += 1
        transport.abort()
        now = asyncio.get_running_loop().time()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            self._logged_at = now
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items()))
            log.warning(
                "captured connection closed (%s) %s; so far: %s (logged once per %.0f s)",
                reason,
                what,
                counts,
                REFUSAL_LOG_EVERY,
            )

    def metrics(self) -> Iterator[Metric]:
        matched = CounterMetricFamily(
            "metamesh_intercept_connections",
            "Intercepted connections handed to a listener by original destination",
            labels=["listener"],
        )
        for name, n in sorted(self.matched.items()):
            matched.add_metric([name], n)
        yield matched
        yield CounterMetricFamily(
            "metamesh_intercept_passthrough",
            "Intercepted connections to no listener relayed as plain TCP",
            value=self.passthrough,
        )
        refused = CounterMetricFamily(
            "metamesh_intercept_refused",
            "Captured connections closed, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(self.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily(
            "metamesh_intercept_rules_installed",
            "1 while this proxy's nftables rules are in place",
            value=int(self.rules_installed),
        )


def downstream_protocol(server: ProxyServer, name: str) -> asyncio.Protocol:
    """The adapter a connection accepted for listener ``name`` gets (as ``ProxyServer._listen``
    builds it: TLS listeners get their TLS layer in front)."""
    from metamesh.runtime.protocols import DownstreamProtocol
    from metamesh.runtime.tls_protocols import TlsServerProtocol

    turn = server.turn
    assert turn is not None
    inner = DownstreamProtocol(server, turn, name)
    mode = server.core.listeners[name].config.tls_mode
    if mode:
        if server.tls is None:
            raise OSError(f"listener {name} asks for {mode} TLS but the proxy has no certificate")
        return cast(asyncio.Protocol, TlsServerProtocol(server.tls, mode, inner))
    return cast(asyncio.Protocol, inner)


class CaptureProtocol:
    """The protocol of a capture port's connections until :meth:`Interceptor.accept` replaces
    it (synchronously, inside ``connection_made``)."""

    def __init__(self, interceptor: Interceptor) -> None:
        self.interceptor = interceptor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        try:
            self.interceptor.accept(tr)
        except OSError as exc:  # a TLS listener without a certificate
            self.interceptor._refuse(tr, "listener_error", str(exc))

    def data_received(self, data: bytes) -> None:  # only after a refusal, before the close
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _Half:
    """One direction of a :class:`Passthrough`: what one transport reads, the other writes."""

    def __init__(self, relay: Passthrough) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False  # this side sent its FIN
        #: What the client sent before the upstream side was connected (uvloop starts reading
        #: after ``connection_made`` even when it paused reading there, so bytes can come).
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            return
        self.pending.append(data)  # the other side is still connecting
        if sum(map(len, self.pending)) > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if not self.relay.connected and not self.relay.closed:
            return True  # the upstream is still connecting: Passthrough.connect passes it on
        if peer is None or peer.eof or peer.transport is None or not peer.transport.can_write_eof():
            self.relay.close()  # both directions are done (or cannot be half-closed)
            return None
        peer.transport.write_eof()
        return True  # keep our side open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.relay.close()

    def pause_writing(self) -> None:  # our writes back up: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Passthrough:
    """A plain TCP relay from a captured client to its original destination."""

    def __init__(self, interceptor: Interceptor, client: asyncio.Transport) -> None:
        self.interceptor = interceptor
        self.down = _Half(self)
        self.up = _Half(self)
        self.down.peer, self.up.peer = self.up, self.down
        self.closed = False
        self.connected = False  # the upstream side is connected
        client.set_protocol(cast(asyncio.Protocol, self.down))
        self.down.connection_made(client)

    async def connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        interceptor = self.interceptor
        try:
            sock = await asyncio.wait_for(
                marked_connection(loop, host, port, interceptor.mark), PASSTHROUGH_CONNECT_TIMEOUT
            )
            await loop.create_connection(lambda: cast(asyncio.Protocol, self.up), sock=sock)
        except (OSError, TimeoutError) as exc:
            client = self.down.transport
            if client is not None:
                interceptor._refuse(client, "passthrough_failed", f"to {host}:{port}: {exc}")
            self.close()
            return
        client = self.down.transport
        upstream = self.up.transport
        if self.closed or client is None or upstream is None:
            self.close()
            return
        self.connected = True
        pending, self.down.pending = self.down.pending, []
        if pending:
            upstream.write(b"".join(pending))
        if self.down.eof and upstream.can_write_eof():  # the client is done already
            upstream.write_eof()
        client.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.interceptor.relays.discard(self)
        for half in (self.down, self.up):
            if half.transport is not None:
                half.transport.close()
