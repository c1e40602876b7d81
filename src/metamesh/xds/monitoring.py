"""The monitoring port of the control plane and of the node agent: ``/ready`` and metrics.

``metamesh control-plane --admin-port N`` and ``metamesh agent --admin-port N`` serve, on
127.0.0.1 by default, what an operator scrapes and probes (istiod's monitoring port, 15014, and
the agent's status port do the same job in Istio):

* ``/stats/prometheus`` (also ``/metrics``): the refusals the security layers count, rendered
  at scrape time from the plain counters the servers keep (no metric object on their paths):
  ADS streams refused after TLS (``unauthenticated``, ``wrong_node``), connections the TLS
  fronts refused by reason (``not_tls``, ``untrusted_certificate``, ``handshake_timeout``, ...),
  certificate requests issued and refused by the CA, and on the agent the SDS refusals, the
  pushes to Envoy and the workload certificate's issue count, failures and expiry time;
* ``/ready``: ``200 LIVE`` once the process serves (the control plane: its ADS port is bound;
  the agent: the first certificate is in and SDS is served), ``503 PRE_INITIALIZING`` before;
  then one line per config source (ZooKeeper, Kubernetes: its state, since when, and whether
  the mesh serves its last good read), as a proxy's admin shows them in ``up``.

It is the proxy admin's HTTP handling cut down to two GET endpoints (one request per
connection, a bounded head, a 10 s read timeout), kept here rather than reusing
``runtime/admin.py`` because the xds layer imports no runtime code, and the agent has no proxy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from metamesh.http_get import serve_get

if TYPE_CHECKING:
    from collections import Counter

    from metamesh.security.agent import IdentityAgent
    from metamesh.security.cert_service import CertificateService
    from metamesh.xds.front import GrpcFront
    from metamesh.xds.sds import SdsServer
    from metamesh.xds.server import AdsServer

#: CertificateService outcomes that are refusals (the others are ``issued_<how>``).
CA_REFUSALS = ("unauthenticated", "bad_csr")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Monitored:
    """What one process exposes; a part it does not run stays None."""

    ads: AdsServer | None = None
    certificates: CertificateService | None = None
    sds: SdsServer | None = None
    agent: IdentityAgent | None = None
    ready: Callable[[], bool] = field(default=lambda: True)
    #: The config sources' lines for ``/ready`` (the control layer formats them).
    ready_detail: Callable[[], str] = field(default=lambda: "")
    #: The mesh dashboard's data (``/dashboard/data``; the page at ``/dashboard``): a blocking
    #: call that reads the proxies' admins, run on a thread (:mod:`metamesh.telemetry`).
    dashboard: Callable[[], dict[str, Any]] | None = None


def _by_reason(name: str, doc: str, counts: Counter[str], label: str = "reason") -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def _front_metrics(prefix: str, what: str, front: GrpcFront | None) -> Iterator[Metric]:
    if front is None:
        return
    yield CounterMetricFamily(
        f"{prefix}_connections_accepted", f"Connections the {what} front relayed", front.accepted
    )
    yield _by_reason(
        f"{prefix}_connections_refused",
        f"Connections the {what} front refused before gRPC, by reason",
        front.refused,
    )


class MonitoringCollector:
    """Turns the servers' counters into metric families on every scrape."""

    def __init__(self, parts: Monitored) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        parts = self.parts
        if parts.ads is not None:
            yield _by_reason(
                "metamesh_ads_streams_refused",
                "ADS streams refused after TLS: unauthenticated, wrong_node",
                parts.ads.refused,
            )
            yield from _front_metrics("metamesh_ads_tls", "TLS ADS", parts.ads.front)
        if parts.certificates is not None:
            yield from self._ca(parts.certificates.counts)
        if parts.sds is not None:
            yield from self._sds(parts.sds)
        if parts.agent is not None:
            yield from self._agent(parts.agent)

    def _ca(self, counts: Counter[str]) -> Iterator[Metric]:
        issued = CounterMetricFamily(
            "metamesh_ca_certificates_issued",
            "Workload certificates issued, by how the caller proved its identity",
            labels=["auth"],
        )
        for how in ("token", "cert"):
            issued.add_metric([how], counts.get(f"issued_{how}", 0))
        yield issued
        refused = CounterMetricFamily(
            "metamesh_ca_requests_refused",
            "Certificate requests refused: unauthenticated, bad_csr",
            labels=["reason"],
        )
        for reason in CA_REFUSALS:
            refused.add_metric([reason], counts.get(reason, 0))
        yield refused

    def _sds(self, sds: SdsServer) -> Iterator[Metric]:
        refused = dict(sds.front.refused) if sds.front is not None else {}
        refused["not_through_socket"] = sds.counts.get("not_through_socket", 0)
        family = CounterMetricFamily(
            "metamesh_sds_refused",
            "SDS clients refused: not_http2 (at the socket), not_through_socket (the bypass)",
            labels=["reason"],
        )
        for reason, n in sorted(refused.items()):
            family.add_metric([reason], n)
        yield family
        yield CounterMetricFamily(
            "metamesh_sds_pushes", "Secrets pushed on open SDS streams", sds.counts.get("pushes", 0)
        )
        if sds.front is not None:
            yield CounterMetricFamily(
                "metamesh_sds_connections_accepted",
                "Connections accepted on the SDS socket",
                sds.front.accepted,
            )

    def _agent(self, agent: IdentityAgent) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "metamesh_agent_certificates_issued",
            "Workload certificates received from the CA (the first and every rotation)",
            agent.issued,
        )
        yield CounterMetricFamily(
            "metamesh_agent_certificate_request_failures",
            "Certificate requests that failed (retried with back-off)",
            agent.failures,
        )
        if agent.not_after is not None:
            yield GaugeMetricFamily(
                "metamesh_agent_certificate_expiry_seconds",
                "When the workload certificate in use expires (Unix time)",
                value=agent.not_after.timestamp(),
            )


def render(parts: Monitored) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitoringCollector(parts))
    return generate_latest(registry)


def handle(parts: Monitored, target: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for a GET of ``target``."""
    path = target.partition("?")[0]
    if path == "/ready":
        detail = parts.ready_detail()
        if parts.ready():
            return 200, "text/plain", f"LIVE\n{detail}".encode()
        return 503, "text/plain", f"PRE_INITIALIZING\n{detail}".encode()
    if path in ("/stats/prometheus", "/metrics"):
        return 200, PROMETHEUS_TEXT, render(parts)
    if path == "/dashboard" and parts.dashboard is not None:
        page = resources.files("metamesh.telemetry").joinpath("dashboard.html").read_bytes()
        return 200, "text/html; charset=utf-8", page
    return 404, "text/plain", b"not found: /ready, /stats/prometheus\n"


async def _respond(parts: Monitored, target: str, from_loopback: bool) -> tuple[int, str, bytes]:
    if target.partition("?")[0] == "/dashboard/data" and parts.dashboard is not None:
        data = await asyncio.to_thread(parts.dashboard)  # it reads the proxies' admins
        return 200, "application/json", json.dumps(data).encode()
    return handle(parts, target)


async def start_monitoring(parts: Monitored, host: str, port: int) -> asyncio.Server:
    """Serve ``parts`` on ``host:port`` (0: any free port; read it from the server's socket)."""

    async def respond(target: str, from_loopback: bool) -> tuple[int, str, bytes]:
        return await _respond(parts, target, from_loopback)

    return await asyncio.start_server(lambda r, w: serve_get(respond, r, w), host, port)
