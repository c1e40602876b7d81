"""The admin of a proxy with ``--workers N`` answers for all of its processes.

Worker 0 serves the admin port. For the endpoints whose numbers live in every worker it asks
the other workers the same question over their pipes (:meth:`WorkerSet.ask`, each answering
with its own :func:`~metamesh.runtime.admin.handle`) and merges:

* ``/stats/prometheus`` (``/metrics``): the same sample (name and labels) from every worker is
  added up. Counters and gauges (connections, requests in flight) add; histograms merge exactly
  because their buckets, ``_count`` and ``_sum`` add (every worker uses the same bounds). The
  text is parsed and written back with prometheus_client's own parser and exposition.
* ``/clusters``: per cluster and host, ``rq_active``, ``cx_active`` and ``rq_pending`` add up;
  each worker keeps its own outlier detection and health checks, so a host is ``healthy`` only
  when every worker finds it healthy (``unhealthy_workers`` counts the others in the JSON).
* ``/server_info``: worker 0's, plus ``workers``: pid, state, restarts and config version of
  each (:meth:`WorkerSet.info`).

``/dashboard/data``: worker 0's view with the counts and graph edges of every worker added up
(:func:`merge_dashboard`). ``/config_dump`` is the snapshot as configured, which every worker
runs (worker 0 applies a new one only after handing it to the others): each worker's local
rate limit buckets hold its share (:mod:`.bucket_share`). ``/ready`` is worker 0's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from metamesh.runtime.admin import (
    PROMETHEUS_TYPE,
    clusters_text,
    config_dump,
    handle,
    server_info,
)

if TYPE_CHECKING:
    from metamesh.runtime.server import ProxyServer

MERGED = (
    "/stats/prometheus",
    "/metrics",
    "/clusters",
    "/server_info",
    "/config_dump",
    "/dashboard/data",
)
EDGE_KEY = ("reporter", "source", "service", "version", "workload", "protocol")


class _MergedFamilies:
    """A collector yielding families whose samples were added up across texts."""

    def __init__(self, texts: list[str]) -> None:
        self.families: dict[str, tuple[str, str, dict[tuple[Any, ...], Any]]] = {}
        for text in texts:
            for family in text_string_to_metric_families(text):
                known = self.families.setdefault(
                    family.name, (family.documentation, family.type, {})
                )
                samples = known[2]
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    before = samples.get(key)
                    if before is None:
                        samples[key] = [s.name, s.labels, s.value]
                    elif s.name.endswith("_created"):
                        before[2] = min(before[2], s.value)
                    else:
                        before[2] += s.value

    def collect(self) -> Iterator[Metric]:
        for name, (doc, kind, samples) in self.families.items():
            metric = Metric(name, doc, kind)
            for sample_name, labels, value in samples.values():
                metric.add_sample(sample_name, labels, value)
            yield metric


def merge_prometheus(texts: list[str]) -> bytes:
    """One exposition whose every sample is the sum of that sample in ``texts``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MergedFamilies(texts))
    return generate_latest(registry)


def merge_clusters(views: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``/clusters?format=json`` views of several workers as one (see the module docstring)."""
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for cluster in view:
            into = merged.get(cluster["name"])
            if into is None:
                into = merged[cluster["name"]] = {**cluster, "hosts": []}
                into.update(rq_active=0, rq_pending=0, cx_active=0)
            for key in ("rq_active", "rq_pending", "cx_active"):
                into[key] += cluster[key]
            hosts = {h["address"]: h for h in into["hosts"]}
            for host in cluster["hosts"]:
                sick = host["health"] != "healthy"
                known = hosts.get(host["address"])
                if known is None:
                    known = {**host, "rq_active": 0, "cx_active": 0, "unhealthy_workers": 0}
                    hosts[host["address"]] = known
                    into["hosts"].append(known)
                known["rq_active"] += host["rq_active"]
                known["cx_active"] += host["cx_active"]
                known["unhealthy_workers"] += int(sick)
                if sick:
                    known["health"] = host["health"]
    return [merged[name] for name in sorted(merged)]


def merge_dashboard(views: list[dict[str, Any]]) -> dict[str, Any]:
    """``/dashboard/data`` of several workers as one: worker 0's (routes, state, version) with
    the counts added up, each graph edge's counts and buckets added up, and per cluster the
    endpoints every worker finds healthy (the fewest any worker finds)."""
    first, *rest = views
    merged = {**first, "proxy": dict(first["proxy"])}
    proxy = merged["proxy"]
    clusters = {name: dict(c) for name, c in proxy["clusters"].items()}
    edges = {
        tuple(e[k] for k in EDGE_KEY): dict(e, buckets=list(e["buckets"])) for e in first["edges"]
    }
    for view in rest:
        for key in ("clients", "upstreams", "in_flight", "local_replies"):
            proxy[key] += view["proxy"][key]
        for name, c in view["proxy"]["clusters"].items():
            if name in clusters:
                clusters[name]["healthy"] = min(clusters[name]["healthy"], c["healthy"])
        for e in view["edges"]:
            into = edges.setdefault(
                tuple(e[k] for k in EDGE_KEY),
                dict(e, ok=0, errors=0, buckets=[0] * len(e["buckets"])),
            )
            into["ok"] += e["ok"]
            into["errors"] += e["errors"]
            into["buckets"] = [a + b for a, b in zip(into["buckets"], e["buckets"], strict=True)]
    proxy["clusters"] = clusters
    merged["edges"] = list(edges.values())
    return merged


async def merged_answer(
    server: ProxyServer, target: str, from_loopback: bool
) -> tuple[int, str, bytes]:
    """The whole proxy's answer to ``target`` (one of :data:`MERGED`)."""
    workers = server.workers
    assert workers is not None
    path, _, query = target.partition("?")
    if path in ("/stats/prometheus", "/metrics"):
        own = handle(server, target, from_loopback)[2]
        others = [body for status, _, body in await workers.ask(target) if status == 200]
        texts = [own.decode(), *(body.decode() for body in others)]
        return 200, PROMETHEUS_TYPE, merge_prometheus(texts)
    if path == "/clusters":
        asked = "/clusters?format=json"
        bodies = [handle(server, asked)[2]]
        bodies += [body for status, _, body in await workers.ask(asked) if status == 200]
        view = merge_clusters([json.loads(b)["clusters"] for b in bodies])
        if "format=json" in query:
            return 200, "application/json", json.dumps({"clusters": view}, indent=2).encode()
        return 200, "text/plain", clusters_text(view).encode()
    if path == "/dashboard/data":
        views = [json.loads(handle(server, target)[2])]
        views += [
            json.loads(body) for status, _, body in await workers.ask(target) if status == 200
        ]
        return 200, "application/json", json.dumps(merge_dashboard(views)).encode()
    if path == "/server_info":
        info = {**server_info(server), "workers": await workers.info(server)}
        return 200, "application/json", json.dumps(info, indent=2).encode()
    # /config_dump: the snapshot as configured, not worker 0's rate limit share
    return 200, "application/json", config_dump(workers.snapshot, query, from_loopback)
