"""Translation shared per scope and reused across model versions: the control plane at scale.

The ADS server asks for ``translate(model, node)`` once per connected proxy on every push.
With hundreds of proxies and thousands of services, translating for each proxy is the cost
that grows fastest, yet most proxies ask the same question: proxies with the same namespace,
labels and workload identity get the same resources. :class:`ScopedTranslator` is a drop-in
``translate`` with two caches:

- **per scope**: the result for a node is kept under its *scope key*, the node's identity
  without its id (namespace, labels, service account, addresses, sides, data plane), and
  handed to every node with that key (the same :class:`XdsResources` object, which lets the
  streams and the wire encoding skip work too: :mod:`metamesh.xds.encoded`);
- **per service**: each service's outbound resources (:func:`translate.outbound_fragment`)
  are kept per (host, in mesh or not), so translating a scope after a change rebuilds only the
  services that changed.

When a new model arrives, it is compared with the previous one (services by host; everything
else as a whole). A change to what services' resources depend on besides the services
(policies, PeerAuthentications, Redis tables, settings) drops both caches; a Sidecar change
drops the scopes' results but keeps the services' fragments (who sees a service changed, not
what it is). Otherwise only the changed hosts matter: their
fragments are dropped, and so is the result of every scope that admits one of them (in the
old or the new model) or shares its namespace (its inbound side); other scopes keep theirs,
unchanged and not re-translated. A changed host that other services' rules name (a MetaRouter
destination or mirror, a rate limit service, a Redis route) may change those services'
resources as well, so such a change drops everything, to stay correct without tracking
references finely.

Counters (:attr:`translations`, :attr:`fragments_built`) say how much work was done; the tests
use them to check that a change visible to one scope re-translates that scope only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from metamesh.api import MetaRouter
from metamesh.api.base import Resource, fqdn
from metamesh.api.redis import RedisService
from metamesh.control.model import MeshModel, Service
from metamesh.control.scope import EgressScope, egress_scope
from metamesh.control.translate import Fragment, outbound_fragment, translate
from metamesh.xds.resources import ProxyNode, XdsResources

Translate = Callable[..., XdsResources]


def scope_key(node: ProxyNode) -> Hashable:
    """What decides a node's resources: its identity without its id."""
    return replace(node, node_id="")


@dataclass(slots=True)
class _Scoped:
    scope: EgressScope
    resources: XdsResources


class ScopedTranslator:
    """``translate(model, node)`` with per-scope and per-service caches (module docstring)."""

    def __init__(self, translate_fn: Translate = translate) -> None:
        self._translate = translate_fn
        self._model: MeshModel | None = None
        self._scopes: dict[Hashable, _Scoped] = {}
        self._fragments: dict[tuple[str, bool], Fragment] = {}
        self._referenced: set[str] = set()
        self._named: dict[int, tuple[Resource, frozenset[str]]] = {}  # id(rule spec) -> hosts
        #: Translations done, by scope key; fragments (service outbound sides) built.
        self.translations: Counter[Hashable] = Counter()
        self.fragments_built = 0

    def __call__(self, model: MeshModel, node: ProxyNode | None = None) -> XdsResources:
        node = node or ProxyNode()
        if model is not self._model:
            self._advance(model)
        key = scope_key(node)
        hit = self._scopes.get(key)
        if hit is None:
            resources = self._translate(model, node, fragments=self._fragment)
            hit = self._scopes[key] = _Scoped(egress_scope(model, node), resources)
            self.translations[key] += 1
        return hit.resources

    def _fragment(self, model: MeshModel, service: Service, in_mesh: bool) -> Fragment:
        key = (service.host, in_mesh)
        fragment = self._fragments.get(key)
        if fragment is None:
            fragment = self._fragments[key] = outbound_fragment(model, service, in_mesh)
            self.fragments_built += 1
        return fragment

    def _advance(self, model: MeshModel) -> None:
        old, self._model = self._model, model
        changed = None if old is None else changed_hosts(old, model)
        referenced, self._referenced = self._referenced, self._referenced_in(model)
        if changed is None or changed & (referenced | self._referenced):
            self._scopes.clear()
            self._fragments.clear()
            return
        if old is not None and old.sidecars != model.sidecars:
            self._scopes.clear()  # who sees what changed; each service's resources did not
        if not changed:
            return
        for host in changed:
            self._fragments.pop((host, True), None)
            self._fragments.pop((host, False), None)
        services = [
            s for m in (old, model) if m is not None for h in changed if (s := m.services.get(h))
        ]
        namespaces = {s.namespace for s in services}
        self._scopes = {
            key: scoped
            for key, scoped in self._scopes.items()
            if scoped.scope.namespace not in namespaces
            and not any(scoped.scope.admits(s) for s in services)
        }

    def _referenced_in(self, model: MeshModel) -> set[str]:
        """Hosts that some *other* service's rules name (MetaRouter destinations and mirrors,
        rate limit services, Redis routes): a change to one of them may change those.
        The hosts each rule names are remembered per rule object: the config sources hand
        unchanged resources over as the same objects, so only edited rules are walked."""
        named: dict[int, tuple[Resource, frozenset[str]]] = {}
        out: set[str] = set()
        rules: list[tuple[str, MetaRouter | RedisService]] = [
            (h, s.router) for h, s in model.services.items() if s.router is not None
        ]
        for host, rule in (*rules, *model.redis.services.items()):
            entry = self._named.get(id(rule))
            if entry is None or entry[0] is not rule:
                entry = (rule, frozenset(_hosts_in(rule.spec, rule.namespace)))
            named[id(rule)] = entry
            out |= entry[1] - {host}
        self._named = named
        return out


def changed_hosts(old: MeshModel, new: MeshModel) -> set[str] | None:
    """The hosts whose service differs; None when something a service's resources depend on
    besides the service changed (policies, PeerAuthentications, Redis tables, settings)."""
    if (
        old.peer_authentications != new.peer_authentications
        or old.authorization_policies != new.authorization_policies
        or old.settings != new.settings
        or old.redis != new.redis
    ):
        return None
    hosts = old.services.keys() | new.services.keys()
    return {h for h in hosts if not _same(old.services.get(h), new.services.get(h))}


def _same(a: Service | None, b: Service | None) -> bool:
    return a is b or a == b


def _hosts_in(spec: BaseModel, namespace: str) -> set[str]:
    return {fqdn(v, namespace) for v in _host_values(spec.model_dump())}


def _host_values(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "host" and isinstance(item, str) and item:
                yield item
            elif key == "rate_limit_service" and isinstance(item, str):
                parts = item.split("|")
                if len(parts) == 4:
                    yield parts[3]
            else:
                yield from _host_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _host_values(item)
