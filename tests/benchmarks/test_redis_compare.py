"""The Redis benchmark harness (benchmarks/redis_compare.py) against a real redis-server and
the real redis-benchmark, at a tiny size and with no timing assertions: its shapes, one
measurement read from redis-benchmark's CSV, and the table it prints."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from benchmarks.processes import free_port, wait_listening
from benchmarks.redis_compare import NA, ROOT, cpu_seconds, parse_shape, run_shape, table
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
    # 2,000 requests can cost less than one clock tick of CPU on a fast box: the table's
    # arithmetic is checked on set CPU figures, the measured ones only for being readable.
    envoy = {**sample, "cpu_us_per_req": 20.0}
    mesh = {**sample, "cpu_us_per_req": 10.0}
    direct = {**sample, "backend_cpu_us_per_req": 3.0}
    text = table({"c2P4": {"direct": direct, "envoy redis_proxy": envoy, "metamesh": mesh}})
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [r[1] for r in rows] == ["direct", "envoy redis_proxy", "metamesh"]
    assert rows[0][6] == "(3.0 server)" and rows[0][7].strip(" |") == NA
    assert rows[1][7].strip(" |") == "1.00x" and rows[2][7].strip(" |") == "0.50x"
    idle = {**sample, "cpu_us_per_req": 0.0}
    text = table({"c2P4": {"envoy redis_proxy": idle, "metamesh": mesh}})
    assert text.splitlines()[-1].endswith(f"| 10.0 | {NA} |")


def test_the_floor_forwards_a_real_redis_server_s_replies(redis_server: RedisProcess) -> None:
    """benchmarks/floor/floor_redis.py copies bytes both ways: redis-benchmark's pipelines
    through it get every reply (a tiny run, no timing)."""
    port = free_port()
    floor = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "floor" / "floor_redis.py"), "127.0.0.1",
         str(port), str(redis_server.port)],
    )  # fmt: skip
    try:
        wait_listening(port, floor, 10, Path("/dev/null"))
        sample = run_shape("127.0.0.1", port, floor.pid, floor.pid, 3, 8, 3000)
        assert sample["set_rps"] > 0 and sample["get_rps"] > 0
        client = redis.Redis(host="127.0.0.1", port=port)
        assert client.set("floor", "x") and client.get("floor") == b"x"
    finally:
        floor.kill()
        floor.wait()
