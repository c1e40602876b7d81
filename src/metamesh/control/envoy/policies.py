"""Route policies Envoy's protocol filters have no field for: findings, never approximations.

Neither thrift_proxy nor dubbo_proxy has a route timeout, retries, fault injection for their
calls or header / attachment mutations, so ``timeout``, ``retries``, ``fault``,
``requestMutation`` and ``responseMutation`` are findings (the flags say which of the first two
a filter does carry, for a future one that does). Each finding names the MetaRouter and the
route's field (:mod:`metamesh.control.envoy.findings`).
"""

from __future__ import annotations

from metamesh.api.metaprotocol import MetaRoute, MetaRouter
from metamesh.control.envoy.findings import Findings
from metamesh.control.model import Service

NOT_APPLIED = "Envoy's {filter} has no field for it; Envoy nodes do not apply it"


def route_policy_findings(
    router: MetaRouter,
    where: str,
    route: MetaRoute,
    notes: Findings,
    *,
    filter_name: str,
    timeout: bool,
    retries: bool,
) -> None:
    """Findings for the fields of ``route`` that ``filter_name`` cannot carry; ``timeout`` and
    ``retries`` say whether it carries those."""
    unsupported = {
        "timeout": route.timeout is not None and not timeout,
        "retries": route.retries is not None and not retries,
        "fault": route.fault is not None,
        "requestMutation": bool(route.request_mutation),
        "responseMutation": bool(route.response_mutation),
    }
    for field, present in unsupported.items():
        if present:
            notes.add(router, f"{where}.{field}", NOT_APPLIED.format(filter=filter_name))


def hash_key_findings(service: Service, port: int, filter_name: str, notes: Findings) -> None:
    """A DestinationRule ``consistentHash.httpHeaderName``: metamesh hashes on that request
    attribute; thrift_proxy and dubbo_proxy routes have no hash policy, so Envoy's ring hash
    would get no key. The cluster keeps its ring hash (what the rule asks); the finding says
    that Envoy nodes do not hash on the attribute."""
    for subset in ("", *(s.name for s in service.subsets)):
        key = service.policy(port, subset).hash_key
        if key:
            notes.add(
                f"DestinationRule (host {service.host})",
                "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
                f"Envoy's {filter_name} routes have no hash policy: Envoy nodes do not hash "
                f"on {key!r}",
            )
            return
