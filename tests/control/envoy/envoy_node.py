"""A real Envoy taking listeners, routes, clusters and endpoints from metamesh's ADS server.

:class:`EnvoyNode` starts ``.venv-envoy``'s Envoy (``--concurrency 1``, a unique
``--base-id``, a new session, killed on close) with a bootstrap whose only static resource is
the ADS cluster (and the node ``metadata`` given, e.g. ``METAMESH_LISTEN_ADDRESS``); LDS and
CDS come over ADS, and through them RDS (thrift_proxy's and
dubbo_proxy's route tables) and EDS. Envoy sends ``user_agent_name: envoy``, which is what
gives it the Envoy translation (nothing in the bootstrap asks for it). Helpers read its admin:
``/config_dump`` (what it loaded, and any ``error_state`` of a rejected resource) and
``/stats``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.xds.test_envoy import envoy_binary, wait_for
from tests.xds.test_sds_envoy import common_tls

BOOTSTRAP = """
node: {{id: {node}, cluster: metamesh-test, metadata: {metadata}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: metamesh_xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: metamesh_xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: metamesh_xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
#: Istio's node agent SDS cluster (``metamesh agent --sds-socket``), for inbound mTLS.
SDS_CLUSTER = """
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: {path}}}}}}}
"""
#: The ADS cluster's client TLS (appended to it: it is the bootstrap's last cluster).
XDS_TLS = """    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"""
_instances = itertools.count()


class EnvoyNode:
    """One Envoy process; ``admin`` is its admin base URL once started."""

    def __init__(
        self,
        ads_port: int,
        workdir: Path,
        node: str = "envoy-e2e",
        metadata: Mapping[str, object] | None = None,
        *,
        sds_socket: Path | None = None,
        api_type: str = "GRPC",
        xds_tls_peer: str | None = None,
    ) -> None:
        self.node = node
        self.workdir = workdir
        config = workdir / f"{node}.yaml"
        meta = json.dumps(metadata or {})
        text = BOOTSTRAP.format(node=node, port=ads_port, metadata=meta, api_type=api_type)
        if xds_tls_peer is not None:  # ADS over TLS with the SDS certificate (docs/security.md)
            text += XDS_TLS + common_tls("GRPC", xds_tls_peer, 8) + "\n"
        if sds_socket is not None:
            text += SDS_CLUSTER.format(path=sds_socket)
        config.write_text(text)
        admin_file = workdir / f"{node}.admin"
        self.log_path = workdir / f"{node}.log"
        log = self.log_path.open("wb")
        base_id = 2_000_000 + (os.getpid() % 100_000) * 16 + next(_instances) % 16
        self.proc = subprocess.Popen(
            [
                str(envoy_binary()),
                *("-c", str(config), "--concurrency", "1", "--base-id", str(base_id)),
                *("--admin-address-path", str(admin_file), "-l", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for(lambda: admin_file.exists() and admin_file.read_text().strip() != "", "admin")
        except AssertionError:
            self.close()
            raise AssertionError(f"Envoy did not start:\n{self.log()}") from None
        self.admin = f"http://{admin_file.read_text().strip()}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.admin}{path}", timeout=5) as response:
            text: str = response.read().decode()
            return text

    def server_state(self) -> str:
        """``/ready``'s state (LIVE, PRE_INITIALIZING, INITIALIZING, ...): Envoy answers it with
        503 until LIVE, so the body is read from the error too."""
        try:
            return self.get("/ready").strip()
        except urllib.error.HTTPError as exc:
            return exc.read().decode().strip()

    def config_dump(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.get("/config_dump?include_eds"))
        return parsed

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with ``prefix`` (``/stats`` text format)."""
        out: dict[str, int] = {}
        for line in self.get("/stats").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def error_states(dump: dict[str, Any]) -> list[str]:
    """Every ``error_state`` in a config dump: a resource Envoy rejected (its NACK)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "error_state" in value:
                found.append(json.dumps(value["error_state"]))
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(dump)
    return found
