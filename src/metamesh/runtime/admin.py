"""The admin HTTP server (default 127.0.0.1:15000): readiness, config, clusters, metrics.

A deliberately small asyncio HTTP/1.1 handler (GET only, one request per connection) so the
proxy needs no web framework. Endpoints, named as in Envoy's admin API:

* ``/ready``: ``200 LIVE`` when serving, ``503 DRAINING`` / ``503 PRE_INITIALIZING`` otherwise;
* ``/server_info``: version, state, build (pure Python or native, with the compiled modules)
  and the event loop serving traffic (uvloop or asyncio);
* ``/config_dump``: the live snapshot as JSON, secrets redacted (:mod:`.redact`;
  ``?include_secrets`` from a loopback address shows them);
* ``/clusters``: per endpoint ``cluster::host:port::<stat>::<value>`` lines (Envoy's text form:
  health, weight, active requests, upstream connections); ``?format=json`` for JSON;
* ``/stats/prometheus``: Prometheus text exposition, rendered at scrape time by a custom
  collector over the core's plain-int counters (``prometheus_client.generate_latest``);
* ``/dashboard``: the live view (service graph, rates, routes in force, health) as one HTML
  page with its script inline, polling ``/dashboard/data`` (:mod:`metamesh.telemetry.view`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from metamesh import __version__, build_info
from metamesh.http_get import serve_get
from metamesh.proxy.stats import (
    COUNTERS,
    DURATION_BUCKETS_MS,
    GAUGES,
    SIZE_BUCKETS,
    CommandStats,
    RequestStats,
    TcpStats,
)
from metamesh.proxy.telemetry import ISTIO_LABELS, NO_FLAGS, TCP_LABELS, full_labels, tcp_labels
from metamesh.runtime.loops import loop_name
from metamesh.runtime.redact import redact
from metamesh.telemetry import view

if TYPE_CHECKING:
    from metamesh.proxy.client_cap import ListenerClients
    from metamesh.proxy.config import Snapshot
    from metamesh.proxy.listener import Downstream
    from metamesh.runtime.server import ProxyServer


class ProxyCollector:
    """Turns the core's counters into metric families on every scrape."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        core = self.server.core
        stats = core.stats
        yield from istio_request_metrics(stats.requests.values())
        yield from istio_tcp_metrics(stats.tcp, core.downstreams)
        yield from command_metrics(stats.commands.values())
        for attr, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr))
        for attr, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=getattr(stats, attr))
        tls = self.server.tls
        if tls is not None:
            yield CounterMetricFamily(
                "metamesh_tls_handshakes",
                "Client TLS handshakes completed with a verified mesh identity",
                value=tls.stats.handshakes,
            )
            yield CounterMetricFamily(
                "metamesh_tls_plaintext_connections",
                "Client connections a PERMISSIVE listener served in plaintext",
                value=tls.stats.plaintext,
            )
            refused = CounterMetricFamily(
                "metamesh_tls_refused",
                "Client connections refused by the TLS layer, by reason",
                labels=["reason"],
            )
            for reason, n in sorted(tls.stats.refused.items()):
                refused.add_metric([reason], n)
            yield refused
            yield CounterMetricFamily(
                "metamesh_tls_certificate_rotations",
                "Workload certificates swapped in after the first",
                value=tls.rotations,
            )
        if self.server.sidecar is not None:  # interception and DNS (runtime/sidecar.py)
            yield from self.server.sidecar.metrics()
        if self.server.workers is not None:  # --workers N (runtime/workers.py)
            yield from self.server.workers.metrics()
        yield from _listener_clients(core.listener_clients)
        yield CounterMetricFamily(
            "metamesh_downstream_accept_errors",
            "Accepts that failed for lack of file descriptors (EMFILE/ENFILE), and pauses of "
            "accepting near the open-file limit (runtime/fd_limits.py)",
            value=self.server.accept_errors,
        )
        yield GaugeMetricFamily(
            "metamesh_listeners_unbound",
            "Configured listeners whose address could not be bound (retried with backoff)",
            value=len(self.server.unbound),
        )
        replies = CounterMetricFamily(
            "metamesh_local_replies", "Requests answered by the proxy itself", labels=["reason"]
        )
        for kind, n in stats.local_replies.items():
            replies.add_metric([kind.value], n)
        yield replies
        live = sum(d.codec.dropped_mutations for d in core.downstreams) + sum(
            u.codec.dropped_mutations for u in core.upstreams
        )
        yield CounterMetricFamily(
            "metamesh_mutations_dropped",
            "Mutations a codec could not carry in its framing",
            value=stats.mutations_dropped + live,
        )
        active = GaugeMetricFamily(
            "metamesh_cluster_active_requests", "Requests in flight per cluster", labels=["cluster"]
        )
        conns = GaugeMetricFamily(
            "metamesh_cluster_upstream_connections",
            "Upstream connections per cluster",
            labels=["cluster"],
        )
        for name, cs in sorted(core.clusters.items()):
            active.add_metric([name], cs.active_requests)
            conns.add_metric([name], cs.connections)
        yield active
        yield conns


