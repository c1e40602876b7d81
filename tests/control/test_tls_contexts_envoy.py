"""Real Envoy reads the mesh's TLS as translated: ``envoy --mode validate`` on a bootstrap made of
the translation's inbound listener (STRICT and PERMISSIVE: TLS chain, plaintext chain,
tls_inspector, DownstreamTlsContext with the SDS secrets) and clusters (the inbound STATIC one,
auto ISTIO_MUTUAL with SPIFFE SANs, DestinationRule MUTUAL with files, SNI and a DNS SAN).

Envoy has no MetaProtocol filter, so the listener's network filter is swapped for ``tcp_proxy``;
everything TLS is the translation's own output. The SDS secrets come from the node agent's
``sds-grpc`` cluster, as in Istio (validation does not connect).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from metamesh.control.translate import translate
from metamesh.security.ca import CertificateAuthority
from metamesh.security.spiffe import SpiffeId
from tests.control.cases import model_of
from tests.control.test_inbound import CLIENT, HOST, MESH, SERVER, dr, peer
from tests.runtime.test_mtls_e2e import issue
from tests.xds.test_envoy import envoy_binary

pytestmark = pytest.mark.interop


def as_json(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def bootstrap(mode: str, files: Path) -> dict[str, Any]:
    text = MESH + peer("default", "istio-system", f"{{mtls: {{mode: {mode}}}}}")
    server = translate(model_of(text), SERVER)
    listener = as_json(server.listeners["inbound_127.0.31.2_20001"])
    for chain in listener["filter_chains"]:
        chain["filters"] = [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3"
                    ".TcpProxy",
                    "stat_prefix": "inbound",
                    "cluster": f"inbound|9090||{HOST}",
                },
            }
        ]
    mutual = dr(
        f"{{mode: MUTUAL, clientCertificate: {files}/c.pem, privateKey: {files}/k.pem, "
        f"caCertificates: {files}/ca.pem, sni: hello.example, subjectAltNames: [hello.example]}}"
    )
    clusters = [as_json(c) for c in server.clusters.values()]
    auto = translate(model_of(text), CLIENT).clusters[f"outbound|9090||{HOST}"]
    assert len(auto.transport_socket_matches) == 2  # Istio's auto mTLS shape
    clusters.append(as_json(auto))
    by_file = as_json(translate(model_of(text + mutual), CLIENT).clusters[f"outbound|9090||{HOST}"])
    by_file["name"] += "-mutual"
    clusters.append(by_file)
    sds = {"pipe": {"path": str(files / "sds.sock")}}  # the node agent's socket (Istio's)
    clusters.append(
        {
            "name": "sds-grpc",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": "sds-grpc",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sds}}]}],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                    ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
        }
    )
    xds = {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}
    clusters.append(
        {
            "name": "xds",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": "xds",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": xds}}]}],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                    ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
        }
    )
    ads = {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
    }
    return {
        "node": {"id": "envoy", "cluster": "validate"},
        "dynamic_resources": {"ads_config": ads},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_envoy_validates_the_translated_tls(mode: str, tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    (tmp_path / "ca.pem").write_text(ca.root_pem)  # Envoy reads the files it is given
    cert, key = issue(ca, SpiffeId("cluster.local", "client-ns", "sleep"), tmp_path)
    cert.rename(tmp_path / "c.pem")
    key.rename(tmp_path / "k.pem")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(mode, tmp_path)))
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"configuration '{path}' OK" in done.stdout + done.stderr
