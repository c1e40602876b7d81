"""Aeraki's ``metaprotocol.aeraki.io/v1alpha1`` ApplicationProtocol and MetaRouter.

An **ApplicationProtocol** names a protocol (``protocol: dubbo``) and the codec that parses it
(``codec: aeraki.meta_protocol.codec.dubbo``); a ServiceEntry port called
``tcp-metaprotocol-dubbo-...`` then selects it. A **MetaRouter** holds the routing rules of one
host: an ordered list of routes (first match wins) that match request metadata attributes and
send to one destination or a weighted split, with optional mirroring and metadata mutation,
plus local (token bucket) and global (rate limit service) rate limits.

Every field of Aeraki's API is modelled with Aeraki's names, so Aeraki YAML loads unchanged.

metamesh extensions
-------------------
A :class:`MetaRoute` also accepts three optional fields Aeraki does not have (Aeraki issues
#158, meta-protocol-proxy #30/#59 asked for them); plain Aeraki YAML never sets them:

``timeout``
    duration; the whole request, including retries, fails with a timeout error after it.
``retries``
    ``{attempts, perTryTimeout, retryOn: [connect-failure|reset|error-response|timeout],
    backoff: {baseInterval, maxInterval}, retryNonIdempotent}``. Requests are only retried when
    the codec says they are idempotent unless ``retryNonIdempotent`` is true.
``fault``
    ``{delay: {fixedDelay, percentage}, abort: {errorKind, message, percentage}}``; percentages
    are ``{value: 0..100}`` like ``mirrorPercentage``; ``errorKind`` is a
    :class:`metamesh.codecs.message.ErrorKind` value (``fault_abort`` by default,
    ``timeout``, ``over_limit``, ...); the reply is the codec's native error reply.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from metamesh.api.base import Resource, SpecModel, StringMatch
from metamesh.api.duration import Duration
from metamesh.codecs.message import ErrorKind

METAPROTOCOL_VERSIONS = ("metaprotocol.aeraki.io/v1alpha1",)


class ApplicationProtocolSpec(SpecModel):
    protocol: str = ""
    codec: str = ""


class ApplicationProtocol(Resource):
    """Cluster-scoped in Aeraki: its namespace is ignored."""

    API_VERSIONS = METAPROTOCOL_VERSIONS
    KIND = "ApplicationProtocol"
    NAMESPACED = False

    spec: ApplicationProtocolSpec


class MetaRouteMatch(SpecModel):
    """Attribute conditions, ANDed; a null value means "present"."""

    attributes: dict[str, StringMatch | None] = Field(default_factory=dict)


class PortSelector(SpecModel):
    number: int = Field(ge=0, le=65535)


class Destination(SpecModel):
    host: str = ""
    subset: str | None = None
    port: PortSelector | None = None


class MetaRouteDestination(SpecModel):
    destination: Destination | None = None
    weight: int = Field(default=0, ge=0)


class Percent(SpecModel):
    value: float = 0.0


class KeyValue(SpecModel):
    key: str = ""
    value: str = ""


# --- metamesh extensions ----------------------------------------------------------------

RetryOn = Literal["connect-failure", "reset", "error-response", "timeout"]
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "reset")


class RetryBackoff(SpecModel):
    base_interval: Duration | None = None
    max_interval: Duration | None = None


class RetryPolicy(SpecModel):
    """metamesh extension: how a failed request is retried."""

    attempts: int = Field(default=0, ge=0)
    per_try_timeout: Duration | None = None
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    backoff: RetryBackoff | None = None
    retry_non_idempotent: bool = False


class FaultDelay(SpecModel):
    fixed_delay: Duration | None = None
    percentage: Percent | None = None


def _error_kind(value: object) -> object:
    if isinstance(value, str):
        known = [kind.value for kind in ErrorKind]
        if value.lower() not in known:
            raise ValueError(f"unknown errorKind {value!r} (one of {', '.join(known)})")
        return value.lower()
    return value


FaultErrorKind = Annotated[str, BeforeValidator(_error_kind)]


class FaultAbort(SpecModel):
    error_kind: FaultErrorKind = ErrorKind.FAULT_ABORT.value
    message: str = ""
    percentage: Percent | None = None


class FaultInjection(SpecModel):
    """metamesh extension: delay and/or abort a share of the matched requests."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


# --- routes and rate limits --------------------------------------------------------------


class MetaRoute(SpecModel):
    name: str = ""
    match: MetaRouteMatch | None = None
    route: list[MetaRouteDestination] = Field(default_factory=list)
    mirror: Destination | None = None
    mirror_percentage: Percent | None = None
    request_mutation: list[KeyValue] = Field(default_factory=list)
    response_mutation: list[KeyValue] = Field(default_factory=list)
    # metamesh extensions (see module docstring)
    timeout: Duration | None = None
    retries: RetryPolicy | None = None
    fault: FaultInjection | None = None


class TokenBucket(SpecModel):
    max_tokens: int = Field(default=0, ge=0)
    tokens_per_fill: int | None = Field(default=None, ge=0)
    fill_interval: Duration | None = None


class LocalRateLimitCondition(SpecModel):
    match: MetaRouteMatch | None = None
    token_bucket: TokenBucket | None = None


class LocalRateLimit(SpecModel):
    token_bucket: TokenBucket | None = None
    conditions: list[LocalRateLimitCondition] = Field(default_factory=list)


class RateLimitDescriptor(SpecModel):
    property: str = ""
    descriptor_key: str = ""


class GlobalRateLimit(SpecModel):
    match: MetaRouteMatch | None = None
    domain: str = ""
    request_timeout: Duration | None = None
    deny_on_fail: bool = False
    rate_limit_service: str = ""
    descriptors: list[RateLimitDescriptor] = Field(default_factory=list)


class MetaRouterSpec(SpecModel):
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    routes: list[MetaRoute] = Field(default_factory=list)
    local_rate_limit: LocalRateLimit | None = None
    global_rate_limit: GlobalRateLimit | None = None
    export_to: list[str] = Field(default_factory=list)


class MetaRouter(Resource):
    API_VERSIONS = METAPROTOCOL_VERSIONS
    KIND = "MetaRouter"

    spec: MetaRouterSpec
