"""The rate limit service over real gRPC, counting in a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from metamesh.ratelimit.service import RateLimitServer
from tests.ratelimit.conftest import RedisProcess, free_port
from tests.ratelimit.support import (
    ENV,
    ROOT,
    request,
    should_rate_limit,
    start_ratelimit_server,
    stop_process,
    wait_clear_of_window_end,
)

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
T = TypeVar("T")

LIMITS = """
domain: {domain}
descriptors:
- key: method
  rate_limit: {{unit: minute, requests_per_unit: 3}}
- key: method
  value: put
  rate_limit: {{unit: minute, requests_per_unit: 1}}
  shadow_mode: true
- key: user
  value: root
  rate_limit: {{unlimited: true}}
- key: tenant
  descriptors:
  - key: method
    rate_limit: {{unit: hour, requests_per_unit: 5}}
"""


def write_limits(tmp_path: Path, domain: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITS.format(domain=domain))
    return path


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_server(
    limits: Path,
    redis_url: str,
    clock: Clock,
    body: Callable[[rls_pb2_grpc.RateLimitServiceStub, RateLimitServer], Awaitable[T]],
) -> T:
    """Run ``body(stub, server)`` against an in-process server on a free port."""

    async def main() -> T:
        server = RateLimitServer([limits], redis_url, port=0, clock=clock)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(rls_pb2_grpc.RateLimitServiceStub(channel), server)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def test_exactly_n_ok_then_over_limit_until_the_window_ends(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    clock = Clock(1_700_000_130.5)  # 29.5 s before the minute ends
    limits = write_limits(tmp_path, "exact")

    async def body(stub: rls_pb2_grpc.RateLimitServiceStub, _: RateLimitServer) -> None:
        answers = [
            await stub.ShouldRateLimit(request("exact", [("method", "get")])) for _ in range(5)
        ]
        assert [a.overall_code for a in answers] == [OK, OK, OK, OVER, OVER]
        assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0, 0]
        status = answers[3].statuses[0]
        assert status.code == OVER
        assert status.current_limit.requests_per_unit == 3
        assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
        assert status.duration_until_reset.ToMilliseconds() == 29_500
        other = await stub.ShouldRateLimit(request("exact", [("method", "list")]))
        assert other.overall_code == OK  # a wildcard limit counts each value on its own
        clock.now += 29.5  # the next window
        fresh = await stub.ShouldRateLimit(request("exact", [("method", "get")]))
        assert fresh.overall_code == OK and fresh.statuses[0].limit_remaining == 2

    with_server(limits, redis_server.url, clock, body)


def test_descriptors_hits_shadow_and_unlimited(tmp_path: Path, redis_server: RedisProcess) -> None:
    clock = Clock(1_700_000_000.0)
    limits = write_limits(tmp_path, "mixed")

    async def body(stub: rls_pb2_grpc.RateLimitServiceStub, _: RateLimitServer) -> None:
        both = request("mixed", [("user", "root")], [("tenant", "t"), ("method", "x")], hits=4)
        first = await stub.ShouldRateLimit(both)
        assert first.overall_code == OK
        assert [s.code for s in first.statuses] == [OK, OK]
        assert not first.statuses[0].HasField("current_limit")  # unlimited: not counted
        assert first.statuses[1].limit_remaining == 1
        second = await stub.ShouldRateLimit(both)
        assert second.overall_code == OVER and second.statuses[1].code == OVER
        for _ in range(3):  # shadow mode: reported over limit, never enforced
            shadow = await stub.ShouldRateLimit(request("mixed", [("method", "put")]))
        assert shadow.overall_code == OK and shadow.statuses[0].code == OVER
        unknown = await stub.ShouldRateLimit(request("no-such-domain", [("method", "get")]))
        assert unknown.overall_code == OK
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(request("mixed"))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    with_server(limits, redis_server.url, clock, body)


def test_redis_down_fails_the_rpc(tmp_path: Path) -> None:
    limits = write_limits(tmp_path, "down")
    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def body(stub: rls_pb2_grpc.RateLimitServiceStub, server: RateLimitServer) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ShouldRateLimit(request("down", [("method", "get")]))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "redis unavailable" in (err.value.details() or "")
        assert server.service.errors == 1
        unlimited = await stub.ShouldRateLimit(request("down", [("user", "root")]))
        assert unlimited.overall_code == OK  # nothing to count: Redis is not needed

    with_server(limits, dead, Clock(0.0), body)


def test_reload_swaps_limits_and_keeps_them_on_error(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    limits = write_limits(tmp_path, "before")

    async def body(stub: rls_pb2_grpc.RateLimitServiceStub, server: RateLimitServer) -> None:
        limits.write_text("domain: after\ndescriptors: [{key: k, rate_limit: {unit: day}}]\n")
        assert not server.service.reload()
        assert list(server.service.limits.domains) == ["before"]
        limits.write_text(
            "domain: after\n"
            "descriptors: [{key: k, rate_limit: {unit: day, requests_per_unit: 0}}]\n"
        )
        assert server.service.reload()
        answer = await stub.ShouldRateLimit(request("after", [("k", "v")]))
        assert answer.overall_code == OVER

    with_server(limits, redis_server.url, Clock(1_700_000_000.0), body)


def test_two_server_processes_share_one_redis(tmp_path: Path, redis_server: RedisProcess) -> None:
    domain = f"shared-{uuid.uuid4().hex[:8]}"
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        f"domain: {domain}\n"
        "descriptors: [{key: method, rate_limit: {unit: hour, requests_per_unit: 7}}]\n"
    )
    first, port1 = start_ratelimit_server(limits, redis_server.url)
    try:
        second, port2 = start_ratelimit_server(limits, redis_server.url)
        try:
            wait_clear_of_window_end(3600)
            codes = [
                should_rate_limit(port, request(domain, [("method", "get")])).overall_code
                for _ in range(6)
                for port in (port1, port2)
            ]
        finally:
            stop_process(second)
    finally:
        stop_process(first)
    assert codes.count(OK) == 7
    assert codes == [OK] * 7 + [OVER] * 5
    assert first.returncode == 0 and second.returncode == 0


def test_file_change_is_picked_up_by_the_watcher(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    limits = write_limits(tmp_path, "watched")

    async def body(stub: rls_pb2_grpc.RateLimitServiceStub, server: RateLimitServer) -> None:
        watcher = asyncio.get_running_loop().create_task(server.watch(interval=0.01))
        try:
            limits.write_text("domain: renamed\ndescriptors: []\n")
            os.utime(limits, (1, 1))  # a different mtime, whatever the clock's resolution
            for _ in range(1000):
                if "renamed" in server.service.limits.domains:
                    break
                await asyncio.sleep(0.01)
            assert list(server.service.limits.domains) == ["renamed"]
        finally:
            watcher.cancel()

    with_server(limits, redis_server.url, Clock(0.0), body)


def test_cli_rejects_invalid_limits_naming_file_and_field(tmp_path: Path) -> None:
    limits = tmp_path / "bad.yaml"
    limits.write_text("domain: d\ndescriptors: [{key: a, rate_limit: {unit: week}}]\n")
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "ratelimit-server", "--config", str(limits)],
        capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"{limits}: field 'descriptors[0].rate_limit.unit': must be one of" in out.stderr


def test_sighup_reloads_the_limits(tmp_path: Path, redis_server: RedisProcess) -> None:
    domain = f"hup-{uuid.uuid4().hex[:8]}"
    limits = tmp_path / "limits.yaml"
    rule = "descriptors: [{{key: k, rate_limit: {{unit: hour, requests_per_unit: {n}}}}}]\n"
    limits.write_text(f"domain: {domain}\n" + rule.format(n=0))
    before = limits.stat()
    proc, port = start_ratelimit_server(limits, redis_server.url)
    try:
        wait_clear_of_window_end(3600)
        assert should_rate_limit(port, request(domain, [("k", "v")])).overall_code == OVER
        limits.write_text(f"domain: {domain}\n" + rule.format(n=1000))
        os.utime(limits, ns=(before.st_atime_ns, before.st_mtime_ns))  # only SIGHUP can tell
        proc.send_signal(signal.SIGHUP)
        for _ in range(500):
            if should_rate_limit(port, request(domain, [("k", "v")])).overall_code == OK:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("SIGHUP did not reload the limits")
    finally:
        stop_process(proc)
    assert proc.returncode == 0
