"""The Redis benchmark harness (benchmarks/redis_compare.py) against a real redis-server and
the real redis-benchmark, at a tiny size and with no timing assertions: its shapes, one
measurement read from redis-benchmark's CSV, and the table it prints."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.redis_compare import cpu_seconds, parse_shape, run_shape, table
from tests.ratelimit.conftest import RedisProcess, redis_server

__all__ = ["redis_server"]  # the fixture, used below


def test_shapes_are_clients_and_pipeline_depth() -> None:
    assert parse_shape("c20P16") == (20, 16)
    with pytest.raises(argparse.ArgumentTypeError, match="c<clients>P<pipeline>"):
        parse_shape("20x16")


def test_one_measurement_of_a_real_redis_server(redis_server: RedisProcess) -> None:
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    before = cpu_seconds(pid)
    sample = run_shape("127.0.0.1", redis_server.port, pid, pid, 2, 4, 2000)
    assert sample["set_rps"] > 0 and sample["get_rps"] > 0 and sample["get_p50_ms"] > 0
    assert cpu_seconds(pid) >= before and sample["cpu_us_per_req"] >= 0
    text = table({"c2P4": {"direct": sample, "envoy redis_proxy": sample, "metamesh": sample}})
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [r[1] for r in rows] == ["direct", "envoy redis_proxy", "metamesh"]
    assert rows[0][6].endswith("server)") and rows[2][7].strip(" |") == "1.00x"
