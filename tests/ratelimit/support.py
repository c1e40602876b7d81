"""Helpers: run ``metamesh ratelimit-server`` as a real process, call it over gRPC."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_process(
    args: list[str], ready: str, timeout: float = 30
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m metamesh ARGS``; wait for a stderr line matching ``ready`` (a regex)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "metamesh", *args],
        cwd=ROOT, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if re.search(ready, line):
            return proc, line
    stop_process(proc)
    raise AssertionError(f"metamesh {args[0]} did not start:\n{''.join(seen)}")


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_ratelimit_server(limits: Path, redis_url: str) -> tuple[subprocess.Popen[str], int]:
    """A ``metamesh ratelimit-server`` on a free port; returns the process and its port."""
    proc, line = start_process(
        ["ratelimit-server", "--config", str(limits), "--port", "0", "--redis", redis_url],
        r"rate limit service on 127\.0\.0\.1:\d+",
    )
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert match is not None
    return proc, int(match.group(1))


def wait_clear_of_window_end(window: int, margin: float = 10.0) -> None:
    """Sleep past the end of the current fixed window if it ends within ``margin`` seconds,
    so a test against the real clock never straddles two windows."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.05)


def request(
    domain: str, *descriptors: list[tuple[str, str]], hits: int = 0
) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(
        domain=domain,
        hits_addend=hits,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d]
            )
            for d in descriptors
        ],
    )


def should_rate_limit(port: int, req: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
    """One blocking call (tests only) to the service on 127.0.0.1:``port``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        response: rls_pb2.RateLimitResponse = stub.ShouldRateLimit(req, timeout=10)
        return response
