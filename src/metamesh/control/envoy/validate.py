"""``metamesh validate --data-plane envoy``: the Envoy findings as validation warnings.

The findings come from the Envoy translation itself (:func:`metamesh.control.envoy.envoy_findings`
runs it for a node that sees every service), so what is reported is exactly what an Envoy node
would not get. Each finding is printed like any validation problem, at the file and line of
the field it names (``file:line: warning: MetaRouter ns/name: spec.routes[0].timeout: ...
(data plane: envoy)``); a finding about no single resource (a listener address two services
share on one node) is printed without a file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TextIO

from metamesh.api.base import fqdn
from metamesh.api.istio import DestinationRule
from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.api.loader import ResourceSet, load_paths
from metamesh.api.problems import FieldPath, Problem, sort_problems
from metamesh.control.envoy import envoy_findings
from metamesh.control.envoy.findings import DATA_PLANE, EnvoyFinding
from metamesh.control.model import build_model

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> FieldPath:
    """``spec.routes[0].timeout`` -> ``("spec", "routes", 0, "timeout")``."""
    return tuple(int(index) if index else name for name, index in _PART.findall(text))


def envoy_problems(resources: ResourceSet) -> list[Problem]:
    """A warning per Envoy finding of ``resources`` (none while they have errors)."""
    if any(p.is_error for p in resources.problems):
        return []
    items = {f"{item.resource.KIND} {item.resource.ref}": item for item in resources.items}
    for loaded in resources.items:  # a host's DestinationRule, as policies.py names it
        if isinstance(loaded.resource, DestinationRule):
            host = fqdn(loaded.resource.spec.host, loaded.resource.namespace)
            items.setdefault(f"DestinationRule (host {host})", loaded)
    problems = []
    for finding in envoy_findings(build_model(resources)):
        message = f"{finding.message} (data plane: {DATA_PLANE})"
        item = items.get(finding.resource)
        if item is not None:
            problems.append(item.problem(parse_path(finding.field), message, "warning"))
        else:
            problems.append(_unattached(finding, message))
    return sort_problems(problems)


def _unattached(finding: EnvoyFinding, message: str) -> Problem:
    kind, _, name = finding.resource.partition(" ")
    return Problem("", kind, name, finding.field, message, "warning")


def envoy_report(
    paths: Sequence[str],
    out: TextIO,
    default_namespace: str,
    *,
    strict: bool = False,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> int:
    """Print the Envoy warnings and a count; 1 with ``strict`` when there are any."""
    problems = envoy_problems(load_paths(paths, default_namespace, limits=limits))
    for problem in problems:
        print(problem.format(), file=out)
    noun = "warning" if len(problems) == 1 else "warnings"
    print(f"{len(problems)} Envoy data-plane {noun}", file=out)
    return 1 if strict and problems else 0
