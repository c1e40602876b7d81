"""Helpers for policy tests: snapshots with listener filters and route policies."""

from __future__ import annotations

from typing import Any

from metamesh.proxy.config import (
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
)
from tests.proxy.harness import Harness, cluster, snapshot

SVC = "outbound|9|v1|svc.test"
ROUTER = "aeraki.meta_protocol.filters.router"


def route(method: str | None = None, target: str = SVC, **kw: Any) -> Route:
    """A route on ``method`` (None: match all); action fields (timeout, ...) go in ``kw``."""
    match = (MetadataMatcher("method", MatchKind.EXACT, method),) if method else ()
    action_kw = {k: kw.pop(k) for k in ("timeout", "retry_policy") if k in kw}
    return Route(f"r-{method}", match, RouteAction(cluster=target, **action_kw), **kw)


def policy_harness(
    routes: list[Route],
    ports: tuple[int, ...] = (1001,),
    filters: tuple[str, ...] = (ROUTER,),
    filter_configs: tuple[tuple[str, object], ...] = (),
    codec: str = "kvrpc",
    seed: int = 1,
    **cluster_kw: Any,
) -> Harness:
    clusters = [cluster(SVC, *ports, **cluster_kw)]
    return Harness(snapshot(routes, clusters, codec, None, filters, filter_configs), seed=seed)


def tick(h: Harness, now: float) -> None:
    """Advance the harness clock to ``now`` and fire due deadlines."""
    h.now = now
    h.core.on_timer(now)
    h.flush()
