"""Which services a proxy is sent: ``exportTo`` and Istio's ``Sidecar`` egress hosts.

A proxy with a namespace (a workload's sidecar) sees a service when the service is exported to
its namespace (:meth:`~metamesh.control.model.Service.visible_to`) **and** the Sidecar that
applies to it imports the host. Which Sidecar applies is Istio's rule:

1. a Sidecar of the proxy's namespace whose ``workloadSelector.labels`` the proxy's labels
   carry (several: the first by name, where Istio takes the oldest);
2. else the namespace's Sidecar without a selector;
3. else the root namespace's Sidecar without a selector (the mesh-wide default), whose ``./``
   hosts mean the proxy's own namespace;
4. else none: everything exported to the namespace is visible.

A proxy without a namespace (``metamesh up``'s embedded proxy) sees every service. The scope is
a small frozen value (:class:`EgressScope`), so proxies with equal scopes can share one
translation (:mod:`metamesh.control.scoped`).
"""

from __future__ import annotations

from dataclasses import dataclass

from metamesh.api.sidecar import Sidecar, split_egress_host
from metamesh.control.model import MeshModel, Service
from metamesh.xds.resources import ProxyNode

#: An egress host entry with ``.`` resolved: (namespace or ``*``, dnsName).
HostRule = tuple[str, str]


@dataclass(frozen=True, slots=True)
class EgressScope:
    """The services a proxy may see: its namespace (None: all) and the egress host rules of
    the Sidecar that applies (``sidecar`` None: no Sidecar, only ``exportTo`` limits)."""

    namespace: str | None = None
    sidecar: str | None = None  # "namespace/name" of the Sidecar applied
    hosts: tuple[HostRule, ...] = ()

    def admits(self, service: Service) -> bool:
        if self.namespace is None:
            return True
        if not service.visible_to(self.namespace):
            return False
        if self.sidecar is None:
            return True
        return any(_matches(rule, service) for rule in self.hosts)

    def candidates(self, model: MeshModel) -> tuple[str, ...]:
        """The hosts :meth:`admits` may accept, sorted: only the namespaces the Sidecar names
        when it names no ``*/`` (10,000 services, a scope of two namespaces: 1,000 looked at)."""
        index = namespace_index(model)
        if self.namespace is None or self.sidecar is None:
            return index.hosts
        namespaces = {namespace for namespace, _ in self.hosts} - {"~"}
        if "*" in namespaces:
            return index.hosts
        return tuple(sorted(h for ns in namespaces for h in index.by_namespace.get(ns, ())))


@dataclass(frozen=True, slots=True)
class NamespaceIndex:
    hosts: tuple[str, ...]
    by_namespace: dict[str, tuple[str, ...]]


_index: tuple[MeshModel, NamespaceIndex] | None = None


def namespace_index(model: MeshModel) -> NamespaceIndex:
    """Every host sorted, and by namespace; kept for the last model (every scope of a push
    asks about the same one)."""
    global _index
    if _index is not None and _index[0] is model:
        return _index[1]
    hosts = tuple(sorted(model.services))
    grouped: dict[str, list[str]] = {}
    for host in hosts:
        grouped.setdefault(model.services[host].namespace, []).append(host)
    index = NamespaceIndex(hosts, {ns: tuple(h) for ns, h in grouped.items()})
    _index = (model, index)
    return index


def _matches(rule: HostRule, service: Service) -> bool:
    namespace, host = rule
    if namespace == "~" or (namespace != "*" and namespace != service.namespace):
        return False
    if host == "*":
        return True
    if host.startswith("*."):
        return service.host.endswith(host[1:])
    return service.host == host


def applied_sidecar(sidecars: tuple[Sidecar, ...], node: ProxyNode, root: str) -> Sidecar | None:
    """The Sidecar that applies to ``node`` (the module docstring's order), or None."""
    if node.namespace is None:
        return None
    labels = dict(node.labels)
    own = [s for s in sidecars if s.namespace == node.namespace]
    for sidecar in own:
        selector = sidecar.spec.workload_selector
        wanted = selector.labels.items() if selector is not None else ()
        if wanted and all(labels.get(k) == v for k, v in wanted):
            return sidecar
    for sidecar in (*own, *(s for s in sidecars if s.namespace == root)):
        selector = sidecar.spec.workload_selector
        if selector is None or not selector.labels:
            return sidecar
    return None


def egress_scope(model: MeshModel, node: ProxyNode) -> EgressScope:
    """What ``node`` may see in ``model``."""
    sidecar = applied_sidecar(model.sidecars, node, model.settings.root_namespace)
    if sidecar is None:
        return EgressScope(node.namespace)
    rules: list[HostRule] = [] if sidecar.spec.egress else [("*", "*")]  # Istio's default
    for listener in sidecar.spec.egress:
        for entry in listener.hosts:
            namespace, host = split_egress_host(entry)
            if namespace == ".":
                namespace = node.namespace or sidecar.namespace
            rules.append((namespace, host))
    return EgressScope(
        node.namespace, f"{sidecar.namespace}/{sidecar.name}", tuple(dict.fromkeys(rules))
    )
