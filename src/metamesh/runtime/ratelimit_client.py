"""The proxy's client for the global rate limit service (Envoy RLS ``ShouldRateLimit``).

The sans-IO core stops a request and emits ``(RATELIMIT_CHECK, request, token, domain,
descriptors, service, timeout)`` (:mod:`metamesh.proxy.filters.ratelimit`). The server runs
:meth:`RateLimitClient.check` as an owned task per action: one non-blocking ``grpc.aio`` call
with the filter's timeout, then ``resume(request, token, allowed)`` with True (``OK``), False
(``OVER_LIMIT``) or None (error, timeout, unknown code, no service address: the filter's
failure mode decides). Nothing blocks the event loop, so the connection keeps serving other
requests while one waits; this is where Aeraki's filter, which opens a channel and makes a
blocking call per request on the worker thread, goes wrong.

The filter's descriptors (``descriptor_key`` = value of a metadata property) become the entries
of one RLS descriptor, as in Aeraki. ``service`` names where the service is:

* a cluster of the current config snapshot: its endpoints (round robin across them);
* an Istio cluster name absent from the snapshot (``outbound|8081||rls.ns.svc``): host:port;
* anything else with a colon: a gRPC target as is (``127.0.0.1:8081``, ``dns:///rls:8081``).

One channel per target, created on first use and reused by every later call (HTTP/2
multiplexes them); :meth:`close` closes them all. Errors are logged once per change of error,
not per request, and counted in :attr:`errors`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from metamesh.proxy.config import Cluster
from metamesh.runtime.xds_client import CHANNEL_OPTIONS

log = logging.getLogger("metamesh.ratelimit_client")

#: ``resume(request, token, allowed)``: report an answer to the core.
Resume = Callable[[Any, int, bool | None], None]

_OK = rls_pb2.RateLimitResponse.OK
_OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


def cluster_target(cluster: Cluster) -> str | None:
    """A gRPC target for a cluster's endpoints (``ipv4:`` list when all are IPv4 literals)."""
    endpoints = cluster.endpoints
    if not endpoints:
        return None
    try:
        for e in endpoints:
            ipaddress.IPv4Address(e.address)
    except ValueError:
        return f"{endpoints[0].address}:{endpoints[0].port}"
    return "ipv4:" + ",".join(f"{e.address}:{e.port}" for e in endpoints)


def resolve_target(service: str, clusters: Mapping[str, Cluster]) -> str | None:
    """Where ``service`` (a filter's ``rate_limit_service``) is; None when unknown."""
    cluster = clusters.get(service)
    if cluster is not None:
        return cluster_target(cluster)
    parts = service.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound") and parts[1].isdigit():
        return f"{parts[3]}:{parts[1]}"
    return service if ":" in service else None


def build_request(domain: str, descriptors: Sequence[tuple[str, str]]) -> rls_pb2.RateLimitRequest:
    entries = [ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in descriptors]
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=entries)]
    )


class RateLimitClient:
    """Asks rate limit services; ``clusters`` returns the current snapshot's clusters."""

    def __init__(self, clusters: Callable[[], Mapping[str, Cluster]]) -> None:
        self.clusters = clusters
        self.errors = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, rls_pb2_grpc.RateLimitServiceStub] = {}
        self._last_error: dict[str, str] = {}

    def _stub(self, target: str) -> rls_pb2_grpc.RateLimitServiceStub:
        stub = self._stubs.get(target)
        if stub is None:
            # gRPC's default reconnect backoff grows to 2 minutes, and its global subchannel
            # pool carries it over from other channels; a rate-limit service that comes back
            # is used again within a second, whatever the outage length (as the xDS client).
            options = [("grpc.lb_policy_name", "round_robin"), *CHANNEL_OPTIONS]
            channel = self._channels[target] = grpc.aio.insecure_channel(target, options=options)
            stub = self._stubs[target] = rls_pb2_grpc.RateLimitServiceStub(channel)
        return stub

    async def should_rate_limit(
        self, service: str, domain: str, descriptors: Sequence[tuple[str, str]], timeout: float
    ) -> bool | None:
        """True: allowed; False: over limit; None: no answer (error, timeout, no address)."""
        target = resolve_target(service, self.clusters())
        if target is None:
            self._failed(service, f"no address for rate limit service {service!r}")
            return None
        try:
            response = await self._stub(target).ShouldRateLimit(
                build_request(domain, descriptors), timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            self._failed(target, f"{e.code().name}: {e.details()}")
            return None
        if self._last_error.pop(target, None) is not None:
            log.info("rate limit service %s answers again", target)
        code = response.overall_code
        if code == _OK:
            return True
        if code == _OVER_LIMIT:
            return False
        self._failed(target, f"unknown overall_code {code}")
        return None

    async def check(self, action: tuple[Any, ...], resume: Resume) -> None:
        """Execute one ``RATELIMIT_CHECK`` action and report the answer."""
        _, req, token, domain, descriptors, service, *rest = action
        timeout = float(rest[0]) if rest else 0.02
        allowed = await self.should_rate_limit(service, domain, descriptors, timeout)
        resume(req, token, allowed)

    def _failed(self, where: str, error: str) -> None:
        self.errors += 1
        if self._last_error.get(where) != error:
            self._last_error[where] = error
            log.warning("rate limit service %s: %s (failure mode applies)", where, error)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close()
