"""Many real ADS clients in one process, for the control-plane scale benchmark.

Each stream is an xDS v3 client of its own (grpcio, ``grpc.aio``), state of the world or
delta: it subscribes to every cluster and listener (wildcard), then to the
ClusterLoadAssignment of every EDS cluster and the RouteConfiguration every listener names (read
from the clusters and from the listeners' MetaProtocol ``TypedStruct``, as a proxy does), and
ACKs every response (version and nonce; delta: the nonce). Nothing is validated beyond parsing:
the benchmark measures the control plane, and a client that parses every resource is the load
a real proxy puts on it.

Each ACK is printed as a JSON line on stdout, ``{"node", "type", "version", "t", "bytes",
"resources"}`` (``t``: ``time.monotonic()``, comparable across processes on one Linux host;
``bytes``: the response's size on the wire), so the parent (:mod:`benchmarks.control_plane_scale`)
can tell when every proxy has ACKed a change.

Run: ``python -m benchmarks.xds_load_client --target 127.0.0.1:15010 --nodes p0:ns00,p1:ns01
[--delta]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2
from udpa.type.v1 import typed_struct_pb2

from metamesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SHORT = {CLUSTER_TYPE: "CDS", ENDPOINT_TYPE: "EDS", LISTENER_TYPE: "LDS", ROUTE_TYPE: "RDS"}


def sized(parse: Any) -> Any:
    return lambda data: (len(data), parse(data))


def eds_names(resources: list[Any]) -> set[str]:
    out = set()
    for packed in resources:
        cluster = cluster_pb2.Cluster.FromString(packed.value)
        if cluster.type == cluster_pb2.Cluster.EDS:
            out.add(cluster.eds_cluster_config.service_name or cluster.name)
    return out


def rds_names(resources: list[Any]) -> set[str]:
    out = set()
    for packed in resources:
        listener = listener_pb2.Listener.FromString(packed.value)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                typed = typed_struct_pb2.TypedStruct()
                if network_filter.typed_config.Unpack(typed):
                    value: struct_pb2.Struct = typed.value
                    rds = json_format.MessageToDict(value).get("rds", {})
                    if rds.get("routeConfigName"):
                        out.add(rds["routeConfigName"])
    return out


def node_message(node_id: str, namespace: str) -> base_pb2.Node:
    node = base_pb2.Node(id=node_id, cluster="bench")
    node.metadata.update({"NAMESPACE": namespace, "LABELS": {"app": "client"}})
    return node


def report(node: str, type_url: str, version: str, size: int, count: int) -> None:
    line = {
        "node": node,
        "type": SHORT.get(type_url, type_url),
        "version": version,
        "t": time.monotonic(),
        "bytes": size,
        "resources": count,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


async def sotw_stream(channel: grpc.aio.Channel, node_id: str, namespace: str) -> None:
    call = channel.stream_stream(
        SOTW,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=sized(discovery_pb2.DiscoveryResponse.FromString),
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    node = node_message(node_id, namespace)
    names: dict[str, set[str]] = {ENDPOINT_TYPE: set(), ROUTE_TYPE: set()}
    acked: dict[str, tuple[str, str]] = {}
    queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
    queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE))
    async for size, response in call(requests(queue)):
        url = response.type_url
        wanted = sorted(names.get(url, ()))
        queue.put_nowait(
            discovery_pb2.DiscoveryRequest(
                type_url=url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=wanted,
            )
        )
        acked[url] = (response.version_info, response.nonce)
        report(node_id, url, response.version_info, size, len(response.resources))
        follow = {CLUSTER_TYPE: (ENDPOINT_TYPE, eds_names), LISTENER_TYPE: (ROUTE_TYPE, rds_names)}
        if url in follow:
            child, find = follow[url]
            found = find(list(response.resources))
            if found != names[child]:
                names[child] = found
                version, nonce = acked.get(child, ("", ""))
                queue.put_nowait(
                    discovery_pb2.DiscoveryRequest(
                        type_url=child,
                        version_info=version,
                        response_nonce=nonce,
                        resource_names=sorted(found),
                    )
                )


async def delta_stream(channel: grpc.aio.Channel, node_id: str, namespace: str) -> None:
    call = channel.stream_stream(
        DELTA,
        request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
        response_deserializer=sized(discovery_pb2.DeltaDiscoveryResponse.FromString),
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    node = node_message(node_id, namespace)
    held: dict[str, dict[str, Any]] = {url: {} for url in SHORT}
    names: dict[str, set[str]] = {ENDPOINT_TYPE: set(), ROUTE_TYPE: set()}
    queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
    queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER_TYPE))
    async for size, response in call(requests(queue)):
        url = response.type_url
        table = held[url]
        for name in response.removed_resources:
            table.pop(name, None)
        for entry in response.resources:
            table[entry.name] = entry.resource
        queue.put_nowait(
            discovery_pb2.DeltaDiscoveryRequest(type_url=url, response_nonce=response.nonce)
        )
        report(node_id, url, response.system_version_info, size, len(response.resources))
        follow = {CLUSTER_TYPE: (ENDPOINT_TYPE, eds_names), LISTENER_TYPE: (ROUTE_TYPE, rds_names)}
        if url in follow:
            child, find = follow[url]
            found = find(list(table.values()))
            added, gone = found - names[child], names[child] - found
            if added or gone:
                names[child] = found
                queue.put_nowait(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=child,
                        resource_names_subscribe=sorted(added),
                        resource_names_unsubscribe=sorted(gone),
                    )
                )


async def follow(target: str, node_id: str, namespace: str, delta: bool) -> None:
    """One proxy: its own channel (connection); reconnects while the server is not there."""
    options = [
        ("grpc.max_receive_message_length", 1 << 30),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    stream = delta_stream if delta else sotw_stream
    while True:
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            try:
                await stream(channel, node_id, namespace)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
        await asyncio.sleep(0.2)


async def run(target: str, nodes: list[tuple[str, str]], delta: bool) -> None:
    await asyncio.gather(*(follow(target, node_id, ns, delta) for node_id, ns in nodes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--nodes", required=True, help="id:namespace,...")
    parser.add_argument("--delta", action="store_true")
    args = parser.parse_args()
    nodes = [tuple(item.split(":", 1)) for item in args.nodes.split(",")]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.target, [(a, b) for a, b in nodes], args.delta))


if __name__ == "__main__":
    main()
