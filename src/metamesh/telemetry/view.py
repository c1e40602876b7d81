"""The live dashboard's data: the service graph, routes in force and the proxy's health as JSON.

Built at request time from what the proxy already keeps: every
:class:`~metamesh.proxy.stats.RequestStats` is an edge (source workload -> service ->
destination version/workload, by protocol) with its cumulative counts (ok, error) and duration
histogram; the page polls ``/dashboard/data`` every second and turns two readings into rates,
error ratios and a p99 of the last interval (so the server keeps no history). Routes come from
the snapshot in force: each listener's routes with their clusters' subsets and weights, as the
proxy applies them now.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metamesh.proxy.config import Snapshot
from metamesh.proxy.stats import DURATION_BUCKETS_MS, RequestStats
from metamesh.proxy.telemetry import BASE_LABELS

_AT = {name: i for i, name in enumerate(BASE_LABELS)}


def edges(all_stats: Iterable[RequestStats]) -> list[dict[str, Any]]:
    """One edge per (reporter, source, service, version, workload, protocol): cumulative ok and
    error counts and non-cumulative duration buckets (ok and error together)."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for rs in all_stats:
        labels = rs.labels
        if not labels:
            continue
        key = tuple(
            labels[_AT[n]]
            for n in (
                "reporter",
                "source_workload",
                "destination_service",
                "destination_version",
                "destination_workload",
                "request_protocol",
            )
        )
        edge = out.get(key)
        if edge is None:
            edge = out[key] = {
                "reporter": key[0],
                "source": key[1],
                "service": key[2],
                "version": key[3],
                "workload": key[4],
                "protocol": key[5],
                "ok": 0,
                "errors": 0,
                "buckets": [0] * (len(DURATION_BUCKETS_MS) + 1),
            }
        for one in (rs, *rs.flagged.values()):
            edge["ok"] += one.count[0]
            edge["errors"] += one.count[1]
            for code in (0, 1):
                for i, n in enumerate(one.buckets[code]):
                    edge["buckets"][i] += n
    return [e for e in out.values() if e["ok"] or e["errors"]]


def routes(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Each listener's routes as in force: name and (subset, host, weight) targets."""
    out = []
    for listener in sorted(snapshot.listeners.values(), key=lambda x: x.name):
        rc = snapshot.route_configs.get(listener.route_config_name)
        if rc is None:
            continue
        table = []
        for route in rc.routes:
            action = route.route
            targets = (
                [(w.name, w.weight) for w in action.weighted_clusters]
                if action.weighted_clusters
                else [(action.cluster, 100)]
            )
            table.append(
                {
                    "name": route.name,
                    "targets": [
                        {"cluster": c, "subset": _subset(c), "weight": w} for c, w in targets
                    ],
                }
            )
        out.append(
            {
                "listener": listener.name,
                "address": f"{listener.address}:{listener.port}",
                "service": listener.service or listener.name,
                "protocol": listener.codec,
                "routes": table,
            }
        )
    return out


def _subset(cluster: str) -> str:
    parts = cluster.split("|")
    return (parts[2] or "all") if len(parts) == 4 else cluster


def bounds() -> list[float]:
    """The duration buckets' upper bounds (ms); the last bucket is +Inf."""
    return [float(b) for b in DURATION_BUCKETS_MS]
