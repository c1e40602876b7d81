"""Compiling a listener's filter list into per-route chains at snapshot time.

:class:`ListenerFilters` instantiates the listener's filters once (and keeps the instances, with
their state, across config pushes that leave the filter list and configs unchanged). Filters
after the router never run (as in Envoy and Aeraki). :meth:`ListenerFilters.compile` then walks a
route table: for each route (and for "no route matched") it keeps only the filters that
:meth:`~metamesh.proxy.filters.base.Filter.applies_to` it, adds the route's timeout/retry
policy, and records a :class:`RouteExtras` only when there is something to do. The connection
manager looks a route up in that map; routes without policies are absent from it, so they cost
one dict lookup, and listeners without any policy cost a single ``None`` check.

A route with a ``fault`` on a listener that does not list ``metamesh.filters.fault`` gets the
fault filter anyway, placed just before the router, so that route-level fault injection works
with the default filter list.
"""

from __future__ import annotations

from metamesh.proxy.config import Listener
from metamesh.proxy.filters.base import FAULT, ROUTER, Filter, FilterContext, lookup_filter
from metamesh.proxy.filters.fault import FaultFilter
from metamesh.proxy.policy import RoutePolicy
from metamesh.proxy.router import CompiledRoute, RouteTable


class RouteExtras:
    """What runs for requests on one route: its filters, encoders and timeout/retry policy."""

    __slots__ = ("chain", "encoders", "policy")

    def __init__(self, chain: tuple[Filter, ...], policy: RoutePolicy | None) -> None:
        self.chain = chain
        self.encoders = tuple(f for f in chain if f.encoder)
        self.policy = policy


class ListenerFilters:
    """A listener's filter instances (router excluded)."""

    __slots__ = ("ctx", "filters", "has_fault", "key")

    def __init__(
        self, listener: Listener, ctx: FilterContext, previous: ListenerFilters | None = None
    ) -> None:
        self.ctx = ctx
        self.filters: tuple[Filter, ...] = ()
        self.has_fault = False
        self.key = (listener.filters, listener.filter_configs)
        if previous is not None and previous.key == self.key:
            self.filters = previous.filters
            self.has_fault = previous.has_fault
            return
        filters: list[Filter] = []
        for name in listener.filters:
            if name == ROUTER:
                break
            f = lookup_filter(name)(listener.filter_config(name), ctx)
            if f is not None:
                filters.append(f)
        self.filters = tuple(filters)
        self.has_fault = FAULT in listener.filters

    def compile(self, table: RouteTable) -> dict[CompiledRoute | None, RouteExtras] | None:
        """Per-route extras for ``table``, or ``None`` when no route needs any."""
        filters = self.filters
        if not self.has_fault and any(r.config.fault is not None for r in table.routes):
            filters = (*filters, FaultFilter(self.ctx))
        out: dict[CompiledRoute | None, RouteExtras] = {}
        routes: tuple[CompiledRoute | None, ...] = (None, *table.routes)
        for route in routes:
            chain = tuple(f for f in filters if f.applies_to(route))
            policy = RoutePolicy.compile(route.config) if route is not None else None
            if chain or policy is not None:
                out[route] = RouteExtras(chain, policy)
        return out or None
