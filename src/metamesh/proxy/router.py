"""Route matching: a RouteConfiguration compiled into a table that is cheap to evaluate.

Compilation turns every matcher into a small closure-free tuple and every route into a
:class:`CompiledRoute` holding what the request path needs (the cluster picker, hash keys,
mirror policies and mutations as ready-made dicts). Matching is first-match-wins with all of a
route's matchers ANDed, as in Aeraki. Two shortcuts keep the hot path short: a table whose first
route matches everything never touches ``message.metadata`` (so a lazy codec never has to parse
its body), and matchers are evaluated against one dict lookup each.

Randomness (weighted clusters, mirror fractions) comes from an injected ``random.Random`` so
tests are deterministic.

A request no route matches is answered with :func:`no_route_text`, which names what the
client called (service and method), so the error it receives says what had no route.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from itertools import accumulate
from typing import Final

from metamesh.api.regex import compile_regex
from metamesh.codecs import Message
from metamesh.codecs.message import metadata_get
from metamesh.proxy.config import MatchKind, MetadataMatcher, Route, RouteConfiguration

_EXACT, _PREFIX, _REGEX, _PRESENT = 0, 1, 2, 3
_KIND_CODE: Final = {
    MatchKind.EXACT: _EXACT,
    MatchKind.PREFIX: _PREFIX,
    MatchKind.SAFE_REGEX: _REGEX,
    MatchKind.PRESENT: _PRESENT,
}

# (metadata key, kind code, str value or compiled pattern, invert)
_Matcher = tuple[str, int, object, bool]


def compile_matcher(m: MetadataMatcher) -> _Matcher:
    value: object = compile_regex(m.value) if m.kind is MatchKind.SAFE_REGEX else m.value
    return (m.name, _KIND_CODE[m.kind], value, m.invert)


def matches(matchers: tuple[_Matcher, ...], metadata: Mapping[str, str]) -> bool:
    """True when every matcher holds for ``metadata`` (Envoy HeaderMatcher semantics)."""
    for key, kind, value, invert in matchers:
        actual = metadata.get(key)
        if actual is None:
            ok = False
        elif kind == _EXACT:
            ok = actual == value
        elif kind == _PREFIX:
            ok = actual.startswith(value)  # type: ignore[arg-type]
        elif kind == _REGEX:
            ok = value.fullmatch(actual) is not None  # type: ignore[attr-defined]
        else:
            ok = True
        if ok == invert:
            return False
    return True


_dict_get: Final = dict.get


class CompiledRoute:
    """One route, ready for the request path. Requests keep a reference to the route they
    matched, so a config swap never changes the handling of a request already in flight."""

    __slots__ = (
        "_cumulative",
        "_names",
        "_total",
        "cluster",
        "config",
        "exact",
        "hash_keys",
        "matchers",
        "mirrors",
        "name",
        "request_mutation",
        "response_mutation",
    )

    def __init__(self, route: Route) -> None:
        self.config = route
        self.name = route.name
        self.matchers = tuple(compile_matcher(m) for m in route.match)
        #: The common case (only non-inverted exact matchers) as plain (key, value) pairs.
        self.exact: tuple[tuple[str, str], ...] | None = None
        if all(m.kind is MatchKind.EXACT and not m.invert for m in route.match):
            self.exact = tuple((m.name, m.value) for m in route.match)
        action = route.route
        self.cluster = action.cluster  # "" when weighted
        self._names = tuple(w.name for w in action.weighted_clusters)
        self._cumulative = list(accumulate(w.weight for w in action.weighted_clusters))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self.hash_keys = tuple(action.hash_policy)
        self.mirrors = tuple((m.cluster, m.percent) for m in action.request_mirror_policies)
        self.request_mutation = dict(route.request_mutation) or None
        self.response_mutation = dict(route.response_mutation) or None

    def pick_cluster(self, rng: random.Random) -> str:
        """The target cluster: fixed, or drawn by weight."""
        if self.cluster:
            return self.cluster
        point = rng.random() * self._total
        return self._names[bisect.bisect_right(self._cumulative, point)]

    def mirror_clusters(self, rng: random.Random) -> list[str]:
        """Mirror targets chosen for one request (each policy rolls its own fraction)."""
        return [c for c, pct in self.mirrors if pct >= 100.0 or rng.random() * 100.0 < pct]


class RouteTable:
    """A compiled :class:`RouteConfiguration`; ``match`` returns the first matching route."""

    __slots__ = ("catch_all", "name", "routes")

    def __init__(self, config: RouteConfiguration) -> None:
        self.name = config.name
        self.routes = tuple(CompiledRoute(r) for r in config.routes)
        first = self.routes[0] if self.routes else None
        self.catch_all = first if first is not None and not first.matchers else None

    def match(self, message: Message) -> CompiledRoute | None:
        if self.catch_all is not None:
            return self.catch_all
        # Message.metadata's common case read directly (once per request): codecs hand routed
        # requests their metadata at decode; only lazy ones go through the property.
        metadata = message._metadata
        if metadata is None:
            metadata = message.metadata
        for route in self.routes:
            exact = route.exact
            if exact is None:
                if matches(route.matchers, metadata):
                    return route
                continue
            for key, value in exact:
                # dict's C lookup first: lazy maps (Dubbo attachments) override ``get`` in
                # Python, and the keys routes use are usually present from the start.
                found = _dict_get(metadata, key)
                if found != value and (found is not None or metadata_get(metadata, key) != value):
                    break
            else:
                return route
        return None


#: Metadata keys that name the service a request calls, tried in order: Dubbo's ``interface``,
#: a multiplexed Thrift call's ``service``.
SERVICE_KEYS: Final = ("interface", "service")


def no_route_text(message: Message, listener_service: str) -> str:
    """The route-not-found error text the client receives: ``no route for SERVICE.METHOD``.

    The service is the one the request names (:data:`SERVICE_KEYS`), else the listener's own
    (``listener_service``, "" when it has none). Only unrouted requests come here.
    """
    metadata = message.metadata
    service = listener_service
    for key in SERVICE_KEYS:
        named = metadata_get(metadata, key)
        if named:
            service = named
            break
    target = ".".join(part for part in (service, metadata_get(metadata, "method")) if part)
    return f"no route for {target}" if target else "no route for this request"
