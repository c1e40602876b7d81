"""Thin ``asyncio.Protocol`` adapters between sockets and the sans-IO core.

They only translate callbacks into core events (with the loop turn's ``now``) and own
backpressure, uvicorn-style: a client that does not read its replies gets its own reading paused
(``pause_writing`` on its transport), and an upstream whose write buffer fills pauses reading
from every client until it drains, since any client may be feeding it. A mirror's connection
(which carries only request copies) never pauses clients: while it is congested the core drops
further copies for it instead. The write buffer limits are the high/low water marks. Writes
never happen here: the server flushes each peer's coalesced output once per loop turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from metamesh.proxy.connection import Downstream
    from metamesh.proxy.upstream import Upstream
    from metamesh.runtime.server import ProxyServer


class DownstreamProtocol(asyncio.Protocol):
    """One accepted client connection."""

    __slots__ = ("conn", "listener_name", "paused_by_self", "server", "transport")

    def __init__(self, server: ProxyServer, listener_name: str) -> None:
        self.server = server
        self.listener_name = listener_name
        self.transport: asyncio.Transport | None = None
        self.conn: Downstream | None = None
        self.paused_by_self = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        server = self.server
        transport.set_write_buffer_limits(server.high_water, server.low_water)
        peer = transport.get_extra_info("peername")
        self.conn = server.core.downstream_connected(
            self.listener_name, f"{peer[0]}:{peer[1]}" if peer else ""
        )
        self.conn.handle = self
        server.readers.add(self)
        if server.upstream_congested:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.core.downstream_data(self.conn, data, server.now())  # type: ignore[arg-type]

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.readers.discard(self)
        if self.conn is not None:
            server.core.downstream_closed(self.conn, server.now())
        self.transport = None

    def pause_writing(self) -> None:
        self.paused_by_self = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_by_self = False
        if self.transport is not None and not self.server.upstream_congested:
            self.transport.resume_reading()


class UpstreamProtocol(asyncio.Protocol):
    """One connection to an upstream endpoint."""

    __slots__ = ("congested", "server", "transport", "up")

    def __init__(self, server: ProxyServer, up: Upstream) -> None:
        self.server = server
        self.up = up
        self.transport: asyncio.Transport | None = None
        self.congested = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        server = self.server
        transport.set_write_buffer_limits(server.high_water, server.low_water)
        self.up.handle = self
        server.core.upstream_connected(self.up, server.now())

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.core.upstream_data(self.up, data, server.now())

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self.congested:
            self.resume_writing()
        server.core.upstream_closed(self.up, server.now())
        self.transport = None

    def pause_writing(self) -> None:
        if not self.congested:
            self.congested = self.up.congested = True
            if not self.up.mirror:  # a mirror's copies are dropped instead (core._mirror)
                self.server.set_upstream_congested(+1)

    def resume_writing(self) -> None:
        if self.congested:
            self.congested = self.up.congested = False
            if not self.up.mirror:
                self.server.set_upstream_congested(-1)
