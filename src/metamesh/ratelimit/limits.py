"""Rate limit configuration: the limits YAML, its validation, and descriptor matching.

The file format is the one of Envoy's reference rate limit service (envoyproxy/ratelimit), so
existing limit files work unchanged::

    domain: kv
    descriptors:
    - key: method                 # matches any value: one counter per value
      rate_limit: {unit: minute, requests_per_unit: 100}
    - key: method
      value: put                  # an exact value wins over the "any value" entry
      rate_limit: {unit: second, requests_per_unit: 5}
      shadow_mode: true           # counted and reported, never enforced
    - key: user
      value: "beta-*"             # a trailing * matches by prefix
      descriptors:                # nested: the next entry of the same request descriptor
      - key: method
        rate_limit: {unit: hour, requests_per_unit: 1000}

A file may hold several YAML documents (``---``), one domain each. A request descriptor (a list
of ``(key, value)`` entries) is matched by walking the tree one entry per level: an exact
``key``+``value`` node first, then a prefix wildcard (``value: foo*``), then a ``key`` node with
no value. The node reached by the last entry decides: its ``rate_limit`` applies, or (no limit,
or the walk fell off the tree) the descriptor is not limited, as in the reference service.

Everything here is pure: no I/O beyond reading the file in :func:`load_limits`, no clock.
Errors are :class:`LimitsError` whose message names the file and the field path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

#: Window lengths (seconds) of the supported units: fixed windows aligned to the epoch.
UNIT_SECONDS: Mapping[str, int] = MappingProxyType(
    {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
)

_DOMAIN_FIELDS = frozenset({"domain", "descriptors"})
_NODE_FIELDS = frozenset({"key", "value", "rate_limit", "descriptors", "shadow_mode"})
_LIMIT_FIELDS = frozenset({"unit", "requests_per_unit", "name", "unlimited"})


class LimitsError(ValueError):
    """The limits file is invalid; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests_per_unit`` per fixed window of ``unit`` (``unlimited``: never limited)."""

    unit: str
    requests_per_unit: int
    name: str = ""
    unlimited: bool = False

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    """One level of a domain's descriptor tree (the domain itself is the root)."""

    key: str = ""
    value: str = ""
    rate_limit: RateLimit | None = None
    shadow_mode: bool = False
    exact: Mapping[str, DescriptorNode] = field(default_factory=dict)
    prefixes: tuple[tuple[str, DescriptorNode], ...] = ()
    any_value: Mapping[str, DescriptorNode] = field(default_factory=dict)

    def child(self, key: str, value: str) -> DescriptorNode | None:
        """The node for entry ``(key, value)``: exact, then prefix wildcard, then any value."""
        node = self.exact.get(f"{key}\x00{value}")
        if node is not None:
            return node
        for prefix, candidate in self.prefixes:
            if candidate.key == key and value.startswith(prefix):
                return candidate
        return self.any_value.get(key)


@dataclass(frozen=True, slots=True)
class Limits:
    """Every configured domain's descriptor tree, by domain name."""

    domains: Mapping[str, DescriptorNode]

    def find(self, domain: str, entries: Sequence[tuple[str, str]]) -> DescriptorNode | None:
        """The node whose limit applies to a request descriptor, or ``None`` (not limited)."""
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        for key, value in entries:
            node = node.child(key, value)
            if node is None:
                return None
        return node if node.rate_limit is not None else None


def load_limits(paths: Sequence[str | Path]) -> Limits:
    """Read and validate limit files (each may hold several YAML documents, one domain each)."""
    domains: dict[str, DescriptorNode] = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise LimitsError(f"{path}: cannot read: {e.strerror}") from None
        for name, root in parse_limits(text, str(path)).domains.items():
            if name in domains:
                raise LimitsError(f"{path}: domain {name!r} is already defined")
            domains[name] = root
    return Limits(MappingProxyType(domains))