def _cumulative(bounds: list[str], counts: list[int]) -> list[tuple[str, float]]:
    total, buckets = 0, []
    for bound, n in zip(bounds, counts, strict=True):
        total += n
        buckets.append((bound, float(total)))
    return buckets


def istio_request_metrics(all_stats: Iterable[RequestStats]) -> Iterator[Metric]:
    """istio_requests_total and the duration, request size and response size histograms."""
    labels = list(ISTIO_LABELS)
    total = CounterMetricFamily("istio_requests", "Requests handled by the proxy", labels=labels)
    duration = HistogramMetricFamily(
        "istio_request_duration_milliseconds", "Request duration in milliseconds", labels=labels
    )
    request_size = HistogramMetricFamily(
        "istio_request_bytes", "Request sizes in bytes (whole frames)", labels=labels
    )
    response_size = HistogramMetricFamily(
        "istio_response_bytes", "Response sizes in bytes (whole frames)", labels=labels
    )
    ms_bounds = [*(repr(float(b)) for b in DURATION_BUCKETS_MS), "+Inf"]
    size_bounds = [*(repr(float(b)) for b in SIZE_BUCKETS), "+Inf"]
    series = [(rs, NO_FLAGS) for rs in all_stats]
    series += [(c, f) for rs, _ in list(series) for f, c in sorted(rs.flagged.items())]
    for rs, flags in series:
        for code in (0, 1):
            if not rs.count[code]:
                continue
            values = full_labels(rs.labels, str(code), flags)
            total.add_metric(values, rs.count[code])
            duration.add_metric(values, _cumulative(ms_bounds, rs.buckets[code]), rs.sum_ms[code])
            request_size.add_metric(
                values, _cumulative(size_bounds, rs.request_buckets[code]), rs.request_bytes[code]
            )
            response_size.add_metric(
                values, _cumulative(size_bounds, rs.response_buckets[code]), rs.response_bytes[code]
            )
    yield from (total, duration, request_size, response_size)


def command_metrics(all_stats: Iterable[CommandStats]) -> Iterator[Metric]:
    """metamesh_command_* (``metamesh.filters.command_stats``): requests per command, and
    upstream replies by response code with their duration."""
    labels = ["destination_service", "request_protocol", "command"]
    total = CounterMetricFamily(
        "metamesh_command_requests", "Requests per command (local replies included)", labels=labels
    )
    duration = HistogramMetricFamily(
        "metamesh_command_duration_milliseconds",
        "Upstream reply time per command, by response code",
        labels=[*labels, "response_code"],
    )
    ms_bounds = [*(repr(float(b)) for b in DURATION_BUCKETS_MS), "+Inf"]
    for cs in all_stats:
        total.add_metric(list(cs.labels), cs.requests)
        for code in (0, 1):
            if cs.count[code]:
                buckets = _cumulative(ms_bounds, cs.buckets[code])
                duration.add_metric([*cs.labels, str(code)], buckets, cs.sum_ms[code])
    yield from (total, duration)


def istio_tcp_metrics(
    closed: Mapping[tuple[str, ...], TcpStats], open_now: Iterable[Downstream]
) -> Iterator[Metric]:
    """istio_tcp_* over client connections: the closed ones' totals plus the open ones."""
    totals: dict[tuple[str, ...], list[int]] = {
        base: [ts.closed, ts.closed, ts.received, ts.sent] for base, ts in closed.items()
    }
    labels_of = {id(ts): base for base, ts in closed.items()}
    for d in open_now:
        base = labels_of.get(id(d.tcp))
        if base is None:
            continue
        row = totals[base]
        row[0] += 1
        row[2] += d.bytes_in
        row[3] += d.bytes_out
    labels = list(TCP_LABELS)
    families = [
        CounterMetricFamily(
            "istio_tcp_connections_opened", "Client connections opened", labels=labels
        ),
        CounterMetricFamily(
            "istio_tcp_connections_closed", "Client connections closed", labels=labels
        ),
        CounterMetricFamily(
            "istio_tcp_received_bytes", "Bytes received from clients", labels=labels
        ),
        CounterMetricFamily("istio_tcp_sent_bytes", "Bytes sent to clients", labels=labels),
    ]
    for base, row in totals.items():
        values = tcp_labels(base)
        for family, value in zip(families, row, strict=True):
            family.add_metric(values, value)
    yield from families


