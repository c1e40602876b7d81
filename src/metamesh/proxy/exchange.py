"""Metadata exchange: a metamesh proxy tells the proxy in front of an endpoint who sent (sans-IO).

Istio's sidecars exchange workload metadata so that the server side can label a request with
its source workload (``x-envoy-peer-metadata`` headers for HTTP, a preamble for TCP). metamesh
does it in the protocol's own headers, once per connection:

* an outbound proxy adds :data:`HEADER` to the **first request it sends on each new upstream
  connection** (a codec mutation: a Dubbo request attachment, a THeader info header). The value
  is this proxy's :class:`~metamesh.proxy.telemetry.Workload` as compact JSON;
* an inbound listener (``reporter="destination"``) looks for it in the **first request of each
  client connection**; found, the connection's :class:`~metamesh.proxy.telemetry.Origin` names
  the source workload, namespace, app, version and cluster it told. Not found (the client is no
  metamesh proxy), the connection stops looking and its labels stay what mutual TLS tells
  (principal, namespace) or ``unknown``.

Why per connection and not per request: a mutation re-encodes the frame, which would cost every
request; a connection carries one source. Why requests only: a Dubbo reply can only carry
attachments by changing its response kind, which older consumers do not read; the client side
already knows the destination's app, version and workload from the endpoint's labels.

Trust: what a peer tells is a label, not an identity. The principal is never taken from it
(only mutual TLS gives ``source_principal``), a verified namespace wins over a told one, values
are cut to :data:`MAX_VALUE` characters, and a proxy keeps at most :data:`MAX_ORIGINS` distinct
origins: past that, told values are ignored, so a client cannot grow the series without bound.
Framings without headers (Thrift framed/unframed without THeader) cannot carry it; the core
tries the mutation and, when the codec drops it, does not count it as a dropped mutation.
"""

from __future__ import annotations

import json
from typing import Final

from metamesh.proxy.telemetry import UNKNOWN, Workload

#: The request header / attachment that carries the sender's workload.
HEADER: Final = "x-metamesh-peer"
#: Longest accepted value of one field, and of the whole header.
MAX_VALUE: Final = 253
MAX_HEADER: Final = 2048
#: Distinct connection origins a proxy keeps before it ignores told values.
MAX_ORIGINS: Final = 1024

_FIELDS: Final = (
    ("w", "name"),
    ("ns", "namespace"),
    ("app", "app"),
    ("v", "version"),
    ("c", "cluster"),
)


def encode(workload: Workload) -> str:
    """The header value for ``workload`` (its known fields only)."""
    told = {k: getattr(workload, attr) for k, attr in _FIELDS if getattr(workload, attr) != UNKNOWN}
    return json.dumps(told, separators=(",", ":"), sort_keys=True)


def decode(value: str | None) -> Workload | None:
    """The workload a peer told, or None when ``value`` is absent or not a valid header."""
    if not value or len(value) > MAX_HEADER:
        return None
    try:
        told = json.loads(value)
    except ValueError:
        return None
    if not isinstance(told, dict):
        return None
    fields = {}
    for key, attr in _FIELDS:
        v = told.get(key)
        if isinstance(v, str) and v and len(v) <= MAX_VALUE and v.isprintable():
            fields[attr] = v
    return Workload(**fields) if fields else None


def source_of(verified: Workload, told: Workload | None) -> Workload:
    """The source of an inbound connection: what mutual TLS verified (principal, namespace),
    completed by what the peer told (never its principal)."""
    if told is None:
        return verified
    return Workload(
        name=told.name,
        namespace=told.namespace if verified.namespace == UNKNOWN else verified.namespace,
        principal=verified.principal,
        app=told.app,
        version=told.version,
        cluster=told.cluster,
    )
