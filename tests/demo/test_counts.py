"""The demo's arithmetic: scraping Istio metrics, step differences, tables and step checks."""

from __future__ import annotations

import pytest

from metamesh.cli import main
from metamesh.demo.counts import Reading, table
from metamesh.demo.mesh import parse_prometheus
from metamesh.demo.steps import STEPS, within_5_sigma

SCRAPE = """# HELP istio_requests_total Requests handled by the proxy
istio_requests_total{reporter="source",destination_service="svc.a",destination_version="v1",\
response_code="0",request_protocol="thrift"} 7.0
istio_requests_total{reporter="source",destination_service="svc.a",destination_version="v1",\
response_code="1",request_protocol="thrift"} 2.0
istio_requests_total{reporter="source",destination_service="svc.a",destination_version="v2",\
response_code="0",request_protocol="thrift"} 5.0
istio_request_duration_milliseconds_count{destination_service="svc.a"} 99.0
metamesh_local_replies_total{reason="route_not_found"} 3.0
"""


def test_parse_prometheus_counts_by_service_version_and_outcome() -> None:
    counts = parse_prometheus(SCRAPE)
    assert counts.requests("svc.a", "v1") == 9 and counts.requests("svc.a", "v2") == 5
    assert counts.requests("svc.b", "v1") == 0
    assert counts.errors() == 2 + 3


def reading(v1: dict[str, int], v2: dict[str, int], errors: int = 0) -> Reading:
    served = {(p, "v1"): dict(v1) for p in ("thrift", "dubbo")}
    served |= {(p, "v2"): dict(v2) for p in ("thrift", "dubbo")}
    totals = {k: sum(m.values()) for k, m in served.items()}
    return Reading(dict(totals), served, dict(totals), errors, 0)


def test_minus_table_and_disagreements() -> None:
    base = reading({"sayHello": 1, "echo": 2}, {"sayHello": 3, "echo": 0})
    later = reading({"sayHello": 1, "echo": 12}, {"sayHello": 13, "echo": 0}, errors=1)
    step = later.minus(base)
    assert step.method(("dubbo", "v1"), "echo") == 10 and step.server_total(("thrift", "v2")) == 10
    assert step.errors() == 1 and step.disagreements() == []
    assert "  thrift   v1            10       10       10         0        10" in table(step)
    off = Reading({**step.proxy, ("dubbo", "v2"): 11}, step.served, step.answered, 0, 0)
    assert off.disagreements() == ["dubbo v2: proxy 11, server 10, client 10"]


@pytest.mark.parametrize(
    ("number", "v1", "v2", "ok"),
    [
        (1, {"sayHello": 0, "echo": 50}, {"sayHello": 50, "echo": 0}, True),
        (1, {"sayHello": 1, "echo": 50}, {"sayHello": 49, "echo": 0}, False),
        (2, {"sayHello": 0, "echo": 20}, {"sayHello": 100, "echo": 80}, True),
        (2, {"sayHello": 0, "echo": 50}, {"sayHello": 100, "echo": 50}, False),
        (3, {"sayHello": 0, "echo": 0}, {"sayHello": 9, "echo": 9}, True),
        (3, {"sayHello": 0, "echo": 1}, {"sayHello": 9, "echo": 9}, False),
    ],
)
def test_step_checks(number: int, v1: dict[str, int], v2: dict[str, int], ok: bool) -> None:
    assert (STEPS[number - 1].check(reading(v1, v2)) == []) is ok


def test_within_5_sigma() -> None:
    assert within_5_sigma(20, 100, 0.2) and within_5_sigma(40, 100, 0.2)
    assert not within_5_sigma(41, 100, 0.2) and not within_5_sigma(0, 1000, 0.2)


def test_demo_codecs_flag_runs_the_codec_walkthrough(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--codecs"]) == 0
    assert "heartbeat 99 answered" in capsys.readouterr().out
