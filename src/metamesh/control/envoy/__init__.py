"""The second back end of the model: Envoy's own filters for a node that is a real Envoy.

:func:`translate_for_envoy` is what :func:`metamesh.control.translate.translate` hands a node
whose ``data_plane`` is ``"envoy"`` (its ``user_agent_name`` says so, or its node metadata has
``METAMESH_DATA_PLANE: envoy``; see :func:`metamesh.xds.server.node_identity`).

How: the metamesh translation of the same model (as for a metamesh node with the same
identity) already holds what Envoy loads as is: the clusters (lb policy, circuit breakers,
outlier detection, upstream TLS), their endpoints, the inbound clusters and the rate limit
service's cluster, and the listeners' addresses, filter chains and downstream TLS. Only the
MetaProtocol pieces are metamesh's own: every filter chain's
``envoy.filters.network.meta_protocol_proxy`` is replaced by the protocol's native Envoy filter
and the MetaProtocol RouteConfiguration (``envoy.config.route.v3``, metadata as headers) by the
protocol filter's own route table, served over that filter's RDS under the same name:

- thrift codec: ``envoy.filters.network.thrift_proxy`` (:mod:`.thrift`);
- dubbo codec: ``envoy.filters.network.dubbo_proxy`` (:mod:`.dubbo`, which says why not
  generic_proxy);
- Redis ports: ``envoy.filters.network.redis_proxy`` listeners and their clusters
  (:func:`.redis.redis_resources`, helper B's; RedisService routes live in the listener);
- any other codec: no listener (Envoy has no filter for it), and :mod:`.findings` says so.

The server-side policies go where the metamesh translation put its own filters (read back from
its listener): authorization as network RBAC filters in front of the protocol filter
(:mod:`.authz`), a Thrift global rate limit inside thrift_proxy (:mod:`.thrift`). Inbound
listeners whose chains match on the transport get ``tls_inspector``, which Envoy needs for that
match. ``METAMESH_LISTEN_ADDRESS`` moves the outbound listeners (:func:`_rebind`).

What a MetaRouter asks that the Envoy filter cannot do is left out of the Envoy config (the
closest correct config: a route that cannot be matched as written is dropped, a policy with no
Envoy field is not approximated by a different one) and reported by
:func:`envoy_findings` (:mod:`.findings`), which ``metamesh validate --data-plane envoy``
prints as warnings at their file and line (:mod:`.validate`).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

from metamesh.codecs.registry import canonical_name
from metamesh.control.envoy import dubbo, redis, thrift
from metamesh.control.envoy.authz import rbac_filters, server_filters
from metamesh.control.envoy.findings import EnvoyFinding, Findings
from metamesh.control.envoy.policies import hash_key_findings
from metamesh.control.envoy.ports import EnvoyPort, Tables, envoy_ports
from metamesh.control.model import MeshModel
from metamesh.control.redis import is_redis
from metamesh.control.tls_contexts import TLS_INSPECTOR
from metamesh.control.translate import (
    GLOBAL_RATELIMIT_FILTER,
    LOCAL_RATELIMIT_FILTER,
    META_PROTOCOL_FILTER,
    RBAC_FILTER,
    route_config_name,
    translate,
)
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ENVOY_DATA_PLANE,
    LISTENER_TYPE,
    METAMESH_DATA_PLANE,
    ROUTE_TYPE,
    TYPE_URLS,
    ProxyNode,
    XdsResources,
)

RATE_LIMIT_NOT_APPLIED = (
    "Envoy has no per-request rate limit of this kind for this protocol (thrift_proxy: no local "
    "one; dubbo_proxy: none); Envoy nodes do not apply it"
)

__all__ = ["EnvoyFinding", "EnvoyPort", "envoy_findings", "envoy_ports", "translate_for_envoy"]


def translate_for_envoy(model: MeshModel, node: ProxyNode) -> XdsResources:
    """Every resource the Envoy ``node`` needs (see the module docstring)."""
    return _translate(model, node, Findings())


def envoy_findings(model: MeshModel) -> list[EnvoyFinding]:
    """What Envoy nodes cannot be given as ``model`` asks (a node that sees every service)."""
    notes = Findings()
    _translate(model, ProxyNode("validate", data_plane=ENVOY_DATA_PLANE), notes)
    return sorted(notes)


def _translate(model: MeshModel, node: ProxyNode, notes: Findings) -> XdsResources:
    base = translate(model, replace(node, data_plane=METAMESH_DATA_PLANE))
    tables: Tables = {url: dict(base.of(url)) for url in TYPE_URLS}
    bound: set[tuple[str, int]] = set()
    for item in envoy_ports(model, node):
        tables[ROUTE_TYPE].pop(item.routes, None)
        listener = tables[LISTENER_TYPE].pop(item.listener, None)
        if listener is None:
            continue
        placed = server_filters(listener)
        native = _native_filter(item, tables, notes, placed)
        if native is None:
            continue
        filters = [*_server_side(item, placed, notes), native]
        made = listener_pb2.Listener()
        made.CopyFrom(listener)
        for chain in made.filter_chains:
            kept = [f for f in chain.filters if f.name != META_PROTOCOL_FILTER]
            del chain.filters[:]
            chain.filters.extend([*kept, *filters])
        if item.inbound:
            _inspect_tls(made)
        elif not _rebind(made, node, bound, notes):
            continue
        tables[LISTENER_TYPE][made.name] = made
    _redis(model, node, tables, notes)
    return XdsResources(
        MappingProxyType(
            {url: MappingProxyType(dict(sorted(t.items()))) for url, t in tables.items()}
        )
    )


def _server_side(
    item: EnvoyPort, placed: set[str], notes: Findings
) -> list[listener_components_pb2.Filter]:
    """The server-side policies where the metamesh translation put them (``placed``: on the
    inbound side of a service with mesh workloads, else on its outbound listeners):
    authorization as network RBAC filters (:mod:`.authz`). A local rate limit has no Envoy
    filter for Thrift or Dubbo requests, nor a global one for Dubbo: findings (Thrift's global
    rate limit is in its filter, :mod:`.thrift`)."""
    router = item.service.router
    thrift_global = canonical_name(item.port.codec or "") == "thrift"
    for name, field in ((LOCAL_RATELIMIT_FILTER, "localRateLimit"),
                        (GLOBAL_RATELIMIT_FILTER, "globalRateLimit")):  # fmt: skip
        if (
            name in placed
            and router is not None
            and not (field == "globalRateLimit" and thrift_global)
        ):
            notes.add(router, f"spec.{field}", RATE_LIMIT_NOT_APPLIED)
    if RBAC_FILTER not in placed:
        return []
    return rbac_filters(item.service.authorization, item.stat_prefix, notes)


def _native_filter(item: EnvoyPort, tables: Tables, notes: Findings, placed: set[str]) -> Any:
    """The Envoy network filter for ``item``'s codec (its route table added to ``tables``),
    or None (and a finding) when Envoy has none."""
    codec = canonical_name(item.port.codec or "")
    if codec in ("thrift", "dubbo") and not item.inbound:
        hash_key_findings(item.service, item.port.number, f"{codec}_proxy", notes)
    if codec == "thrift":
        router = item.service.router
        limit = router.spec.global_rate_limit if router is not None else None
        return thrift.thrift_filter(
            item, tables, notes, limit if GLOBAL_RATELIMIT_FILTER in placed else None
        )
    if codec == "dubbo":
        return dubbo.dubbo_filter(item, tables, notes)
    notes.add(
        f"ServiceEntry {item.service.namespace}/{item.service.host}",
        f"ports[{item.port.name}]",
        f"Envoy has no filter for the codec {item.port.codec!r}; Envoy nodes get no listener",
    )
    return None


def _inspect_tls(listener: listener_pb2.Listener) -> None:
    """Envoy picks a filter chain by ``transport_protocol`` only when ``tls_inspector`` has
    looked at the first bytes; without it every connection is ``raw_buffer``, so a STRICT
    listener (one chain, ``tls``) would match nothing (found with the real binary). The
    metamesh translation adds the inspector for PERMISSIVE only (its proxy reads the first
    byte itself); an Envoy node gets it whenever a chain matches on the transport."""
    if not any(c.filter_chain_match.transport_protocol for c in listener.filter_chains):
        return
    if any(f.name == TLS_INSPECTOR for f in listener.listener_filters):
        return
    inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
    inspector.typed_config.Pack(tls_inspector_pb2.TlsInspector())


def _rebind(
    listener: listener_pb2.Listener, node: ProxyNode, bound: set[tuple[str, int]], notes: Findings
) -> bool:
    """Bind an outbound listener to the node's ``listen_address`` (when it gives one); False
    (and a finding) when another service's listener already has that address and port."""
    if node.listen_address is None:
        return True
    address = listener.address.socket_address
    address.address = node.listen_address
    key = (address.address, address.port_value)
    if key in bound:
        notes.add(
            f"Listener {listener.name}",
            "METAMESH_LISTEN_ADDRESS",
            f"another service already listens on {key[0]}:{key[1]} on this node; skipped",
        )
        return False
    bound.add(key)
    return True


def _redis(model: MeshModel, node: ProxyNode, tables: Tables, notes: Findings) -> None:
    """Redis ports: the metamesh Redis listeners (which Envoy would NACK) and route tables
    are replaced by ``redis_proxy`` listeners and Envoy's clusters (:mod:`.redis`)."""
    for host in sorted(model.services):
        service = model.services[host]
        for port in service.ports:
            if is_redis(port):
                tables[ROUTE_TYPE].pop(route_config_name(host, port.number), None)
                for address in service.addresses:
                    tables[LISTENER_TYPE].pop(f"{address}_{port.number}", None)
    listen = node.listen_address
    rebind = (lambda _: listen) if listen is not None else None
    for type_url, made in redis.redis_resources(model, node, rebind, notes).items():
        tables[type_url].update(made)
    for name, cluster in tables[CLUSTER_TYPE].items():  # CLUSTER mode: no EDS endpoints
        if cluster.HasField("cluster_type"):
            tables[ENDPOINT_TYPE].pop(name, None)
