"""Lazy metadata (Dubbo attachments) reaches every consumer in the core: routes, hash policy,
global rate limit descriptors.

Dubbo's request metadata is a ``dict`` subclass that walks the attachments only when a key it
does not hold yet is asked for. The native build compiles ``dict.get`` on a ``dict``-typed value
into a C lookup that would skip that walk, so these run in both test passes (``scripts/test.sh``
runs the suite pure and native) and fail if a consumer reads metadata the shortcut way.
"""

from __future__ import annotations

from metamesh.proxy.config import (
    Cluster,
    GlobalRateLimitConfig,
    LbPolicy,
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
)
from metamesh.proxy.filters import GLOBAL_RATELIMIT
from metamesh.proxy.filters.ratelimit import RATELIMIT_CHECK
from metamesh.proxy.upstream import Upstream
from tests.codecs.dubbo.frames import IFACE, request
from tests.proxy.filters.support import ROUTER
from tests.proxy.harness import Harness, cluster, snapshot

V1, V2 = "outbound|20880|v1|demo.test", "outbound|20880|v2|demo.test"


def dubbo_harness(
    routes: list[Route],
    clusters: list[Cluster],
    filters: tuple[str, ...] = (ROUTER,),
    filter_configs: tuple[tuple[str, object], ...] = (),
) -> Harness:
    return Harness(snapshot(routes, clusters, "dubbo", None, filters, filter_configs))


def sent_ids(up: Upstream) -> set[int | None]:
    return {r.request.request_id for r in up.pending.values()}


def call(rid: int, **attachments: str) -> bytes:
    return request(rid, attachments={"path": IFACE, **attachments})


def test_route_on_an_attachment_before_a_catch_all() -> None:
    tenant = Route(
        "tenant-beta",
        (MetadataMatcher("x-tenant", MatchKind.EXACT, "beta"),),
        RouteAction(cluster=V1),
    )
    h = dubbo_harness(
        [tenant, Route("rest", (), RouteAction(cluster=V2))],
        [cluster(V1, 1001), cluster(V2, 1002)],
    )
    d = h.client()
    h.send(d, call(1, **{"x-tenant": "beta"}) + call(2, **{"x-tenant": "alpha"}) + call(3))
    ports = sorted((up.endpoint.port, len(up.pending)) for up in h.connects)
    assert ports == [(1001, 1), (1002, 2)]


def test_hash_policy_on_an_attachment_is_sticky_and_spreads() -> None:
    action = RouteAction(cluster=V1, hash_policy=("x-user",))
    h = dubbo_harness(
        [Route("all", (), action)],
        [cluster(V1, 1001, 1002, 1003, 1004, lb_policy=LbPolicy.RING_HASH)],
    )
    d = h.client()
    endpoint_of: dict[str, set[int]] = {}
    rid = 0
    for user in (f"user-{i}" for i in range(40)):
        for _ in range(3):
            rid += 1
            h.send(d, call(rid, **{"x-user": user}))
            up = next(u for u in h.connects if rid in sent_ids(u))
            endpoint_of.setdefault(user, set()).add(up.endpoint.port)
    assert all(len(ports) == 1 for ports in endpoint_of.values())  # same key, same endpoint
    used = set().union(*endpoint_of.values())
    assert len(used) >= 3  # 40 keys over 4 endpoints: an empty key would pin them all to one


def test_global_ratelimit_descriptor_from_an_attachment() -> None:
    config = GlobalRateLimitConfig(
        "demo", descriptors=(("tenant", "x-tenant"), ("method", "method")), timeout=0.02
    )
    h = dubbo_harness(
        [Route("all", (), RouteAction(cluster=V1))],
        [cluster(V1, 1001)],
        filters=(GLOBAL_RATELIMIT, ROUTER),
        filter_configs=((GLOBAL_RATELIMIT, config),),
    )
    checks: list[tuple[object, ...]] = []
    h.on_action.append(lambda a: checks.append(a) if a[0] == RATELIMIT_CHECK else None)
    d = h.client()
    h.send(d, call(1, **{"x-tenant": "beta"}) + call(2))
    assert [c[4] for c in checks] == [
        (("tenant", "beta"), ("method", "sayHello")),
        (("tenant", ""), ("method", "sayHello")),
    ]
