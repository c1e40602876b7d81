"""The ADS server: per-node snapshots pushed over ADS, state of the world and delta (grpc.aio).

How it works:

- The server is given a ``translate(model, node)`` function (the control plane passes
  :func:`metamesh.control.translate.translate`; the xds layer never imports the control
  layer above it) and a first model.
- :meth:`AdsServer.set_model` records a new model (a
  :class:`~metamesh.control.model.MeshModel`) and
  pokes a :class:`Debouncer`; bursts of changes (a directory rewritten file by file) coalesce
  into one push after ``quiet`` seconds without a change, or ``max_delay`` after the first one,
  whichever comes first (Aeraki uses 1 s / 10 s). :meth:`AdsServer.flush` applies at once.
- Applying a model bumps the version (``"1"``, ``"2"``, ...), translates it for each connected
  node's identity (the ``translate`` function; node id plus ``NAMESPACE`` and
  ``LABELS`` from ``node.metadata`` as Istio's agent sends them) and hands the result to each
  stream's :class:`~metamesh.xds.streams.StreamState`, which decides what to send.
- Responses reach gRPC already encoded where possible (:mod:`metamesh.xds.encoded`: each
  resource serialized once, response bodies shared by the streams of one snapshot), through
  method handlers whose serializer accepts them (:func:`~metamesh.xds.encoded.ads_service_handler`).
- Both ``StreamAggregatedResources`` (state of the world, :class:`StreamState`) and
  ``DeltaAggregatedResources`` (incremental, :class:`~metamesh.xds.delta.DeltaStreamState`)
  run the same loop; only the protocol state object differs.
- Each stream is an async generator: a reader task turns incoming requests into queue events,
  model changes add "snapshot" events, the generator yields whatever the state machine returns.
  Every task is owned and cancelled when the stream ends.
- With ``tls`` (:meth:`AdsServer.start`) the port is TLS and each stream is authenticated and
  held to its workload before anything is sent (:mod:`metamesh.xds.ads_auth`; refusals
  counted in :attr:`AdsServer.refused` and by the front, and logged).
- :meth:`AdsServer.status` reports per node and type URL the subscription, the version sent,
  the version ACKed and the last NACK with its ``error_detail`` (also logged at WARNING), for
  delta and state-of-the-world streams alike (``delta`` tells which).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format

from metamesh.xds.ads_auth import AdsAuthenticator, AdsTls, bind_node
from metamesh.xds.delta import DeltaStreamState
from metamesh.xds.encoded import ads_service_handler
from metamesh.xds.front import LOG_EVERY, GrpcFront
from metamesh.xds.resources import (
    ENVOY_DATA_PLANE,
    METAMESH_DATA_PLANE,
    ProxyNode,
    XdsResources,
)
from metamesh.xds.sanitize import (
    MAX_ERROR_DETAIL,
    MAX_GONE_NODES,
    MAX_NACKS,
    MAX_NODE_ID,
    bounded,
    printable,
)
from metamesh.xds.streams import StreamState, TypeStatus

log = logging.getLogger(__name__)
Clock = Callable[[], float]
Translate = Callable[[Any, ProxyNode], XdsResources]


@dataclass(slots=True)
class Debouncer:
    """Coalesces change notifications; time is an argument (sans-IO)."""

    quiet: float = 0.1
    max_delay: float = 1.0
    _first: float | None = None
    _last: float = 0.0

    def submit(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the pending change should be applied (None: nothing pending)."""
        if self._first is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def take(self, now: float) -> bool:
        """True (and reset) when a pending change is due at ``now``."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return False
        self._first = None
        return True


def node_identity(node: Any) -> ProxyNode:
    """Node id, namespace, labels, service account and addresses from an Envoy ``Node``
    (Istio's metadata keys; see :class:`ProxyNode`)."""
    meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    namespace = meta.get("NAMESPACE")
    ips = meta.get("INSTANCE_IPS") or ""
    parts = node.id.split("~")  # Istio: sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local
    if len(parts) == 4 and "." in parts[2]:
        namespace = namespace or parts[2].split(".", 1)[1]
        ips = ips or parts[1]  # the id's address when the metadata names none
    labels = meta.get("LABELS") or {}
    account = meta.get("SERVICE_ACCOUNT")
    return ProxyNode(
        node_id=bounded(node.id, MAX_NODE_ID),
        namespace=str(namespace) if namespace else None,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        service_account=str(account) if account else None,
        instance_ips=tuple(x.strip() for x in str(ips).split(",") if x.strip()),
        outbound=str(meta.get("METAMESH_OUTBOUND", "true")).lower() != "false",
        data_plane=data_plane(node.user_agent_name, meta.get("METAMESH_DATA_PLANE")),
        listen_address=str(meta["METAMESH_LISTEN_ADDRESS"])
        if meta.get("METAMESH_LISTEN_ADDRESS")
        else None,
        admin=bounded(str(meta["METAMESH_ADMIN"]), MAX_NODE_ID)
        if meta.get("METAMESH_ADMIN")
        else None,
    )


def data_plane(user_agent_name: str, flag: object) -> str:
    """``"envoy"`` for a real Envoy (its ``user_agent_name``) or a node that asks for Envoy's
    resources (metadata ``METAMESH_DATA_PLANE: envoy``); a flag of ``metamesh`` overrides."""
    if flag is not None and str(flag).lower() in (ENVOY_DATA_PLANE, METAMESH_DATA_PLANE):
        return str(flag).lower()
    return ENVOY_DATA_PLANE if user_agent_name == "envoy" else METAMESH_DATA_PLANE


class AdsProtocol(Protocol):
    """What a stream's sans-IO protocol state offers: SotW or delta, the server moves messages."""

    types: dict[str, TypeStatus]

    def set_snapshot(self, version: str, resources: XdsResources) -> list[Any]: ...

    def on_request(self, request: Any) -> list[Any]: ...


class _Stream:
    def __init__(self, node: ProxyNode, state: AdsProtocol) -> None:
        self.node = node
        self.state = state
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves ADS to any number of nodes; see the module docstring."""

    def __init__(
        self,
        translate: Translate,
        model: Any,
        *,
        quiet: float = 0.1,
        max_delay: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._translate = translate
        self._model = model
        self._pending: Any = None
        self._generation = 1
        self._debouncer = Debouncer(quiet, max_delay)
        self._clock = clock
        self._streams: set[_Stream] = set()
        self._status: dict[str, AdsProtocol] = {}
        #: The latest NACK per (node, type), oldest first; at most MAX_NACKS (sanitize.py).
        self._nacks: OrderedDict[tuple[str, str], tuple[str, str, str, str]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._debounce_task: asyncio.Task[None] | None = None
        #: The TLS port's front and stream authentication (None: plaintext ADS).
        self.front: GrpcFront | None = None
        self._auth: AdsAuthenticator | None = None
        #: Streams refused after TLS: ``unauthenticated``, ``wrong_node``.
        self.refused: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._refusals_since: dict[str, int] = {}

    # --- lifecycle ------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: AdsTls | None = None
    ) -> int:
        """Listen on ``host:port`` (0 = ephemeral); returns the bound port. With ``tls``, the
        port is TLS and every stream is authenticated (:mod:`metamesh.xds.ads_auth`): gRPC
        listens on an ephemeral loopback port behind a :class:`~metamesh.xds.front.GrpcFront`."""
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((ads_service_handler(self),))  # encoded.py
        if tls is None:
            bound = int(self._server.add_insecure_port(f"{host}:{port}"))
        else:
            backend = int(self._server.add_insecure_port("127.0.0.1:0"))
            self.front = GrpcFront("ADS", backend, tls.context)
            self._auth = AdsAuthenticator(tls, self.front)
        await self._server.start()
        if self.front is not None:
            bound = await self.front.start_tcp(host, port)
        self._debounce_task = asyncio.create_task(self._debounce_loop())
        return bound

    async def stop(self, grace: float = 0.5) -> None:
        if self._debounce_task is not None:
            self._debounce_task.cancel()
            await asyncio.gather(self._debounce_task, return_exceptions=True)
        if self.front is not None:
            await self.front.stop()
        if self._server is not None:
            await self._server.stop(grace)

    # --- model changes --------------------------------------------------------------

    @property
    def version(self) -> str:
        return str(self._generation)

    def set_model(self, model: Any) -> None:
        """Schedule ``model`` (debounced); call from the server's event loop."""
        self._pending = model
        self._debouncer.submit(self._clock())
        self._wakeup.set()

    def flush(self) -> bool:
        """Apply a pending model now; True if there was one."""
        if self._pending is None:
            return False
        self._debouncer.take(float("inf"))
        self._apply(self._pending)
        return True

    async def _debounce_loop(self) -> None:
        while True:
            deadline = self._debouncer.deadline()
            if deadline is None:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                    self._wakeup.clear()
                except TimeoutError:
                    pass
            if self._debouncer.take(self._clock()) and self._pending is not None:
                self._apply(self._pending)

    def _apply(self, model: Any) -> None:
        self._pending = None
        self._model = model
        self._generation += 1
        log.info("ADS: version %s pushed to %d streams", self.version, len(self._streams))
        for stream in self._streams:
            stream.events.put_nowait(("snapshot", None))

    def snapshot_for(self, node: ProxyNode) -> XdsResources:
        """What ``node`` gets from the current model."""
        return self._translate(self._model, node)

    # --- status ---------------------------------------------------------------------

    def connected(self) -> list[ProxyNode]:
        """The nodes with an open stream now (one entry per stream)."""
        return [stream.node for stream in self._streams]

    def status(self) -> dict[str, dict[str, dict[str, object]]]:
        """``{node_id: {type_url: {subscribed, sent_version, acked_version, nack}}}``."""
        return {
            node: {url: t.view() for url, t in state.types.items()}
            for node, state in self._status.items()
        }

    def acked_version(self, node_id: str, type_url: str) -> str:
        state = self._status.get(node_id)
        status = state.types.get(type_url) if state else None
        return status.acked_version if status else ""

    def nacks(self) -> list[tuple[str, str, str, str]]:
        """The latest NACK per node and type, oldest first: ``(node_id, type_url, version,
        error_detail)``; bounded (:mod:`metamesh.xds.sanitize`)."""
        return list(self._nacks.values())

    def _record_nack(self, node_id: str, type_url: str, version: str, error: str) -> None:
        log.warning(
            "xDS NACK from %s for %s version %s: %s",
            printable(node_id),
            printable(type_url, 128),
            printable(version, 64),
            printable(error, 512),
        )
        key = (node_id, type_url)
        self._nacks.pop(key, None)
        self._nacks[key] = (node_id, type_url, version, bounded(error, MAX_ERROR_DETAIL))
        while len(self._nacks) > MAX_NACKS:
            self._nacks.popitem(last=False)

    # --- the gRPC method ------------------------------------------------------------

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for response in self._serve(request_iterator, StreamState, context):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for response in self._serve(request_iterator, DeltaStreamState, context):
            yield response

    async def _admit(self, node: ProxyNode, context: Any) -> ProxyNode:
        """``node`` held to the stream's identity on the TLS port; aborts the stream when
        it is not authenticated or claims another workload (counted, logged)."""
        if self._auth is None:
            return node
        identity, how = self._auth.authenticate(context)
        if identity is None:
            self._refuse("unauthenticated", how, node, how)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, how)
        assert identity is not None
        bound, problem = bind_node(node, identity)
        if problem:
            self._refuse("wrong_node", "wrong_node", node, problem)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        log.info("ADS: node %s is %s (%s)", printable(node.node_id), identity, how)
        return bound

    def _refuse(self, reason: str, key: str, node: ProxyNode, detail: str) -> None:
        """Count; log once per ``key`` per :data:`~metamesh.xds.front.LOG_EVERY` seconds (with
        the count), so a proxy retrying every second or a flood cannot flood the log."""
        self.refused[reason] += 1
        self._refusals_since[key] = self._refusals_since.get(key, 0) + 1
        now = self._clock()
        if now - self._logged_at.get(key, -1e9) < LOG_EVERY:
            return
        self._logged_at[key] = now
        log.warning(
            "ADS: refused node %s: %s (%d such since the last line)",
            printable(node.node_id),
            printable(detail),
            self._refusals_since.pop(key),
        )

    async def _serve(
        self,
        request_iterator: AsyncIterator[Any],
        protocol: Callable[..., AdsProtocol],
        context: Any = None,
    ) -> AsyncIterator[Any]:
        iterator = request_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        node = await self._admit(node_identity(first.node), context)
        state = protocol(node.node_id, on_nack=self._record_nack)
        self._status[node.node_id] = state
        stream = _Stream(node, state)
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(iterator, stream))
        try:
            for response in state.set_snapshot(self.version, self.snapshot_for(node)):
                yield response
            for response in state.on_request(first):
                yield response
            while True:
                kind, payload = await stream.events.get()
                if kind == "closed":
                    return
                if kind == "snapshot":
                    responses = state.set_snapshot(self.version, self.snapshot_for(node))
                else:
                    responses = state.on_request(payload)
                for response in responses:
                    yield response
        finally:
            self._streams.discard(stream)
            self._forget_gone_nodes()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _forget_gone_nodes(self) -> None:
        """Keep the status of at most MAX_GONE_NODES nodes with no stream (oldest first out)."""
        live = {stream.node.node_id for stream in self._streams}
        gone = [node for node in self._status if node not in live]
        for node in gone[: max(0, len(gone) - MAX_GONE_NODES)]:
            del self._status[node]

    async def _read(self, iterator: AsyncIterator[Any], stream: _Stream) -> None:
        try:
            async for request in iterator:
                stream.events.put_nowait(("request", request))
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            stream.events.put_nowait(("closed", None))
