"""Istio's ``networking.istio.io`` Sidecar: which services a workload's proxy is told about.

A mesh of thousands of services must not push every service to every proxy: a workload
usually talks to a handful. Istio's Sidecar resource says which (``egress[].hosts``), and
metamesh applies it the same way (the scoping itself is :mod:`metamesh.control.scope`):

- ``egress[].hosts`` entries are ``namespace/dnsName``. The namespace is a name, ``*`` (any),
  ``.`` (the Sidecar's own namespace; for the mesh-wide default in the root namespace, the
  namespace of the proxy it applies to) or ``~`` (none: ``~/*`` imports nothing). The DNS
  name is a FQDN, ``*`` or a ``*.suffix`` wildcard. The hosts of every egress entry add up.
- ``workloadSelector.labels`` narrows a Sidecar to the workloads of its namespace carrying
  those labels; without one it is the namespace's default; a selector-less Sidecar in the root
  namespace (``istio-system``) is the default for namespaces without their own.

Fields that shape Envoy listeners metamesh does not build (``ingress``, an egress entry's
``port``, ``bind``, ``captureMode``, ``outboundTrafficPolicy``, ``inboundConnectionPool``)
are accepted and warned about (:mod:`metamesh.api.unsupported`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from metamesh.api.base import Resource, SpecModel, WorkloadSelector
from metamesh.api.istio import ISTIO_NETWORKING_VERSIONS


def split_egress_host(entry: str) -> tuple[str, str]:
    """``"ns/host"`` -> ``("ns", "host")``; raises ValueError on another shape."""
    namespace, sep, host = entry.partition("/")
    if not sep or not namespace or not host or "/" in host:
        raise ValueError(
            f"egress host {entry!r} must be namespace/dnsName (e.g. ./*, */foo.example.com, "
            "istio-system/*)"
        )
    if host != "*" and "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
        raise ValueError(f"egress host {entry!r}: only '*' or a leading '*.' wildcard")
    return namespace, host


class EgressListener(SpecModel):
    """One ``egress`` entry: the hosts it imports (its port and bind are not applied)."""

    hosts: list[str] = Field(min_length=1)
    port: dict[str, Any] | None = None
    bind: str | None = None
    capture_mode: str | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts_are_namespaced(cls, hosts: list[str]) -> list[str]:
        for entry in hosts:
            split_egress_host(entry)
        return hosts


class SidecarSpec(SpecModel):
    workload_selector: WorkloadSelector | None = None
    egress: list[EgressListener] = Field(default_factory=list)
    ingress: list[dict[str, Any]] = Field(default_factory=list)
    outbound_traffic_policy: dict[str, Any] | None = None
    inbound_connection_pool: dict[str, Any] | None = None


class Sidecar(Resource):
    """Istio's ``Sidecar`` kind (``networking.istio.io`` ``v1alpha3``/``v1beta1``/``v1``)."""

    API_VERSIONS = ISTIO_NETWORKING_VERSIONS
    KIND = "Sidecar"

    spec: SidecarSpec = Field(default_factory=SidecarSpec)
