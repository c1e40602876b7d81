"""Registers metamesh's built-in filters under their Aeraki and metamesh names."""

from __future__ import annotations

from metamesh.proxy.filters.base import (
    FAULT,
    GLOBAL_RATELIMIT,
    LOCAL_RATELIMIT,
    RBAC,
    ROUTER,
    Filter,
    FilterContext,
    register_filter,
)


def _router(config: object | None, ctx: FilterContext) -> Filter | None:
    return None  # terminal: the connection manager routes after the chain


def register_builtins() -> None:
    from metamesh.proxy.filters.command_stats import COMMAND_STATS, create_command_stats
    from metamesh.proxy.filters.fault import create_fault_filter
    from metamesh.proxy.filters.local_ratelimit import create_local_ratelimit
    from metamesh.proxy.filters.ratelimit import create_global_ratelimit
    from metamesh.proxy.filters.rbac import create_rbac

    register_filter(ROUTER, _router)
    register_filter(LOCAL_RATELIMIT, create_local_ratelimit)
    register_filter(GLOBAL_RATELIMIT, create_global_ratelimit)
    register_filter(FAULT, create_fault_filter)
    register_filter(RBAC, create_rbac)
    register_filter(COMMAND_STATS, create_command_stats)
