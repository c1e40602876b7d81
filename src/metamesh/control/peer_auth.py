"""Which mutual TLS mode a workload's inbound port takes, resolved as Istio resolves it.

Istio's PeerAuthentication scopes, narrowest last: the mesh (a policy without selector in the
root namespace), the namespace (a policy without selector in the workload's namespace), the
workload (a policy of its namespace whose ``selector.matchLabels`` its labels carry), and a
port of that workload (``portLevelMtls`` of the workload policy). Each scope whose mode is not
``UNSET`` overrides the wider ones; nothing set anywhere is ``PERMISSIVE``. Where Istio would
pick the oldest of two policies of one scope, metamesh takes the first by name (manifests have
no creation time); the port of ``portLevelMtls`` is the workload's port (the inbound port),
as in Istio where it is the container port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from metamesh.api.security import MutualTls, PeerAuthentication

DEFAULT_MODE = "PERMISSIVE"


def _mode(mtls: MutualTls | None) -> str | None:
    return mtls.mode if mtls is not None and mtls.mode != "UNSET" else None


def _selects(policy: PeerAuthentication, labels: Mapping[str, str]) -> bool:
    selector = policy.spec.selector
    wanted = selector.match_labels if selector is not None else {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _unselective(policy: PeerAuthentication) -> bool:
    selector = policy.spec.selector
    return selector is None or not selector.match_labels


def resolve_mtls(
    policies: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str,
) -> str:
    """STRICT, PERMISSIVE or DISABLE for ``port`` of the workload (see the module docstring)."""
    ordered = sorted(policies, key=lambda p: (p.namespace, p.name))
    mesh = next((p for p in ordered if p.namespace == root_namespace and _unselective(p)), None)
    space = next((p for p in ordered if p.namespace == namespace and _unselective(p)), None)
    workload = next((p for p in ordered if p.namespace == namespace and _selects(p, labels)), None)
    mode = DEFAULT_MODE
    for scope in (mesh, space, workload):
        if scope is not None:
            mode = _mode(scope.spec.mtls) or mode
    if workload is not None:
        mode = _mode(workload.spec.port_level_mtls.get(port)) or mode
    return mode
