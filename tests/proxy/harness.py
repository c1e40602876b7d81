"""In-memory driver for the sans-IO core: executes its actions without sockets.

``Harness`` plays the runtime: it flushes ``dirty`` peers into per-connection byte logs, records
CONNECT/CLOSE actions, and lets a test connect or fail upstreams and inject bytes from either
side. KV-RPC (examples/kvrpc) is the protocol; ``PipelinedKvRpc`` is the same framing treated as
a protocol without request ids.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from examples.kvrpc.kvrpc_codec import HEADER, KvRpcCodec, build_frame, decode_headers
from metamesh.codecs import Codec
from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    Route,
    RouteConfiguration,
    Snapshot,
)
from metamesh.proxy.connection import (
    ACCESS_LOG,
    CLOSE_DOWNSTREAM,
    CLOSE_UPSTREAM,
    CONNECT,
    LOG,
    ConnectionManager,
    Downstream,
)
from metamesh.proxy.upstream import Upstream


class PipelinedKvRpc(KvRpcCodec):
    """KV-RPC framing, but as if the protocol had no ids: the proxy must pipeline."""

    name = "kvrpc-pipelined"
    request_id_bits = None


def resolver(name: str) -> Any:
    return {"kvrpc": KvRpcCodec, "kvrpc-pipelined": PipelinedKvRpc}.get(name) or resolve_codec(name)


def call(rid: int, body: bytes = b"", oneway: bool = False, **headers: str) -> bytes:
    return build_frame(3 if oneway else 1, rid, dict(headers), body)


def reply(rid: int, body: bytes = b"", status: int = 0, **headers: str) -> bytes:
    return build_frame(2, rid, dict(headers), body, status)


def parse_frames(data: bytes) -> list[tuple[int, int, int, dict[str, str], bytes]]:
    """(type, status, id, headers, body) for every frame in ``data``."""
    out = []
    buf = bytes(data)
    while buf:
        _, wtype, status, rid, hlen, blen = HEADER.unpack_from(buf)
        headers = decode_headers(buf[HEADER.size : HEADER.size + hlen])
        body = buf[HEADER.size + hlen : HEADER.size + hlen + blen]
        out.append((wtype, status, rid, headers, body))
        buf = buf[HEADER.size + hlen + blen :]
    return out


def cluster(name: str, *ports: int, **kw: Any) -> Cluster:
    return Cluster(name, tuple(Endpoint("127.0.0.1", p) for p in ports), **kw)


def snapshot(
    routes: list[Route],
    clusters: list[Cluster],
    codec: str = "kvrpc",
    max_frame: int | None = None,
    filters: tuple[str, ...] = ("aeraki.meta_protocol.filters.router",),
    filter_configs: tuple[tuple[str, object], ...] = (),
    stat_prefix: str = "",
) -> Snapshot:
    listener = Listener(
        "l",
        "127.0.0.1",
        0,
        codec,
        "rc",
        stat_prefix=stat_prefix,
        filters=filters,
        filter_configs=filter_configs,
        max_frame_size=max_frame,
    )
    return Snapshot.build([listener], clusters, [RouteConfiguration("rc", tuple(routes))])


class Harness:
    def __init__(self, snap: Snapshot, seed: int = 1, access_log: bool = False) -> None:
        self.core = ConnectionManager(snap, resolver, random.Random(seed), access_log=access_log)
        self.now = 0.0
        self.sent: dict[Any, bytearray] = {}
        self.connects: list[Upstream] = []
        self.closed: list[Any] = []
        self.logs: list[str] = []
        self.access: list[dict[str, Any]] = []
        #: Called with every action the core hands out, before the harness acts on it.
        self.on_action: list[Callable[[tuple[Any, ...]], None]] = []

    def flush(self) -> None:
        for peer in self.core.dirty:
            peer.dirty = False
            self.sent.setdefault(peer, bytearray()).extend(b"".join(peer.out))
            peer.out.clear()
        self.core.dirty.clear()
        for action in self.core.take_actions():
            for observe in self.on_action:
                observe(action)
            op = action[0]
            if op == CONNECT:
                self.connects.append(action[1])
            elif op in (CLOSE_DOWNSTREAM, CLOSE_UPSTREAM):
                self.closed.append(action[1])
            elif op == LOG:
                self.logs.append(action[2])
            elif op == ACCESS_LOG:
                self.access.append(action[1])

    def client(self) -> Downstream:
        return self.core.downstream_connected("l", "test")

    def send(self, d: Downstream, data: bytes) -> None:
        self.core.downstream_data(d, data, self.now)
        self.flush()

    def take(self, peer: Any) -> list[tuple[int, int, int, dict[str, str], bytes]]:
        data = self.sent.pop(peer, bytearray())
        return parse_frames(bytes(data))

    def connect(self, up: Upstream) -> None:
        self.core.upstream_connected(up, self.now)
        self.flush()

    def respond(self, up: Upstream, data: bytes) -> None:
        self.core.upstream_data(up, data, self.now)
        self.flush()


def codec() -> Codec:
    return KvRpcCodec()
