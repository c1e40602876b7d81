"""The two sides of the mesh: which workloads a proxy fronts, and how clients reach them.

A *mesh workload* is an endpoint with a service account (a ServiceEntry endpoint, or an Istio
``WorkloadEntry`` selected by the ServiceEntry's ``workloadSelector``): it has a proxy of its
own. That proxy tells who it is in its xDS node metadata (Istio's ``NAMESPACE``, ``LABELS``,
``SERVICE_ACCOUNT``, ``INSTANCE_IPS``); :func:`fronted_endpoints` finds the endpoints it
fronts: same namespace, same service account (when the node gives one), and either the
endpoint's address among the node's ``INSTANCE_IPS`` or every label of the endpoint carried by
the node (an endpoint without labels is only matched by address).

For each such endpoint and MetaProtocol port the proxy gets an :class:`InboundPort`:

- it listens on the endpoint's own address and port (``address:ports[name]``, else the
  ``targetPort``, else the service port), which is where the other proxies' outbound clusters
  connect; in Istio iptables sends that traffic to the sidecar, here the proxy owns the
  address;
- the local app is the endpoint of the cluster ``inbound|<service port>||<host>``:
  ``127.0.0.1`` on the same port number (in Istio the app listens on the pod's port and the
  sidecar reaches it on localhost). The endpoint's address must therefore not be 127.0.0.1
  itself; any other loopback address (127.0.20.1, ...) works without configuration on Linux;
- its ``tls_mode`` is the PeerAuthentication resolved for the workload and port
  (:func:`metamesh.control.peer_auth.resolve_mtls`);
- its authorization policies are those of the service whose selector selects this workload
  (Istio selects workloads, not services).

Auto mutual TLS (Istio's default when no DestinationRule sets ``tls``): a client cluster
connects to its mesh-workload endpoints with ISTIO_MUTUAL, accepting the SPIFFE ids of their
service accounts, and to its plain endpoints in plaintext, per endpoint as Istio does it
(``transport_socket_matches`` on the endpoints' ``tlsMode: istio``); when a workload's
PeerAuthentication is DISABLE, the whole cluster is plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from metamesh.api import MetaAuthorizationPolicy
from metamesh.control.model import Endpoint, MeshModel, Service, ServicePort, UpstreamTls
from metamesh.control.peer_auth import resolve_mtls
from metamesh.xds.resources import ProxyNode

APP_ADDRESS = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One inbound listener of a workload's proxy."""

    service: Service
    port: ServicePort
    address: str  # the endpoint's address: where clients' proxies connect
    listen_port: int  # the endpoint's port
    tls_mode: str  # STRICT, PERMISSIVE or DISABLE

    @property
    def cluster(self) -> str:
        return f"inbound|{self.port.number}||{self.service.host}"

    @property
    def app_port(self) -> int:
        return self.listen_port


def node_matches(node: ProxyNode, service: Service, endpoint: Endpoint) -> bool:
    """Whether ``node`` is the proxy of ``endpoint`` (see the module docstring)."""
    if not endpoint.service_account or node.namespace != service.namespace:
        return False
    if node.service_account and node.service_account != endpoint.service_account:
        return False
    if endpoint.address in node.instance_ips:
        return True
    labels = dict(node.labels)
    return bool(endpoint.labels) and all(labels.get(k) == v for k, v in endpoint.labels)


def fronted_endpoints(model: MeshModel, node: ProxyNode) -> list[tuple[Service, Endpoint]]:
    """The endpoints ``node`` fronts, by host then address."""
    if node.namespace is None:
        return []
    found = []
    for host in sorted(model.services):
        service = model.services[host]
        found += [(service, e) for e in service.endpoints if node_matches(node, service, e)]
    return found


def inbound_ports(model: MeshModel, node: ProxyNode) -> tuple[list[InboundPort], list[str]]:
    """The inbound listeners of ``node`` and the problems (an endpoint on the app's address)."""
    out: list[InboundPort] = []
    problems: list[str] = []
    labels = dict(node.labels)
    for service, endpoint in fronted_endpoints(model, node):
        for port in service.ports:
            if not port.is_metaprotocol:
                continue
            listen = endpoint.port_for(port)
            if endpoint.address in (APP_ADDRESS, "0.0.0.0"):
                problems.append(
                    f"{service.host}: endpoint {endpoint.address}:{listen} is the app's own "
                    f"address; give the workload another loopback address for its proxy"
                )
                continue
            mode = resolve_mtls(
                model.peer_authentications,
                service.namespace,
                labels,
                listen,
                model.settings.root_namespace,
            )
            own = replace(service, authorization=_policies_of(service, endpoint))
            out.append(InboundPort(own, port, endpoint.address, listen, mode))
    return out, problems


def _policies_of(service: Service, endpoint: Endpoint) -> tuple[MetaAuthorizationPolicy, ...]:
    """The service's authorization policies that select this workload: Istio selects workloads,
    so a policy for ``version: v1`` does not reach the v2 workload's inbound side."""
    out = []
    for policy in service.authorization:
        selector = policy.spec.selector
        if selector is None or endpoint.matches(selector.match_labels):
            out.append(policy)
    return tuple(out)


def _inbound_mode(model: MeshModel, service: Service, endpoint: Endpoint, port: int) -> str:
    service_port = service.port(port)
    listen = endpoint.port_for(service_port) if service_port is not None else port
    return resolve_mtls(
        model.peer_authentications,
        service.namespace,
        dict(endpoint.labels),
        listen,
        model.settings.root_namespace,
    )


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def cluster_tls(
    model: MeshModel, service: Service, port: int, subset: str, *, auto: bool = True
) -> UpstreamTls | None:
    """The client TLS of ``outbound|port|subset|host``: the DestinationRule's, else (with
    ``auto``) auto mTLS (see the module docstring); ISTIO_MUTUAL without SANs gets the
    ServiceEntry's ``subjectAltNames``, else the workloads' SPIFFE ids (Istio's order)."""
    tls = service.policy(port, subset).tls
    endpoints = service.endpoints_for(subset)
    accounts = sorted({e.service_account for e in endpoints if e.service_account})
    sans = service.subject_alt_names or tuple(
        spiffe_id(model.settings.trust_domain, service.namespace, a) for a in accounts
    )
    if tls is None:
        workloads = [e for e in endpoints if e.service_account]
        if not auto or not workloads:
            return None
        if any(_inbound_mode(model, service, e, port) == "DISABLE" for e in workloads):
            return None
        return UpstreamTls("ISTIO_MUTUAL", subject_alt_names=sans, auto=True)
    if tls.mode == "ISTIO_MUTUAL" and not tls.subject_alt_names and sans:
        return UpstreamTls("ISTIO_MUTUAL", sni=tls.sni, subject_alt_names=sans)
    return tls
