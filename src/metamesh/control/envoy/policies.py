"""Route policies Envoy's protocol filters have no field for: findings, never approximations.

A MetaRoute's ``timeout`` and ``retries`` map to generic_proxy's route action (Dubbo); Envoy's
thrift_proxy has neither. No Envoy protocol filter here injects faults into Thrift or Dubbo
calls or rewrites their headers / attachments, so ``fault``, ``requestMutation`` and
``responseMutation`` are findings on every protocol. Each finding names the MetaRouter and the
route's field (:mod:`metamesh.control.envoy.findings`).
"""

from __future__ import annotations

from metamesh.api.metaprotocol import MetaRoute, MetaRouter
from metamesh.control.envoy.findings import Findings

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