def parse_limits(text: str, source: str = "<string>") -> Limits:
    """Validate limits YAML text; ``source`` names the file in error messages."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise LimitsError(f"{source}: not valid YAML: {e}") from None
    if not documents:
        raise LimitsError(f"{source}: no domain defined")
    domains: dict[str, DescriptorNode] = {}
    for i, doc in enumerate(documents):
        where = f"{source}: " if len(documents) == 1 else f"{source}: document {i + 1}: "
        name, root = _domain(doc, where)
        if name in domains:
            raise LimitsError(f"{where}domain {name!r} is already defined")
        domains[name] = root
    return Limits(MappingProxyType(domains))


def _domain(doc: object, where: str) -> tuple[str, DescriptorNode]:
    if not isinstance(doc, dict):
        raise LimitsError(f"{where}expected a mapping with 'domain' and 'descriptors'")
    _no_unknown(doc, _DOMAIN_FIELDS, where, "")
    domain = doc.get("domain")
    if not isinstance(domain, str) or not domain:
        raise LimitsError(f"{where}field 'domain': must be a non-empty string")
    return domain, _level(DescriptorNode(), doc.get("descriptors"), where, "descriptors")


def _level(parent: DescriptorNode, items: object, where: str, path: str) -> DescriptorNode:
    """``parent`` with the children listed in ``items`` (the YAML list at ``path``)."""
    if items is None:
        items = []
    if not isinstance(items, list):
        raise LimitsError(f"{where}field '{path}': must be a list")
    exact: dict[str, DescriptorNode] = {}
    prefixes: list[tuple[str, DescriptorNode]] = []
    any_value: dict[str, DescriptorNode] = {}
    for i, item in enumerate(items):
        node = _node(item, where, f"{path}[{i}]")
        if node.value.endswith("*"):
            taken = any(n.key == node.key and n.value == node.value for _, n in prefixes)
            prefixes.append((node.value[:-1], node))
        elif node.value:
            exact_key = f"{node.key}\x00{node.value}"
            taken = exact_key in exact
            exact[exact_key] = node
        else:
            taken = node.key in any_value
            any_value[node.key] = node
        if taken:
            shown = f"{node.key}={node.value}" if node.value else f"{node.key} (any value)"
            raise LimitsError(f"{where}field '{path}[{i}]': duplicate descriptor {shown}")
    prefixes.sort(key=lambda p: -len(p[0]))  # the longest prefix wins
    return DescriptorNode(
        parent.key,
        parent.value,
        parent.rate_limit,
        parent.shadow_mode,
        MappingProxyType(exact),
        tuple(prefixes),
        MappingProxyType(any_value),
    )


def _node(item: object, where: str, path: str) -> DescriptorNode:
    if not isinstance(item, dict):
        raise LimitsError(f"{where}field '{path}': must be a mapping")
    _no_unknown(item, _NODE_FIELDS, where, path)
    key = item.get("key")
    if not isinstance(key, str) or not key:
        raise LimitsError(f"{where}field '{path}.key': must be a non-empty string")
    value = item.get("value", "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # `value: 42` in YAML is still the string "42" on the wire
    if not isinstance(value, str):
        raise LimitsError(f"{where}field '{path}.value': must be a string")
    shadow = item.get("shadow_mode", False)
    if not isinstance(shadow, bool):
        raise LimitsError(f"{where}field '{path}.shadow_mode': must be true or false")
    raw_limit = item.get("rate_limit")
    limit = None if raw_limit is None else _rate_limit(raw_limit, where, f"{path}.rate_limit")
    node = DescriptorNode(key, value, limit, shadow)
    return _level(node, item.get("descriptors"), where, f"{path}.descriptors")


def _rate_limit(raw: object, where: str, path: str) -> RateLimit:
    if not isinstance(raw, dict):
        raise LimitsError(f"{where}field '{path}': must be a mapping")
    _no_unknown(raw, _LIMIT_FIELDS, where, path)
    unlimited = raw.get("unlimited", False)
    if not isinstance(unlimited, bool):
        raise LimitsError(f"{where}field '{path}.unlimited': must be true or false")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise LimitsError(f"{where}field '{path}.name': must be a string")
    if unlimited:
        return RateLimit("second", 0, name, unlimited=True)
    unit = raw.get("unit")
    if not isinstance(unit, str) or unit.lower() not in UNIT_SECONDS:
        units = ", ".join(UNIT_SECONDS)
        raise LimitsError(f"{where}field '{path}.unit': must be one of {units} (got {unit!r})")
    count = raw.get("requests_per_unit")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise LimitsError(
            f"{where}field '{path}.requests_per_unit': must be an integer >= 0 (got {count!r})"
        )
    return RateLimit(unit.lower(), count, name)


def _no_unknown(raw: dict[Any, Any], known: frozenset[str], where: str, path: str) -> None:
    for name in raw:
        if name not in known:
            full = f"{path}.{name}" if path else str(name)
            allowed = ", ".join(sorted(known))
            raise LimitsError(f"{where}field '{full}': unknown field (expected one of {allowed})")
