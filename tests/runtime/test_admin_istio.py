"""/stats/prometheus renders Istio's standard metrics with every label of Istio's set: request
count, duration and size histograms per label set and response flag, TCP counters over closed
and open client connections (the core driven in memory, the text read by prometheus_client)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from metamesh.proxy.telemetry import ISTIO_LABELS, TCP_LABELS
from metamesh.runtime.admin import istio_request_metrics, istio_tcp_metrics
from tests.proxy.harness import Harness, call, cluster, reply, snapshot
from tests.proxy.test_connection import by_method
from tests.support.prom import samples, total


class _Families:
    def __init__(self, h: Harness) -> None:
        self.h = h

    def collect(self):  # type: ignore[no-untyped-def]
        stats = self.h.core.stats
        yield from istio_request_metrics(stats.requests.values())
        yield from istio_tcp_metrics(stats.tcp, self.h.core.downstreams)


def scrape(h: Harness) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(h))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_every_istio_label_and_metric_is_rendered() -> None:
    v1 = "outbound|1|v1|svc.test"
    h = Harness(snapshot([by_method("get", v1)], [cluster(v1, 1001)], stat_prefix="svc.test"))
    d = h.client()
    gone = h.client()
    h.send(gone, call(1, method="zzz"))  # no route: NR
    h.core.downstream_closed(gone, h.now)
    h.send(d, call(1, method="get"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.respond(up, reply(uid, b"y" * 50))
    text = scrape(h)
    [(labels, n)] = samples(text, "istio_requests_total", response_code="0")
    assert set(labels) == set(ISTIO_LABELS) and n == 1
    assert labels["destination_version"] == "v1" and labels["response_flags"] == "-"
    assert total(text, "istio_requests_total", response_flags="NR", response_code="1") == 1
    for name in (
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ):
        assert total(text, f"{name}_count") == 2
        assert total(text, f"{name}_bucket", le="+Inf") == 2
    assert total(text, "istio_response_bytes_bucket", le="10.0") == 0
    [(tcp_labels, opened)] = samples(text, "istio_tcp_connections_opened_total")
    assert set(tcp_labels) == set(TCP_LABELS) and tcp_labels["request_protocol"] == "tcp"
    assert opened == 2
    assert total(text, "istio_tcp_connections_closed_total") == 1
    assert total(text, "istio_tcp_received_bytes_total") == d.bytes_in + gone.bytes_in > 0
    assert total(text, "istio_tcp_sent_bytes_total") == d.bytes_out + gone.bytes_out > 0


def test_dashboard_view_of_edges_and_routes() -> None:
    from metamesh.telemetry import view

    v1 = "outbound|1|v1|svc.test"
    snap = snapshot([by_method("get", v1)], [cluster(v1, 1001)], stat_prefix="svc.test")
    h = Harness(snap)
    d = h.client()
    h.send(d, call(1, method="get") + call(2, method="zzz"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.respond(up, reply(uid))
    by_version = {e["version"]: e for e in view.edges(h.core.stats.requests.values())}
    assert set(by_version) == {"v1", "unknown"}
    ok = by_version["v1"]
    assert (ok["service"], ok["ok"], ok["errors"], ok["protocol"]) == ("svc.test", 1, 0, "kvrpc")
    assert sum(ok["buckets"]) == 1 and len(ok["buckets"]) == len(view.bounds()) + 1
    assert by_version["unknown"]["errors"] == 1
    [listener] = view.routes(snap)
    assert listener["service"] == "svc.test"
    assert listener["routes"] == [
        {"name": "to-get", "targets": [{"cluster": v1, "subset": "v1", "weight": 100}]}
    ]
