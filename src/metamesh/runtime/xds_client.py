"""The proxy's xDS client: one ADS stream (grpc.aio) feeding config snapshots to the proxy.

:class:`XdsClient` owns the I/O around :class:`~metamesh.runtime.xds_state.ClientState`:

- it opens a fresh channel to ``HOST:PORT`` per attempt, with its own subchannel pool and
  gRPC's reconnect back-off capped like ours (:data:`CHANNEL_OPTIONS`): by default gRPC shares
  one subchannel per address across every channel of the process, and with it a connect
  back-off that grows with the outage (to two minutes), so a "fresh" channel still waited 10-20 s
  after a control plane came back. It sends the state's first requests and
  then, for every response, the ACK/NACK and subscription requests the state returns;
- a complete snapshot is handed to ``apply`` (normally
  :meth:`metamesh.runtime.server.ProxyServer.apply_snapshot`) unless it equals the one in
  force, then ``on_applied`` is told (``metamesh up`` prints what it now serves);
- when the stream fails or ends it reconnects forever, after a capped exponential back-off
  with jitter (``base * 2**n`` capped at ``cap``, 1 s by default, times a random factor in
  [0.5, 1]); the back-off restarts once a stream has delivered a response, so a control plane
  that returns after any outage is followed within about a second. While disconnected the
  proxy keeps serving the last applied config: nothing here ever clears it;
- with :class:`XdsTls` the channel is TLS, the control plane verified against the mesh root,
  and the proxy authenticates with its current workload certificate (mutual TLS) or, before
  it has one, its bootstrap token (docs/security.md).

:func:`check_snapshot` is the dry run the state uses before ACKing: a throwaway
:class:`~metamesh.proxy.connection.ConnectionManager` resolves every codec and compiles every
route table and filter chain, so a config the proxy cannot run is NACKed instead of applied.
:meth:`XdsClient.stop` ends :meth:`XdsClient.run` (every task owned and awaited).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config import Snapshot
from metamesh.proxy.connection import ConnectionManager
from metamesh.proxy.router import RouteTable
from metamesh.runtime.xds_state import ClientState, Convert
from metamesh.xds.resources import ProxyNode

log = logging.getLogger("metamesh.xds_client")

#: Channel options for every control connection (xDS here, the rate limit client too): a
#: subchannel pool of the channel's own, and gRPC's connect back-off capped at 1 s.
CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True)
class XdsTls:
    """ADS over TLS (a control plane that is the mesh CA): the server verified against
    ``root_pem`` (and named ``server_name`` when given, else the host dialled); the proxy
    authenticates with its workload certificate, ``certificate()`` read at each connection
    so a renewed one is used from the next, and with ``token`` (gRPC metadata) while it has
    none."""

    root_pem: bytes
    certificate: Callable[[], tuple[bytes, bytes] | None]
    token: str | None = None
    server_name: str | None = None


Apply = Callable[[Snapshot], Awaitable[None]]
OnApplied = Callable[[Snapshot], None]


def check_snapshot(snapshot: Snapshot) -> None:
    """Raise if the proxy core could not run ``snapshot`` (see the module docstring)."""
    for config in snapshot.route_configs.values():
        RouteTable(config)
    ConnectionManager(snapshot, resolve_codec)


class XdsClient:
    """Keeps the proxy's config in step with an ADS server; see the module docstring."""

    def __init__(
        self,
        target: str,
        node: ProxyNode,
        convert: Convert,
        apply: Apply,
        *,
        on_applied: OnApplied | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 1.0,
        rng: random.Random | None = None,
        tls: XdsTls | None = None,
    ) -> None:
        self.target = target
        self.tls = tls
        self.state = ClientState(node, convert, check_snapshot)
        self._apply = apply
        self._on_applied = on_applied
        self._base = backoff_base
        self._cap = backoff_cap
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self.applied: Snapshot | None = None
        self.connected = False
        self.streams = 0  #: streams opened so far (a reconnect makes it 2, 3, ...)
        self.last_nack: str | None = None
        self.changed = asyncio.Event()  #: set on every applied snapshot (tests wait on it)

    async def run(self) -> None:
        """Stream, and reconnect after failures, until :meth:`stop`."""
        failures = 0
        while not self._stopping.is_set():
            got_response = await self._one_stream()
            if self._stopping.is_set():
                return
            failures = 0 if got_response else failures + 1
            delay = min(self._cap, self._base * 2**failures) * self._rng.uniform(0.5, 1.0)
            log.info("xDS stream to %s ended; reconnecting in %.2fs", self.target, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def stop(self) -> None:
        self._stopping.set()

    async def _one_stream(self) -> bool:
        """Run one ADS stream to its end; True if it delivered at least one response."""
        got_response = False
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        for request in self.state.start_stream():
            outbox.put_nowait(request)
        channel, metadata = self._channel()
        async with channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(_drain(outbox), metadata=metadata)
            self.streams += 1
            stopper = asyncio.create_task(self._stopping.wait())
            try:
                while True:
                    reader = asyncio.create_task(call.read())
                    done, _ = await asyncio.wait(
                        {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader not in done:
                        reader.cancel()
                        call.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
                        return got_response
                    response = reader.result()
                    if response is grpc.aio.EOF:
                        return got_response
                    got_response = self.connected = True
                    await self._handle(response, outbox)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else ""
                log.warning("xDS stream to %s failed: %s %s", self.target, code, why or "")
                return got_response
            finally:
                self.connected = False
                stopper.cancel()
                await asyncio.gather(stopper, return_exceptions=True)
                call.cancel()
                outbox.put_nowait(None)

    def _channel(self) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...] | None]:
        """A fresh channel (TLS with the current certificate, or the token) and its metadata."""
        tls = self.tls
        if tls is None:
            return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS), None
        pair = tls.certificate()
        chain, key = pair if pair is not None else (None, None)
        credentials = grpc.ssl_channel_credentials(tls.root_pem, key, chain)
        options: tuple[tuple[str, int | str], ...] = CHANNEL_OPTIONS
        if tls.server_name:
            options = (*options, ("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        token = tls.token if pair is None else None
        return channel, (("authorization", f"Bearer {token}"),) if token else None

    async def _handle(self, response: Any, outbox: asyncio.Queue[Any]) -> None:
        outcome = self.state.on_response(response)
        if outcome.nack is not None:
            self.last_nack = outcome.nack
            log.error(
                "xDS: rejected %s version %s: %s",
                response.type_url.rsplit(".", 1)[-1],
                response.version_info,
                outcome.nack,
            )
        snapshot = outcome.snapshot
        if snapshot is not None and not _same_config(snapshot, self.applied):
            try:
                await self._apply(snapshot)
            except OSError as exc:  # a listener could not bind; the rest is in force
                log.error("xDS: applying version %s: %s", snapshot.version, exc)
            self.applied = snapshot
            self.changed.set()
            if self._on_applied is not None:
                self._on_applied(snapshot)
        for request in outcome.requests:
            outbox.put_nowait(request)


async def _drain(outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while True:
        request = await outbox.get()
        if request is None:
            return
        yield request


def _same_config(a: Snapshot, b: Snapshot | None) -> bool:
    return b is not None and dataclasses.replace(a, version=b.version) == b
