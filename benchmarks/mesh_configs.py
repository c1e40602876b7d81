"""The configs the metamesh targets run, one per deployment mode, all routing the same way.

- :func:`metamesh_config`: the static YAML of ``metamesh proxy --config`` (the format of
  ``examples/proxy-static.yaml``): one MetaProtocol listener with the built-in codec, one route
  matching like the Envoy L7 configs (Thrift: method ``add``; Dubbo: interface + method
  ``sayHello``), one cluster with the responder as its only endpoint.
- :func:`mesh_manifests`: the mesh resources a control plane (``metamesh up DIR``,
  ``metamesh control-plane --config-dir DIR``) translates into the same proxy config: an
  ApplicationProtocol, a ServiceEntry whose address:port is the listen address the load
  generator dials (127.0.0.1 and the target's port: the control plane binds each MetaProtocol
  listener on its ServiceEntry address), the responder as its one endpoint, a DestinationRule
  and a MetaRouter with the one route.

The static config is written with the names the control plane gives (listener
``127.0.0.1_<port>``, route config ``bench.upstream_<port>``, cluster
``outbound|<port>||bench.upstream``, Aeraki's codec name), so the proxy's ``/config_dump`` is
the same in every mode but for the config version; :func:`config_difference` says where it is
not, and the targets refuse to be measured when it is not.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks.frames import DUBBO_INTERFACE, DUBBO_METHOD, THRIFT_METHOD

BENCH_HOST = "bench.upstream"
BENCH_NAMESPACE = "bench"
LISTEN_ADDRESS = "127.0.0.1"
CODEC_PREFIX = "aeraki.meta_protocol.codec."
ROUTER_FILTER = "aeraki.meta_protocol.filters.router"


def route_attributes(protocol: str) -> dict[str, str]:
    """What the one route matches: metadata key -> exact value."""
    if protocol == "thrift":
        return {"method": THRIFT_METHOD.decode()}
    return {"interface": DUBBO_INTERFACE, "method": DUBBO_METHOD}


def metamesh_config(protocol: str, listen_port: int, upstream_port: int) -> dict[str, Any]:
    """A static metamesh proxy config equivalent to the Envoy L7 config for ``protocol``."""
    match = [{"name": k, "exact_match": v} for k, v in route_attributes(protocol).items()]
    cluster = f"outbound|{listen_port}||{BENCH_HOST}"
    routes = f"{BENCH_HOST}_{listen_port}"
    return {
        "version": "bench",
        "static_resources": {
            "listeners": [
                {
                    "name": f"{LISTEN_ADDRESS}_{listen_port}",
                    "address": _address(listen_port)["address"],
                    "meta_protocol_proxy": {
                        "stat_prefix": cluster,
                        "codec": {"name": CODEC_PREFIX + protocol},
                        "route_config_name": routes,
                        "meta_protocol_filters": [{"name": ROUTER_FILTER}],
                    },
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "endpoints": [{"lb_endpoints": [{"endpoint": _address(upstream_port)}]}]
                    },
                }
            ],
            "route_configs": [
                {
                    "name": routes,
                    "routes": [
                        {
                            "name": "bench",
                            "match": {"metadata": match},
                            "route": {"cluster": cluster},
                        }
                    ],
                }
            ],
        },
    }


def _address(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": LISTEN_ADDRESS, "port_value": port}}}


def mesh_manifests(protocol: str, listen_port: int, upstream_port: int) -> list[dict[str, Any]]:
    """The mesh resources that a control plane translates into :func:`metamesh_config`."""
    port_name = f"tcp-metaprotocol-{protocol}-bench"
    meta = {"name": "bench-upstream", "namespace": BENCH_NAMESPACE}
    attributes = {k: {"exact": v} for k, v in route_attributes(protocol).items()}
    return [
        {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "ApplicationProtocol",
            "metadata": {"name": protocol},
            "spec": {"protocol": protocol, "codec": CODEC_PREFIX + protocol},
        },
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "ServiceEntry",
            "metadata": meta,
            "spec": {
                "hosts": [BENCH_HOST],
                "addresses": [LISTEN_ADDRESS],
                "ports": [{"number": listen_port, "name": port_name, "protocol": "TCP"}],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "endpoints": [{"address": LISTEN_ADDRESS, "ports": {port_name: upstream_port}}],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": meta,
            "spec": {
                "host": BENCH_HOST,
                "trafficPolicy": {
                    "loadBalancer": {"simple": "ROUND_ROBIN"},
                    "connectionPool": {"tcp": {"connectTimeout": "1s"}},
                },
            },
        },
        {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "MetaRouter",
            "metadata": meta,
            "spec": {
                "hosts": [BENCH_HOST],
                "routes": [
                    {
                        "name": "bench",
                        "match": {"attributes": attributes},
                        "route": [{"destination": {"host": BENCH_HOST}}],
                    }
                ],
            },
        },
    ]


def write_mesh_dir(directory: Path, protocol: str, listen_port: int, upstream_port: int) -> Path:
    """Write :func:`mesh_manifests` as ``directory/bench.yaml`` (the directory a control plane
    watches); returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = mesh_manifests(protocol, listen_port, upstream_port)
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


def config_difference(live: dict[str, Any], reference: dict[str, Any]) -> str:
    """Empty when two ``/config_dump`` bodies configure the same listeners, clusters and routes
    (the config version aside); otherwise a unified diff of the two, at most 40 lines."""

    def text(dump: dict[str, Any]) -> list[str]:
        body = {k: v for k, v in dump.items() if k != "version"}
        return json.dumps(body, indent=1, sort_keys=True).splitlines()

    diff = list(difflib.unified_diff(text(reference), text(live), "reference", "live", lineterm=""))
    return "\n".join(diff[:40])
