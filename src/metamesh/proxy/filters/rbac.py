"""``metamesh.filters.rbac``: MetaAuthorizationPolicy enforcement (Istio's semantics).

DENY policies are evaluated first: if any matches, the request is denied. Then, if there is at
least one ALLOW policy, the request must match one of them; with no ALLOW policy it passes. A
policy matches when one of its rules matches; a rule matches when one of its sources and one of
its operations match (an empty list matches everything); inside a source or an operation every
field that is set must hold. A policy without rules matches nothing (Istio's "allow nothing").

Sources match on the downstream peer address (``ipBlocks``/``notIpBlocks``, CIDR or single
address, IPv4 and IPv6) and on the peer's verified identity, which a mutual TLS listener puts
on the connection (``Downstream.principal``, ``td/ns/<ns>/sa/<sa>``; empty in plaintext).
``principals`` match it as Istio's do: exact, ``prefix*``, ``*suffix``, or ``*`` for any
authenticated peer; ``namespaces`` match its ``ns`` segment the same way. A peer without an
identity matches no ``principals``/``namespaces`` entry (not even ``*``), so
``notPrincipals: ["*"]`` is how a policy singles out plaintext clients, as in Istio. Operations
match request metadata: ``attributes`` (each key must match one of its alternatives) and
``notAttributes`` (no alternative may match). Denied requests get an ``UNAUTHORIZED`` reply.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import (
    AuthzOperation,
    AuthzPolicy,
    AuthzSource,
    Listener,
    RbacConfig,
)
from metamesh.proxy.filters.base import CONTINUE, Filter, FilterContext, FilterResult, LocalReply
from metamesh.proxy.router import compile_matcher, matches

if TYPE_CHECKING:
    from collections.abc import Mapping

    from metamesh.proxy.upstream import ActiveRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_ip(peer: str) -> IpAddress | None:
    """The address part of a runtime peer string (``1.2.3.4:5``, ``::1:5``, ``[::1]:5``)."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 1 else peer
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def identity_matches(value: str, patterns: tuple[str, ...]) -> bool:
    """Istio's string match for identities: exact, ``prefix*``, ``*suffix``, ``*``; an empty
    value (no identity) matches nothing."""
    if not value:
        return False
    for p in patterns:
        if p == "*" or p == value:
            return True
        if p.endswith("*") and value.startswith(p[:-1]):
            return True
        if p.startswith("*") and value.endswith(p[1:]):
            return True
    return False


def principal_namespace(principal: str) -> str:
    """The ``ns`` segment of ``td/ns/<ns>/sa/<sa>`` (empty when not of that shape)."""
    parts = principal.split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" else ""


class _Source:
    __slots__ = ("namespaces", "nets", "not_namespaces", "not_nets", "not_principals", "principals")

    def __init__(self, src: AuthzSource) -> None:
        self.nets = tuple(ipaddress.ip_network(b, strict=False) for b in src.ip_blocks)
        self.not_nets = tuple(ipaddress.ip_network(b, strict=False) for b in src.not_ip_blocks)
        self.principals = src.principals
        self.not_principals = src.not_principals
        self.namespaces = src.namespaces
        self.not_namespaces = src.not_namespaces

    def match(self, ip: IpAddress | None, principal: str) -> bool:
        if self.nets and (ip is None or not any(ip in n for n in self.nets)):
            return False
        if self.not_nets and ip is not None and any(ip in n for n in self.not_nets):
            return False
        if self.principals and not identity_matches(principal, self.principals):
            return False
        if self.not_principals and identity_matches(principal, self.not_principals):
            return False
        if self.namespaces or self.not_namespaces:
            ns = principal_namespace(principal)
            if self.namespaces and not identity_matches(ns, self.namespaces):
                return False
            if self.not_namespaces and identity_matches(ns, self.not_namespaces):
                return False
        return True


class _Operation:
    __slots__ = ("attributes", "not_attributes")

    def __init__(self, op: AuthzOperation) -> None:
        self.attributes = tuple(
            tuple((compile_matcher(m),) for m in alternatives) for _, alternatives in op.attributes
        )
        self.not_attributes = tuple(
            (compile_matcher(m),) for _, alternatives in op.not_attributes for m in alternatives
        )

    def match(self, metadata: Mapping[str, str]) -> bool:
        for alternatives in self.attributes:
            if not any(matches(alt, metadata) for alt in alternatives):
                return False
        return not any(matches(alt, metadata) for alt in self.not_attributes)


class _Policy:
    __slots__ = ("name", "rules")

    def __init__(self, policy: AuthzPolicy) -> None:
        self.name = policy.name
        self.rules = tuple(
            (tuple(_Source(s) for s in r.sources), tuple(_Operation(o) for o in r.operations))
            for r in policy.rules
        )

    def match(self, ip: IpAddress | None, principal: str, metadata: Mapping[str, str]) -> bool:
        for sources, operations in self.rules:
            if sources and not any(s.match(ip, principal) for s in sources):
                continue
            if operations and not any(o.match(metadata) for o in operations):
                continue
            return True
        return False


class RbacFilter(Filter):
    __slots__ = ("_ips", "allows", "ctx", "denies")

    def __init__(self, config: RbacConfig, ctx: FilterContext) -> None:
        self.ctx = ctx
        self.denies = tuple(_Policy(p) for p in config.policies if p.action == "DENY")
        self.allows = tuple(_Policy(p) for p in config.policies if p.action == "ALLOW")
        self._ips: dict[str, IpAddress | None] = {}

    def _peer_ip(self, peer: str) -> IpAddress | None:
        ips = self._ips
        ip = ips.get(peer, False)
        if ip is False:
            if len(ips) > 4096:
                ips.clear()
            ip = ips[peer] = peer_ip(peer)
        return ip  # type: ignore[return-value]

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        d = req.downstream
        ip = self._peer_ip(d.peer)
        principal: str = d.principal
        metadata = req.request.metadata
        stats = self.ctx.stats
        for policy in self.denies:
            if policy.match(ip, principal, metadata):
                stats.rbac_denied += 1
                return LocalReply(ErrorKind.UNAUTHORIZED, f"denied by policy {policy.name}")
        if self.allows and not any(p.match(ip, principal, metadata) for p in self.allows):
            stats.rbac_denied += 1
            return LocalReply(ErrorKind.UNAUTHORIZED, "no ALLOW policy matched")
        stats.rbac_allowed += 1
        return CONTINUE


def identity_rules_without_tls(listener: Listener) -> list[str]:
    """Names of policies on a plaintext ``listener`` with a source that needs a peer identity:
    such a source can never match there (every peer is unauthenticated)."""
    if listener.tls_mode:
        return []
    found = []
    for _name, config in listener.filter_configs:
        if not isinstance(config, RbacConfig):
            continue
        for policy in config.policies:
            if any(
                src.principals or src.namespaces for rule in policy.rules for src in rule.sources
            ):
                found.append(f"{policy.action} policy {policy.name!r}")
    return found


def create_rbac(config: object | None, ctx: FilterContext) -> Filter | None:
    if config is None:
        return None  # no policy selects this workload: everything is allowed
    if not isinstance(config, RbacConfig):
        raise TypeError(f"rbac needs an RbacConfig, got {type(config)}")
    return RbacFilter(config, ctx)
