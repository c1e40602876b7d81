"""Istio's ``security.istio.io`` PeerAuthentication, as metamesh reads it.

A PeerAuthentication says whether a workload's inbound ports take mutual TLS, plaintext or
both. Istio's scopes apply (:func:`metamesh.control.peer_auth.resolve_mtls` resolves them): one
policy in the root namespace (``istio-system`` by default) is mesh-wide, one without a selector
in a namespace covers that namespace, one with ``selector.matchLabels`` covers the workloads it
selects, and ``portLevelMtls`` overrides the mode for single ports (Istio only allows it with a
selector, and so does validation here). ``UNSET`` inherits from the next wider scope; with
nothing set at all the mode is ``PERMISSIVE``, Istio's default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metamesh.api.base import LabelSelector, Resource, SpecModel

ISTIO_SECURITY_VERSIONS = ("security.istio.io/v1beta1", "security.istio.io/v1")

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTls(SpecModel):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(SpecModel):
    selector: LabelSelector | None = None
    mtls: MutualTls | None = None
    #: Istio keys the map by port *number* (a string key in YAML is read as the number).
    port_level_mtls: dict[int, MutualTls] = Field(default_factory=dict)


class PeerAuthentication(Resource):
    API_VERSIONS = ISTIO_SECURITY_VERSIONS
    KIND = "PeerAuthentication"

    spec: PeerAuthenticationSpec = PeerAuthenticationSpec()
