"""The mesh view's merge (pure): edges across proxies, routes once, health, the push log."""

from __future__ import annotations

from typing import Any

from metamesh.telemetry.mesh import MAX_PUSHES, MeshView, Reading, merge_edges


def edge(reporter: str, source: str, version: str, ok: int, errors: int = 0) -> dict[str, Any]:
    return {
        "reporter": reporter,
        "source": source,
        "service": "calc.test",
        "version": version,
        "workload": f"calc-{version}",
        "protocol": "thrift",
        "ok": ok,
        "errors": errors,
        "buckets": [ok, errors, 0],
    }


def reading(address: str, workload: str, version: str, *edges: dict[str, Any]) -> Reading:
    data = {
        "proxy": {"workload": workload, "state": "LIVE", "config_version": version},
        "xds": {"last_nack": None},
        "bounds_ms": [1.0, 5.0],
        "edges": list(edges),
        "routes": [{"listener": "calc", "address": "127.0.0.1:9090", "routes": []}],
    }
    return Reading(address, data)


def test_edges_sum_and_the_server_side_counts_only_clients_without_a_proxy() -> None:
    merged = merge_edges(
        [
            edge("source", "web", "v1", 5),
            edge("source", "web", "v1", 2, 1),  # the same edge seen by a second client proxy
            edge("destination", "web", "v1", 7, 1),  # the server side of those: not twice
            edge("destination", "unknown", "v1", 4),  # a client without a proxy: kept
        ]
    )
    by = {(e["reporter"], e["source"]): e for e in merged}
    assert set(by) == {("source", "web"), ("destination", "unknown")}
    assert (by["source", "web"]["ok"], by["source", "web"]["errors"]) == (7, 1)
    assert by["source", "web"]["buckets"] == [7, 1, 0]


def test_health_routes_and_pushes_across_rounds() -> None:
    view = MeshView()
    a = ("127.0.0.1:15000", "web")
    first = view.merge(
        [
            reading(*a, "v1", edge("source", "web", "v1", 1)),
            Reading("127.0.0.1:1", error="refused"),
        ],
        1.0,
        "10:00:00",
    )
    assert [p["state"] for p in first["proxies"]] == ["LIVE", "unreachable"]
    assert first["proxies"][1]["error"] == "refused"
    assert len(first["routes"]) == 1 and first["bounds_ms"] == [1.0, 5.0]
    assert first["pushes"] == [
        {"version": "v1", "time": "10:00:00", "proxy": "web (127.0.0.1:15000)", "status": "ACK"}
    ]
    again = reading(*a, "v1")
    assert view.merge([again], 2.0, "10:00:01")["pushes"] == first["pushes"]  # nothing new
    nacked = reading(*a, "v2")  # took v2, then rejected the next one
    assert nacked.data is not None
    nacked.data["xds"]["last_nack"] = "bad regex"
    pushes = view.merge([nacked], 3.0, "10:00:02")["pushes"]
    assert [(p["version"], p["status"]) for p in pushes] == [
        ("v2", "NACK: bad regex"),
        ("v2", "ACK"),
        ("v1", "ACK"),
    ]
    for i in range(MAX_PUSHES + 5):
        view.merge([reading(*a, f"x{i}")], 4.0 + i, "10:00:03")
    assert len(view.pushes) == MAX_PUSHES and view.pushes[0]["version"] == f"x{MAX_PUSHES + 4}"