def _listener_clients(clients: dict[str, ListenerClients]) -> Iterator[Metric]:
    """Client connections per listener, and what its ``max_connections`` cap did."""
    active = GaugeMetricFamily(
        "metamesh_listener_downstream_cx_active",
        "Open client connections per listener",
        labels=["listener"],
    )
    evicted = CounterMetricFamily(
        "metamesh_listener_downstream_cx_evicted",
        "Idle clients of a listener closed to make room for a new one (a connection cap)",
        labels=["listener"],
    )
    refused = CounterMetricFamily(
        "metamesh_listener_downstream_cx_overflow",
        "New clients of a listener refused at a connection cap (no client was idle)",
        labels=["listener"],
    )
    for name, c in sorted(clients.items()):
        active.add_metric([name], c.count)
        evicted.add_metric([name], c.evicted)
        refused.add_metric([name], c.refused)
    yield from (active, evicted, refused)


def render_prometheus(server: ProxyServer) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(server))
    return generate_latest(registry)


def clusters_view(server: ProxyServer) -> list[dict[str, Any]]:
    out = []
    for name, cs in sorted(server.core.clusters.items()):
        conns: dict[int, int] = {}
        for up in server.core.upstreams:
            if up.cluster is cs:
                conns[up.endpoint_index] = conns.get(up.endpoint_index, 0) + 1
        hosts = [
            {
                "address": f"{e.address}:{e.port}",
                "weight": e.weight,
                "labels": dict(e.labels),
                "health": "healthy" if cs.lb.healthy[i] else "unhealthy",
                "rq_active": cs.lb.active[i],
                "cx_active": conns.get(i, 0),
            }
            for i, e in enumerate(cs.config.endpoints)
        ]
        out.append(
            {
                "name": name,
                "lb_policy": cs.config.lb_policy.value,
                "rq_active": cs.active_requests,
                "rq_pending": cs.pending_requests,
                "cx_active": cs.connections,
                "hosts": hosts,
            }
        )
    return out


def clusters_text(view: list[dict[str, Any]]) -> str:
    lines = []
    for c in view:
        for h in c["hosts"]:
            prefix = f"{c['name']}::{h['address']}"
            lines.append(f"{prefix}::health_flags::{h['health']}")
            lines.append(f"{prefix}::weight::{h['weight']}")
            lines.append(f"{prefix}::rq_active::{h['rq_active']}")
            lines.append(f"{prefix}::cx_active::{h['cx_active']}")
    return "\n".join(lines) + "\n"


def server_info(server: ProxyServer) -> dict[str, Any]:
    state = "LIVE" if server.ready else "DRAINING" if server.draining else "PRE_INITIALIZING"
    return {
        "version": __version__,
        "state": state,
        "build": build_info.describe(),
        "loop": loop_name(server.loop) if server.loop is not None else None,
        "compiled_modules": build_info.compiled_modules(),
        **({"config_sources": _sources(server)} if server.config_sources is not None else {}),
    }


def _sources(server: ProxyServer) -> dict[str, Any]:
    """The config sources' status, read from the control thread's objects: a copy may meet a
    dict changing size mid-read, so it is read again (the values are plain data)."""
    assert server.config_sources is not None
    for _ in range(5):
        try:
            return server.config_sources()
        except RuntimeError:
            continue
    return {}


def ready_detail(server: ProxyServer) -> str:
    """One line per config source for ``/ready``: its state, since when, and whether the mesh
    serves its last good read (the proxy stays LIVE on the config in force)."""
    if server.config_sources is None:
        return ""
    return sources_detail(_sources(server))


def sources_detail(sources: Mapping[str, Any]) -> str:
    """The ``/ready`` lines of config sources' statuses (``MergedSources.status``); the
    standalone control plane's monitoring port shows the same."""
    lines = []
    for name, status in sorted(sources.items()):
        since = status.get("since")
        when = (
            datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat(timespec="seconds")
            if isinstance(since, (int, float))
            else "?"
        )
        state = status.get("state")
        behind = state not in ("connected", "synced") or status.get("failing")
        note = " (serving its last good read)" if behind else ""
        lines.append(f"{name} {status.get('source', '')}: {state} since {when}{note}")
    return "".join(line + "\n" for line in lines)


