"""What an Envoy node cannot be given as the resources ask, said once per resource and field.

The Envoy back end never gives an Envoy node a silently different config: where Envoy's
filter has no field for what a MetaRouter, DestinationRule or authorization policy asks, the
translation leaves it out (or takes the closest correct form) and records an
:class:`EnvoyFinding` naming the resource, the field and the data plane. The translators
append to a :class:`Findings` list; :func:`metamesh.control.envoy.envoy_findings` runs the
translation for a node that sees every service and returns them, which is what ``metamesh
validate --data-plane envoy`` prints as warnings (:mod:`metamesh.control.envoy.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass

from metamesh.api.base import Resource

DATA_PLANE = "envoy"
RATE_LIMIT_MATCH = (
    "Envoy's thrift rate limit applies to whole routes: a globalRateLimit with a match is not "
    "applied on Envoy nodes"
)


@dataclass(frozen=True, slots=True, order=True)
class EnvoyFinding:
    """One thing Envoy does not do as asked: ``resource`` is ``Kind namespace/name``."""

    resource: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.field}: {self.message} (data plane: {DATA_PLANE})"


class Findings(list[EnvoyFinding]):
    """The findings of one translation, without duplicates, in the order they were made."""

    def add(self, resource: Resource | str, field: str, message: str) -> None:
        name = resource if isinstance(resource, str) else describe(resource)
        finding = EnvoyFinding(name, field, message)
        if finding not in self:
            self.append(finding)


def describe(resource: Resource) -> str:
    """``Kind namespace/name`` of a loaded resource."""
    return f"{resource.KIND} {resource.ref}"
