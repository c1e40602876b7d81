"""Merging the workers' admin answers (worker_admin): samples add up, histograms merge."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from metamesh.runtime.worker_admin import merge_clusters, merge_dashboard, merge_prometheus
from tests.support import prom

WORKER_0 = """# HELP istio_requests_total Requests
# TYPE istio_requests_total counter
istio_requests_total{destination_service="a",response_code="0"} 3.0
# HELP istio_request_duration_milliseconds Duration
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{destination_service="a",le="1.0"} 2.0
istio_request_duration_milliseconds_bucket{destination_service="a",le="+Inf"} 3.0
istio_request_duration_milliseconds_count{destination_service="a"} 3.0
istio_request_duration_milliseconds_sum{destination_service="a"} 2.5
# HELP metamesh_active_requests In flight
# TYPE metamesh_active_requests gauge
metamesh_active_requests 1.0
"""
WORKER_1 = """# HELP istio_requests_total Requests
# TYPE istio_requests_total counter
istio_requests_total{destination_service="a",response_code="0"} 4.0
istio_requests_total{destination_service="b",response_code="1"} 1.0
# HELP istio_request_duration_milliseconds Duration
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{destination_service="a",le="1.0"} 1.0
istio_request_duration_milliseconds_bucket{destination_service="a",le="+Inf"} 4.0
istio_request_duration_milliseconds_count{destination_service="a"} 4.0
istio_request_duration_milliseconds_sum{destination_service="a"} 9.0
# HELP metamesh_active_requests In flight
# TYPE metamesh_active_requests gauge
metamesh_active_requests 2.0
"""


def test_prometheus_samples_add_up() -> None:
    text = merge_prometheus([WORKER_0, WORKER_1]).decode()
    assert prom.total(text, "istio_requests_total", destination_service="a") == 7
    assert prom.total(text, "istio_requests_total", destination_service="b") == 1
    buckets = prom.samples(text, "istio_request_duration_milliseconds_bucket")
    assert [(s["le"], v) for s, v in buckets] == [("1.0", 3.0), ("+Inf", 7.0)]
    assert prom.total(text, "istio_request_duration_milliseconds_count") == 7
    assert prom.total(text, "istio_request_duration_milliseconds_sum") == 11.5
    assert prom.total(text, "metamesh_active_requests") == 3
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds == {
        "istio_requests": "counter",
        "istio_request_duration_milliseconds": "histogram",
        "metamesh_active_requests": "gauge",
    }
    assert merge_prometheus([WORKER_0]).decode() == merge_prometheus([WORKER_0, ""]).decode()


def host(address: str, health: str, rq: int, cx: int) -> dict[str, object]:
    return {"address": address, "weight": 1, "labels": {}, "health": health,
            "rq_active": rq, "cx_active": cx}  # fmt: skip


def cluster(name: str, *hosts: dict[str, object]) -> dict[str, object]:
    rq = sum(int(str(h["rq_active"])) for h in hosts)
    return {"name": name, "lb_policy": "ROUND_ROBIN", "rq_active": rq, "rq_pending": 0,
            "cx_active": 1, "hosts": list(hosts)}  # fmt: skip


def test_clusters_add_up_and_a_host_sick_anywhere_is_unhealthy() -> None:
    w0 = [cluster("c", host("h1:1", "healthy", 2, 1), host("h2:1", "healthy", 0, 1))]
    w1 = [cluster("c", host("h1:1", "healthy", 1, 1), host("h2:1", "unhealthy", 0, 0))]
    (merged,) = merge_clusters([w0, w1])
    assert merged["rq_active"] == 3 and merged["cx_active"] == 2
    h1, h2 = merged["hosts"]
    assert (h1["health"], h1["rq_active"], h1["cx_active"], h1["unhealthy_workers"]) == (
        "healthy", 3, 2, 0,
    )  # fmt: skip
    assert (h2["health"], h2["unhealthy_workers"]) == ("unhealthy", 1)


def dashboard(clients: int, healthy: int, edges: list[dict[str, object]]) -> dict[str, Any]:
    proxy = {"workload": "w", "clients": clients, "upstreams": 1, "in_flight": 0,
             "local_replies": 1,
             "clusters": {"c": {"healthy": healthy, "endpoints": 2}}}  # fmt: skip
    return {"time": 1.0, "proxy": proxy, "edges": edges, "routes": ["r"], "bounds_ms": [1.0]}


def edge(version: str, ok: int, errors: int, buckets: list[int]) -> dict[str, object]:
    return {"reporter": "source", "source": "w", "service": "s", "version": version,
            "workload": f"s-{version}", "protocol": "thrift", "ok": ok, "errors": errors,
            "buckets": buckets}  # fmt: skip


def test_dashboard_counts_and_edges_add_up() -> None:
    w0 = dashboard(3, 2, [edge("v1", 5, 1, [4, 2])])
    w1 = dashboard(4, 1, [edge("v1", 2, 0, [1, 1]), edge("v2", 7, 0, [7, 0])])
    merged = merge_dashboard([w0, w1])
    proxy = merged["proxy"]
    assert (proxy["clients"], proxy["local_replies"]) == (7, 2)
    assert proxy["clusters"] == {"c": {"healthy": 1, "endpoints": 2}}
    assert sorted((e["version"], e["ok"], e["errors"], e["buckets"]) for e in merged["edges"]) == [
        ("v1", 7, 1, [5, 3]),
        ("v2", 7, 0, [7, 0]),
    ]
    assert merged["routes"] == ["r"] and w0["proxy"]["clients"] == 3  # inputs untouched
