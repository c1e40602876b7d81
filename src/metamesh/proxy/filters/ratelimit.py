"""``aeraki.meta_protocol.filters.ratelimit`` (global): ask a rate limit service per request.

This is the asynchronous slot of the filter chain. For each matching request the filter builds
the descriptors (``descriptor_key`` = value of metadata ``property``), emits a
``(RATELIMIT_CHECK, request, token, domain, descriptors, service, timeout)`` action and stops
the request; the connection keeps serving other requests. The runtime asks the service (Envoy's
RLS ``ShouldRateLimit``) and reports the answer with
:meth:`~metamesh.proxy.connection.ConnectionManager.resume_request`: allowed continues,
over limit answers ``OVER_LIMIT``. If no answer comes within ``timeout`` (Aeraki's default
20 ms), or the runtime reports an error, the failure mode decides: deny with ``OVER_LIMIT``
when ``failure_mode_deny``, else let the request through.

An empty ``match`` limits every request (what Aeraki's proto documents; its code does the
opposite). The gRPC client for the service is not part of the sans-IO core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from metamesh.codecs import ErrorKind
from metamesh.codecs.message import metadata_get
from metamesh.proxy.config import GlobalRateLimitConfig
from metamesh.proxy.filters.base import (
    CONTINUE,
    Filter,
    FilterContext,
    FilterResult,
    LocalReply,
    Stop,
)
from metamesh.proxy.router import compile_matcher, matches

if TYPE_CHECKING:
    from metamesh.proxy.upstream import ActiveRequest

#: Action code emitted for the runtime (distinct from the connection manager's own codes).
RATELIMIT_CHECK: Final = 100
OVER_LIMIT: Final = LocalReply(ErrorKind.OVER_LIMIT, "global rate limit exceeded")
_FAILED_CLOSED: Final = LocalReply(ErrorKind.OVER_LIMIT, "rate limit service unavailable")


class GlobalRateLimitFilter(Filter):
    __slots__ = ("config", "ctx", "matchers")

    def __init__(self, config: GlobalRateLimitConfig, ctx: FilterContext) -> None:
        self.config = config
        self.ctx = ctx
        self.matchers = tuple(compile_matcher(m) for m in config.match)

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        metadata = req.request.metadata
        if self.matchers and not matches(self.matchers, metadata):
            return CONTINUE
        config = self.config
        descriptors = tuple(
            (key, metadata_get(metadata, prop) or "") for key, prop in config.descriptors
        )
        ext = req.ext
        token = ext.wait_token + 1 if ext is not None else 0
        self.ctx.emit(
            (
                RATELIMIT_CHECK,
                req,
                token,
                config.domain,
                descriptors,
                config.rate_limit_service,
                config.timeout,
            )
        )
        return Stop(now + config.timeout, _FAILED_CLOSED if config.failure_mode_deny else None)


def create_global_ratelimit(config: object | None, ctx: FilterContext) -> Filter | None:
    if config is None:
        return None
    if not isinstance(config, GlobalRateLimitConfig):
        raise TypeError(f"ratelimit needs a GlobalRateLimitConfig, got {type(config)}")
    return GlobalRateLimitFilter(config, ctx)
