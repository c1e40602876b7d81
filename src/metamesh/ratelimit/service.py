"""``envoy.service.ratelimit.v3.RateLimitService`` over grpc.aio, counting in Redis.

:class:`RateLimitService` answers ``ShouldRateLimit`` the way Envoy's reference service does:
match each request descriptor against the domain's limits (:mod:`.limits`), bump the fixed-
window counters of the limited ones in one Redis transaction (:mod:`.counting`), and reply
``OVER_LIMIT`` when any enforced limit is exceeded, with a status per descriptor
(``current_limit``, ``limit_remaining``, ``duration_until_reset``). Hits are the descriptor's
``hits_addend`` if set, else the request's, else 1. Descriptors no limit applies to are ``OK``
and cost no Redis round trip; the per-descriptor ``limit`` override is ignored.

When Redis cannot be reached the RPC fails with ``UNAVAILABLE``: the caller's failure mode
(``failure_mode_deny``) decides, never a silent "allowed". Limits are an immutable
:class:`~metamesh.ratelimit.limits.Limits` swapped whole by :meth:`RateLimitService.reload`
(SIGHUP, or a change of a file's mtime seen by :meth:`RateLimitServer.watch`); a reload that
fails validation keeps the previous limits and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis.exceptions import RedisError

from metamesh import logs
from metamesh.ratelimit.counting import DescriptorDecision, RedisCounter, decide, plan_hits
from metamesh.ratelimit.limits import Limits, LimitsError, load_limits

log = logging.getLogger("metamesh.ratelimit")

_Response = rls_pb2.RateLimitResponse
_UNITS = {
    "second": _Response.RateLimit.SECOND,
    "minute": _Response.RateLimit.MINUTE,
    "hour": _Response.RateLimit.HOUR,
    "day": _Response.RateLimit.DAY,
}


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """The ``ShouldRateLimit`` handler; ``clock`` returns epoch seconds (injectable)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        counter: RedisCounter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.limits: Limits = load_limits(self.paths)
        self.counter = counter
        self.clock = clock
        self.requests = 0
        self.over_limit = 0
        self.errors = 0

    def reload(self) -> bool:
        """Re-read the limit files; on error keep the current limits. True if swapped."""
        try:
            limits = load_limits(self.paths)
        except LimitsError as e:
            log.error("reload failed, keeping the previous limits: %s", e)
            return False
        self.limits = limits
        log.info("limits reloaded: domains %s", ", ".join(sorted(limits.domains)))
        return True

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        self.requests += 1
        if not request.domain:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "domain must not be empty")
        if not request.descriptors:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "descriptors must not be empty")
        default_hits = request.hits_addend or 1
        descriptors = [
            (
                [(e.key, e.value) for e in d.entries],
                d.hits_addend.value if d.HasField("hits_addend") else default_hits,
            )
            for d in request.descriptors
        ]
        plan = plan_hits(self.limits, request.domain, descriptors, self.clock())
        try:
            counts = await self.counter.count([h for h in plan if h is not None])
        except (RedisError, OSError) as e:
            self.errors += 1
            log.warning("redis %s: %s", self.counter.url, e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {e}")
        over, decisions = decide(plan, counts)
        if over:
            self.over_limit += 1
        return _response(over, decisions)


def _response(over: bool, decisions: Sequence[DescriptorDecision]) -> rls_pb2.RateLimitResponse:
    response = _Response(overall_code=_Response.OVER_LIMIT if over else _Response.OK)
    for d in decisions:
        status = response.statuses.add(code=_Response.OVER_LIMIT if d.over_limit else _Response.OK)
        if d.limit is None:
            continue
        status.current_limit.requests_per_unit = d.limit.requests_per_unit
        status.current_limit.unit = _UNITS[d.limit.unit]
        status.current_limit.name = d.limit.name
        status.limit_remaining = d.remaining
        status.duration_until_reset.FromNanoseconds(round(d.reset_after * 1e9))
    return response


class RateLimitServer:
    """The gRPC server around a :class:`RateLimitService`; ``port`` 0 picks a free port."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        redis_url: str = "redis://127.0.0.1:6379/0",
        host: str = "127.0.0.1",
        port: int = 8081,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = RateLimitService(paths, RedisCounter(redis_url), clock)
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None
        self._mtimes = self._read_mtimes()

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        server = self._server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {self.host}")
        await server.start()
        return self.port

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        await self.service.counter.close()

    def _read_mtimes(self) -> list[float]:
        mtimes = []
        for path in self.service.paths:
            with contextlib.suppress(OSError):
                mtimes.append(path.stat().st_mtime)
        return mtimes

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever a limit file's mtime changes (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            mtimes = self._read_mtimes()
            if mtimes != self._mtimes:
                self._mtimes = mtimes
                self.service.reload()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads the limits."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.service.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        watcher = loop.create_task(self.watch())
        try:
            await stopped.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.stop()


def run_ratelimit_server(
    paths: Sequence[str],
    *,
    port: int = 8081,
    host: str = "127.0.0.1",
    redis_url: str = "redis://127.0.0.1:6379/0",
    log_level: str = "INFO",
) -> int:
    """``metamesh ratelimit-server``: 0 after SIGTERM, 2 for invalid limits, 1 if bind fails."""
    logs.configure(log_level)
    try:
        server = RateLimitServer(paths, redis_url, host, port)
    except LimitsError as e:
        print(f"metamesh ratelimit-server: invalid limits:\n{e}", file=sys.stderr)
        return 2

    async def main() -> int:
        try:
            bound = await server.start()
        except (OSError, RuntimeError) as e:
            print(f"metamesh ratelimit-server: cannot listen: {e}", file=sys.stderr)
            await server.stop(None)
            return 1
        domains = ", ".join(sorted(server.service.limits.domains))
        log.info("rate limit service on %s:%d (redis %s)", host, bound, redis_url)
        log.info("domains: %s", domains)
        await server.serve_forever()
        return 0

    return asyncio.run(main())