def dashboard_data(server: ProxyServer) -> dict[str, Any]:
    """What the live dashboard (``/dashboard``) polls: graph edges, routes in force, health."""
    core = server.core
    stats = core.stats
    clusters = {
        name: {"healthy": sum(cs.lb.healthy), "endpoints": len(cs.lb.healthy)}
        for name, cs in sorted(core.clusters.items())
    }
    return {
        "time": server.now(),
        "proxy": {
            "workload": stats.local.name,
            "namespace": stats.local.namespace,
            "state": server_info(server)["state"],
            "config_version": core.snapshot.version,
            "clients": stats.active_downstream_connections,
            "upstreams": stats.active_upstream_connections,
            "in_flight": stats.active_requests,
            "local_replies": sum(stats.local_replies.values()),
            "clusters": clusters,
        },
        "xds": {"last_nack": server.last_nack() if server.last_nack is not None else None},
        "bounds_ms": view.bounds(),
        "edges": view.edges(stats.requests.values()),
        "routes": view.routes(core.snapshot),
    }


def handle(server: ProxyServer, target: str, from_loopback: bool = False) -> tuple[int, str, bytes]:
    """(status, content type, body) for a GET of ``target``; secrets in ``/config_dump`` are
    shown only for ``?include_secrets`` asked from a loopback address (:mod:`.redact`)."""
    path, _, query = target.partition("?")
    if path == "/ready":
        detail = ready_detail(server)
        if server.ready:
            return 200, "text/plain", f"LIVE\n{detail}".encode()
        state = "DRAINING" if server.draining else "PRE_INITIALIZING"
        return 503, "text/plain", f"{state}\n{detail}".encode()
    if path == "/server_info":
        return 200, "application/json", json.dumps(server_info(server), indent=2).encode()
    if path == "/config_dump":
        return 200, "application/json", config_dump(server.core.snapshot, query, from_loopback)
    if path == "/clusters":
        view = clusters_view(server)
        if "format=json" in query:
            return 200, "application/json", json.dumps({"clusters": view}, indent=2).encode()
        return 200, "text/plain", clusters_text(view).encode()
    if path == "/dashboard":
        page = resources.files("metamesh.telemetry").joinpath("dashboard.html").read_bytes()
        return 200, "text/html; charset=utf-8", page
    if path == "/dashboard/data":
        return 200, "application/json", json.dumps(dashboard_data(server)).encode()
    if path in ("/stats/prometheus", "/metrics"):
        return 200, PROMETHEUS_TYPE, render_prometheus(server)
    return 404, "text/plain", b"not found\n"


def config_dump(snapshot: Snapshot, query: str, from_loopback: bool) -> bytes:
    """``/config_dump`` of ``snapshot``: secrets redacted unless ``include_secrets`` is asked
    from a loopback address."""
    dump: object = snapshot.to_dict()
    if not (from_loopback and wants_secrets(query)):
        dump = redact(dump)
    return json.dumps(dump, indent=2).encode()


def wants_secrets(query: str) -> bool:
    """``include_secrets`` in the query string, bare or ``=1``/``=true`` (``=0``, ``=false``
    or anything else: not asked)."""
    values = parse_qs(query, keep_blank_values=True).get("include_secrets", [])
    return any(v.strip().lower() in ("", "1", "true") for v in values)


async def answer(
    server: ProxyServer, target: str, from_loopback: bool = False
) -> tuple[int, str, bytes]:
    """:func:`handle`, for the whole proxy when it runs several workers (:mod:`.worker_admin`)."""
    if server.workers is not None:
        from metamesh.runtime.worker_admin import MERGED, merged_answer

        if target.partition("?")[0] in MERGED:
            return await merged_answer(server, target, from_loopback)
    return handle(server, target, from_loopback)


PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def start_admin(server: ProxyServer, host: str, port: int) -> asyncio.Server:
    """Start the admin HTTP server for ``server`` on ``host:port``."""

    async def respond(target: str, from_loopback: bool) -> tuple[int, str, bytes]:
        return await answer(server, target, from_loopback)

    return await asyncio.start_server(lambda r, w: serve_get(respond, r, w), host, port)
