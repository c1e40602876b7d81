"""The filter chain contract: what a filter returns, and the registry of filters by name.

A listener's ``meta_protocol_filters`` name a chain of filters (Aeraki's names, plus metamesh's
own); the router is the terminal one. Each filter's :meth:`Filter.on_request` sees a request
before it is routed upstream and answers with a status, as Envoy's ``FilterStatus``:

* ``CONTINUE`` (``None``): go on with the next filter, then the router;
* :class:`Stop`: hold this request (only this one: the connection keeps serving others) until
  ``resume_at`` (a delay fault) or until the runtime reports an asynchronous answer
  (:meth:`~metamesh.proxy.connection.ConnectionManager.resume_request`, a global rate limit);
  ``then`` is what happens on resume when nothing else is reported (``None`` = continue);
* :class:`LocalReply`: answer the request with the codec's native error reply for ``kind``.

:meth:`Filter.on_response` (encoder side) sees each upstream response of a request that went
through the filter, in chain order; it observes and returns nothing.

Filters never read a clock or do I/O: ``now`` is an argument, randomness comes from the core's
injected ``random.Random`` and counters live in the core's :class:`ProxyStats`. A filter that
needs the outside world (a rate limit service) appends an action through
:attr:`FilterContext.emit`, which the runtime executes.

Filters are built once per listener (so their state, such as token buckets, is shared by every
connection of the listener and survives config pushes that leave their config unchanged) and
then compiled per route: :meth:`Filter.applies_to` drops filters that cannot act on a route, so
a route without policies runs no filter at all.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from metamesh.codecs import ErrorKind, Message
from metamesh.proxy.stats import ProxyStats

if TYPE_CHECKING:
    from metamesh.proxy.router import CompiledRoute
    from metamesh.proxy.upstream import ActiveRequest

ROUTER: Final = "aeraki.meta_protocol.filters.router"
LOCAL_RATELIMIT: Final = "aeraki.meta_protocol.filters.local_ratelimit"
GLOBAL_RATELIMIT: Final = "aeraki.meta_protocol.filters.ratelimit"
FAULT: Final = "metamesh.filters.fault"
RBAC: Final = "metamesh.filters.rbac"


@dataclass(frozen=True, slots=True)
class LocalReply:
    """Answer the request locally with the codec's error reply for ``kind``."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Hold the request until ``resume_at`` (``None``: until resumed by the runtime)."""

    resume_at: float | None = None
    then: LocalReply | None = None


CONTINUE: Final = None
FilterResult = LocalReply | Stop | None


@dataclass(frozen=True, slots=True)
class FilterContext:
    """What a filter factory may keep: the core's stats, randomness and action sink."""

    stats: ProxyStats
    rng: random.Random
    emit: Callable[[tuple[Any, ...]], None]
    listener: str = ""


@mypyc_attr(allow_interpreted_subclasses=True)
class Filter:
    """Base class of decoder/encoder filters (both hooks default to doing nothing)."""

    __slots__ = ()

    #: Whether :meth:`on_response` does anything (only then is it called).
    encoder = False

    def applies_to(self, route: CompiledRoute | None) -> bool:
        """Whether this filter can act on requests matching ``route`` (``None``: no route)."""
        return True

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        return CONTINUE

    def on_response(self, req: ActiveRequest, response: Message, now: float) -> None:
        return None


#: A factory gets the filter's typed config (or ``None``) and returns the filter, or ``None``
#: when the filter has nothing to do (the router).
FilterFactory = Callable[[object | None, FilterContext], Filter | None]

_REGISTRY: Final[dict[str, FilterFactory]] = {}


class UnknownFilterError(LookupError):
    """No filter is registered under the name."""


def register_filter(name: str, factory: FilterFactory) -> None:
    """Register ``factory`` under ``name`` (replaces an earlier entry)."""
    _REGISTRY[name] = factory


def lookup_filter(name: str) -> FilterFactory:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownFilterError(f"unknown filter {name!r} (known: {known})") from None


def known_filters() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def _ensure_builtins() -> None:
    if ROUTER not in _REGISTRY:
        from metamesh.proxy.filters import builtins

        builtins.register_builtins()
