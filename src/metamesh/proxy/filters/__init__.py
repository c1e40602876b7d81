"""The proxy's filter chain: contract and registry (:mod:`.base`), per-route compilation
(:mod:`.chain`) and the built-in filters (fault, local and global rate limit, RBAC)."""

from metamesh.proxy.filters.base import (
    CONTINUE,
    FAULT,
    GLOBAL_RATELIMIT,
    LOCAL_RATELIMIT,
    RBAC,
    ROUTER,
    Filter,
    FilterContext,
    FilterFactory,
    FilterResult,
    LocalReply,
    Stop,
    UnknownFilterError,
    known_filters,
    lookup_filter,
    register_filter,
)

__all__ = [
    "CONTINUE",
    "FAULT",
    "GLOBAL_RATELIMIT",
    "LOCAL_RATELIMIT",
    "RBAC",
    "ROUTER",
    "Filter",
    "FilterContext",
    "FilterFactory",
    "FilterResult",
    "LocalReply",
    "Stop",
    "UnknownFilterError",
    "known_filters",
    "lookup_filter",
    "register_filter",
]
