"""Outlier detection: ejection after consecutive errors, return after the ejection time."""

from __future__ import annotations

from metamesh.proxy.config import OutlierDetection
from tests.proxy.filters.support import policy_harness, route, tick
from tests.proxy.harness import call, reply

OD = OutlierDetection(
    consecutive_errors=3, interval=10.0, base_ejection_time=30.0, max_ejection_percent=50
)


def test_ejects_after_consecutive_errors_and_returns_after_base_ejection_time() -> None:
    h = policy_harness([route("get")], ports=(1001, 1002), outlier_detection=OD)
    d = h.client()
    lb = h.core.clusters["outbound|9|v1|svc.test"].lb
    ups = {}
    for i in range(8):
        h.send(d, call(i, method="get"))
        for up in h.connects:
            if up.endpoint.port not in ups:
                ups[up.endpoint.port] = up
                h.connect(up)
        for port, up in ups.items():
            for _, _, rid, _, _ in h.take(up):
                h.respond(up, reply(rid, status=1 if port == 1001 else 0))
        h.take(d)
    assert lb.healthy == [False, True]
    assert h.core.stats.outlier_ejections == 1
    assert h.core.next_deadline() is not None
    # While ejected, everything goes to 1002.
    for i in range(4):
        h.send(d, call(100 + i, method="get"))
    assert len(h.take(ups[1001])) == 0 and len(h.take(ups[1002])) == 4
    tick(h, 29.9)
    assert lb.healthy == [False, True]
    tick(h, 30.0)
    assert lb.healthy == [True, True]


def test_connect_failures_eject_and_max_ejection_percent_keeps_one_endpoint() -> None:
    h = policy_harness([route("get")], ports=(1001, 1002), outlier_detection=OD)
    d = h.client()
    lb = h.core.clusters["outbound|9|v1|svc.test"].lb
    for i in range(12):
        h.send(d, call(i, method="get"))
        for up in list(h.connects):
            h.core.upstream_connect_failed(up, "refused", h.now)
        h.connects.clear()
        h.flush()
    # Both endpoints failed 6 times, but at most 50% of 2 endpoints may be out.
    assert lb.healthy.count(False) == 1
    assert h.core.stats.outlier_ejections == 1


def test_second_ejection_lasts_twice_as_long() -> None:
    one = OutlierDetection(
        consecutive_errors=1, interval=100.0, base_ejection_time=10.0, max_ejection_percent=100
    )
    h = policy_harness([route("get")], ports=(1001,), outlier_detection=one)
    cs = h.core.clusters["outbound|9|v1|svc.test"]
    d = h.client()
    h.send(d, call(1, method="get"))
    h.core.upstream_connect_failed(h.connects[-1], "refused", 0.0)
    assert cs.outlier is not None and cs.outlier.ejected_until == [10.0]
    tick(h, 10.0)
    assert cs.lb.healthy == [True]
    h.send(d, call(2, method="get"))
    h.core.upstream_connect_failed(h.connects[-1], "refused", 10.0)
    assert cs.outlier.ejected_until == [30.0]  # 10 + 2 x 10
