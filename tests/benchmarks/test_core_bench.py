"""benchmarks/core_bench.py still drives the core end to end (every request answered)."""

from __future__ import annotations

import pytest

from benchmarks.core_bench import run


@pytest.mark.parametrize("protocol", ["dubbo", "thrift"])
def test_core_bench_answers_every_request(protocol: str) -> None:
    # run() asserts that every request of every turn came back through the core
    assert run(protocol, clients=2, depth=4, turns=3) > 0


def test_core_bench_with_cold_caches_still_answers_every_request() -> None:
    assert run("dubbo", clients=2, depth=1, turns=3, evict=1 << 20) > 0


@pytest.mark.parametrize("protocol", ["dubbo", "thrift"])
def test_core_bench_traced_and_logged_still_answers_every_request(protocol: str) -> None:
    # every request sampled (re-encoded with traceparent) and logged as a JSON line
    assert run(protocol, clients=2, depth=4, turns=3, tracing=1.0, access_log=True) > 0
