"""``metamesh.filters.fault``: delay and/or abort a share of a route's requests.

The fault comes from the route (:class:`~metamesh.proxy.config.FaultInjection`), so the filter
only applies to routes that have one. Both rolls happen when the request arrives, with the
core's injected ``random.Random``: a delayed request is held (:class:`Stop`) until
``now + fixed_delay`` while the connection serves others, then continues, or, when the abort
roll also hit, gets the abort's local reply (Envoy's order: delay, then abort).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metamesh.proxy.filters.base import (
    CONTINUE,
    Filter,
    FilterContext,
    FilterResult,
    LocalReply,
    Stop,
)

if TYPE_CHECKING:
    from metamesh.proxy.router import CompiledRoute
    from metamesh.proxy.upstream import ActiveRequest


class FaultFilter(Filter):
    __slots__ = ("ctx",)

    def __init__(self, ctx: FilterContext) -> None:
        self.ctx = ctx

    def applies_to(self, route: CompiledRoute | None) -> bool:
        return route is not None and route.config.fault is not None

    def _roll(self, percent: float) -> bool:
        if percent >= 100.0:
            return True
        return percent > 0.0 and self.ctx.rng.random() * 100.0 < percent

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        route = req.route
        fault = route.config.fault if route is not None else None
        if fault is None:
            return CONTINUE
        stats = self.ctx.stats
        reply = None
        abort = fault.abort
        if abort is not None and self._roll(abort.percent):
            stats.fault_aborts += 1
            reply = LocalReply(abort.kind, abort.message)
        delay = fault.delay
        if delay is not None and self._roll(delay.percent):
            stats.fault_delays += 1
            return Stop(now + delay.fixed_delay, reply)
        return reply


def create_fault_filter(config: object | None, ctx: FilterContext) -> Filter:
    return FaultFilter(ctx)
