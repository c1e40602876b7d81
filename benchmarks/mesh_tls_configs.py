"""What the two-hop mutual TLS benchmark runs: the mesh manifests and the Envoy pairs.

Every target is the same path, client -> client-side proxy -> mutual TLS -> server-side proxy
-> responder, with the same certificates (ECDSA P-256 leaves from one mesh root):

- metamesh: :func:`mesh_manifests` for ``metamesh control-plane --ca-dir``, read by two
  ``metamesh proxy --xds --ca`` processes. The service ``bench.upstream`` listens on
  127.0.0.1 (the client proxy's outbound listener, where the load generator dials); its one
  endpoint is an Istio ``WorkloadEntry`` on :data:`WORKLOAD` (service account ``server``), the
  server proxy's inbound listener, whose local app is the responder on 127.0.0.1 at the same
  port, as an app behind its sidecar. PeerAuthentication STRICT mesh-wide, DestinationRule
  ``ISTIO_MUTUAL``; each proxy gets its certificate from the control plane's CA.
- Envoy: :func:`envoy_pair` turns the single-hop configs of ``envoy_configs/`` into two: the
  client Envoy's upstream cluster gets an ``UpstreamTlsContext`` (its certificate, the root,
  the server's SPIFFE id as the required URI SAN, as Istio's ISTIO_MUTUAL cluster has) and
  points at the server Envoy, whose listener gets a ``DownstreamTlsContext`` requiring a client
  certificate from the root. Certificates are files (issued by the same CA before the run):
  what SDS would deliver, without an agent beside each Envoy, so both sides do the same TLS.
  ``l7`` uses Envoy's own filter for the protocol on both hops, ``tcp`` tcp_proxy.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml

from benchmarks.mesh_configs import CODEC_PREFIX, route_attributes

HERE = Path(__file__).resolve().parent
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"
CLIENT_NAMESPACE = "client-ns"
#: The server workload's address: its proxy's inbound listeners (any 127/8 address works).
WORKLOAD = "127.0.31.9"
#: The server workload's address in the plaintext mesh (both meshes run side by side).
PLAIN_WORKLOAD = "127.0.31.10"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/server"
TOKENS = {
    "sleep": {"namespace": CLIENT_NAMESPACE, "serviceAccount": "sleep"},
    "server": {"namespace": NAMESPACE, "serviceAccount": "server"},
}


def host(protocol: str) -> str:
    return f"{protocol}.bench.upstream"


def mesh_manifests(services: dict[str, tuple[int, int]], mtls: bool = True) -> list[dict[str, Any]]:
    """``services``: protocol -> (service port on 127.0.0.1, responder port on 127.0.0.1);
    ``mtls`` False: the same mesh in plaintext (DestinationRule ``DISABLE``, PeerAuthentication
    ``DISABLE``), to split what mutual TLS costs from the rest of the two hops."""
    docs: list[dict[str, Any]] = []
    ports: dict[str, int] = {}
    for protocol, (service_port, app_port) in services.items():
        name, port_name = f"bench-{protocol}", f"tcp-metaprotocol-{protocol}-bench"
        meta = {"name": name, "namespace": NAMESPACE}
        ports[port_name] = app_port
        attributes = {k: {"exact": v} for k, v in route_attributes(protocol).items()}
        docs += [
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
                    "hosts": [host(protocol)],
                    "addresses": ["127.0.0.1"],
                    "ports": [{"number": service_port, "name": port_name, "protocol": "TCP"}],
                    "location": "MESH_INTERNAL",
                    "resolution": "STATIC",
                    "workloadSelector": {"labels": {"app": "server"}},
                },
            },
            {
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "DestinationRule",
                "metadata": meta,
                "spec": {
                    "host": host(protocol),
                    "trafficPolicy": {
                        "loadBalancer": {"simple": "ROUND_ROBIN"},
                        "connectionPool": {"tcp": {"connectTimeout": "1s"}},
                        "tls": {"mode": "ISTIO_MUTUAL" if mtls else "DISABLE"},
                    },
                },
            },
            {
                "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
                "kind": "MetaRouter",
                "metadata": meta,
                "spec": {
                    "hosts": [host(protocol)],
                    "routes": [
                        {
                            "name": "bench",
                            "match": {"attributes": attributes},
                            "route": [{"destination": {"host": host(protocol)}}],
                        }
                    ],
                },
            },
        ]
    docs += [
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "server-1", "namespace": NAMESPACE},
            "spec": {
                "address": WORKLOAD if mtls else PLAIN_WORKLOAD,
                "ports": ports,
                "labels": {"app": "server"},
                "serviceAccount": "server",
            },
        },
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT" if mtls else "DISABLE"}},
        },
    ]
    return docs


def write_mesh(directory: Path, services: dict[str, tuple[int, int]], mtls: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump_all(mesh_manifests(services, mtls), sort_keys=False)
    (directory / "bench.yaml").write_text(text)
    return directory


def write_tokens(path: Path) -> None:
    """The bootstrap tokens file (token ``t-<sa>``) and one token file per workload beside it."""
    entries = [{"token": f"t-{sa}", **who} for sa, who in TOKENS.items()]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    for sa in TOKENS:
        (path.parent / f"{sa}.token").write_text(f"t-{sa}\n")


def _tls_files(cert: Path, key: Path) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}


def envoy_pair(
    kind: str,
    protocol: str,
    ports: dict[str, int],
    certs: dict[str, tuple[Path, Path]],
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(client Envoy config, server Envoy config) for ``kind`` ``l7`` or ``tcp``. ``ports``:
    ``client``, ``client_admin``, ``server``, ``server_admin``, ``upstream`` (the responder);
    ``certs``: ``sleep`` and ``server`` as (chain file, key file)."""
    name = "tcp_proxy" if kind == "tcp" else f"{protocol}_proxy"
    template = string.Template((HERE / "envoy_configs" / f"{name}.yaml").read_text())

    def config(listen: int, admin: int, upstream: int) -> dict[str, Any]:
        text = template.substitute(admin_port=admin, listen_port=listen, upstream_port=upstream)
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded

    client = config(ports["client"], ports["client_admin"], ports["server"])
    client["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [_tls_files(*certs["sleep"])],
                "validation_context": {
                    "trusted_ca": {"filename": str(root)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": SERVER_ID}}
                    ],
                },
            },
        },
    }
    server = config(ports["server"], ports["server_admin"], ports["upstream"])
    server["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [_tls_files(*certs["server"])],
                "validation_context": {"trusted_ca": {"filename": str(root)}},
            },
        },
    }
    return client, server
