"""Authorization policies -> Envoy's network RBAC filters, in front of the protocol filter.

Neither thrift_proxy nor dubbo_proxy has an RBAC filter of its own, so an Envoy node enforces
MetaAuthorizationPolicy (and Aeraki's DubboAuthorizationPolicy, converted to it) with
``envoy.filters.network.rbac`` on the listener, where metamesh's proxy runs
``metamesh.filters.rbac`` (the same listeners: :func:`server_filters` reads which ones from the
metamesh translation). Istio's semantics need two filters: one with action DENY holding the
DENY policies, then one with action ALLOW holding the ALLOW policies (only when there is one:
with ALLOW policies and none matching, the connection is refused).

Each rule is one Envoy policy. Sources map as Istio maps them: ``ipBlocks`` ->
``direct_remote_ip`` CIDRs, ``principals`` -> the peer certificate's SPIFFE URI
(``spiffe://`` + the principal; ``prefix*``, ``*suffix``, ``*`` = any identity), ``namespaces``
-> that URI's ``/ns/<namespace>/`` part; the ``not*`` lists negated. A plaintext peer has no
identity and matches no principal or namespace, as in metamesh.

A network filter sees connections, not requests, so a rule's ``to`` operations (method,
interface, attributes) cannot be matched. As Istio does for TCP services, the result fails
closed and says so (a finding): an ALLOW rule with operations is left out (it allows nothing),
a DENY rule with operations is kept without them (it denies every request of its sources).
And where metamesh answers a denied request with the protocol's error reply, Envoy closes the
connection at its first bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import json_format
from udpa.type.v1 import typed_struct_pb2

from metamesh.api.authz import MetaAuthorizationPolicy, Rule, Source
from metamesh.control.envoy.findings import Findings

RBAC_FILTER = "envoy.filters.network.rbac"
METAMESH_RBAC = "metamesh.filters.rbac"


def server_filters(listener: listener_pb2.Listener) -> set[str]:
    """The names of the MetaProtocol filters the metamesh translation put on ``listener``."""
    names: set[str] = set()
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            struct = typed_struct_pb2.TypedStruct()
            if network_filter.typed_config.Unpack(struct):
                value: dict[str, Any] = json_format.MessageToDict(struct.value)
                names.update(f.get("name", "") for f in value.get("metaProtocolFilters", []))
    return names


def rbac_filters(
    policies: Sequence[MetaAuthorizationPolicy], stat_prefix: str, notes: Findings
) -> list[listener_components_pb2.Filter]:
    """The DENY filter (when there are DENY policies), then the ALLOW one (when ALLOW ones)."""
    made = []
    for action in ("DENY", "ALLOW"):
        chosen = [p for p in policies if p.spec.action == action]
        if not chosen:
            continue
        rules = rbac.RBAC(action=rbac.RBAC.Action.Value(action))
        for policy in chosen:
            for index, rule in enumerate(policy.spec.rules):
                envoy_policy = _policy(policy, index, rule, notes)
                if envoy_policy is not None:
                    rules.policies[f"{policy.ref}/{index}"].CopyFrom(envoy_policy)
        config = network_rbac.RBAC(stat_prefix=f"{stat_prefix}.{action.lower()}.", rules=rules)
        network_filter = listener_components_pb2.Filter(name=RBAC_FILTER)
        network_filter.typed_config.Pack(config)
        made.append(network_filter)
    return made


def _policy(
    policy: MetaAuthorizationPolicy, index: int, rule: Rule, notes: Findings
) -> rbac.Policy | None:
    where = f"spec.rules[{index}].to"
    has_operations = any(t.operation.attributes or t.operation.not_attributes for t in rule.to)
    if has_operations and policy.spec.action == "ALLOW":
        notes.add(policy, where, "a network RBAC filter cannot match operations; this ALLOW "
                  "rule is left out (it allows nothing on Envoy nodes)")  # fmt: skip
        return None
    if has_operations:
        notes.add(policy, where, "a network RBAC filter cannot match operations; this DENY "
                  "rule denies every request of its sources on Envoy nodes")  # fmt: skip
    made = rbac.Policy(permissions=[rbac.Permission(any=True)])
    if not rule.from_:
        made.principals.add(any=True)
    for entry in rule.from_:
        made.principals.append(_source(entry.source))
    return made


def _source(source: Source) -> rbac.Principal:
    """Every field set must match (an empty source matches any peer)."""
    parts: list[rbac.Principal] = []
    if source.ip_blocks:
        parts.append(_any_of([_ip(block) for block in source.ip_blocks]))
    if source.not_ip_blocks:
        parts.append(rbac.Principal(not_id=_any_of([_ip(b) for b in source.not_ip_blocks])))
    if source.principals:
        parts.append(_any_of([_identity(_principal_uri(p)) for p in source.principals]))
    if source.not_principals:
        ids = [_identity(_principal_uri(p)) for p in source.not_principals]
        parts.append(rbac.Principal(not_id=_any_of(ids)))
    if source.namespaces:
        parts.append(_any_of([_identity(_namespace_uri(n)) for n in source.namespaces]))
    if source.not_namespaces:
        ids = [_identity(_namespace_uri(n)) for n in source.not_namespaces]
        parts.append(rbac.Principal(not_id=_any_of(ids)))
    if not parts:
        return rbac.Principal(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac.Principal(and_ids=rbac.Principal.Set(ids=parts))


def _any_of(ids: list[rbac.Principal]) -> rbac.Principal:
    return ids[0] if len(ids) == 1 else rbac.Principal(or_ids=rbac.Principal.Set(ids=ids))


def _ip(block: str) -> rbac.Principal:
    address, _, prefix = block.partition("/")
    bits = int(prefix) if prefix else (128 if ":" in address else 32)
    cidr = address_pb2.CidrRange(address_prefix=address)
    cidr.prefix_len.value = bits
    return rbac.Principal(direct_remote_ip=cidr)


def _identity(matcher: string_pb2.StringMatcher) -> rbac.Principal:
    return rbac.Principal(authenticated=rbac.Principal.Authenticated(principal_name=matcher))


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _principal_uri(value: str) -> string_pb2.StringMatcher:
    """Istio's principal forms against the certificate's ``spiffe://`` URI."""
    if value == "*":
        return _regex(".+")
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=f"spiffe://{value[:-1]}")
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:])
    return string_pb2.StringMatcher(exact=f"spiffe://{value}")


def _namespace_uri(value: str) -> string_pb2.StringMatcher:
    """A namespace (or ``prefix*``, ``*suffix``, ``*``) as the URI's ``/ns/<ns>/`` part."""
    if value == "*":
        return _regex(".+")
    if value.endswith("*"):
        return _regex(f".*/ns/{re.escape(value[:-1])}[^/]*/.*")
    if value.startswith("*"):
        return _regex(f".*/ns/[^/]*{re.escape(value[1:])}/.*")
    return _regex(f".*/ns/{re.escape(value)}/.*")
