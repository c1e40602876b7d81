"""Authorization policies: metamesh's general ``MetaAuthorizationPolicy`` and Aeraki's Dubbo one.

``metamesh.io/v1alpha1 MetaAuthorizationPolicy`` generalises Aeraki's
``dubbo.aeraki.io/v1alpha1 DubboAuthorizationPolicy`` to any protocol: instead of Dubbo's fixed
``interfaces``/``methods`` lists, an operation matches arbitrary request metadata attributes.
Semantics are Istio's: the policies select workloads by ``selector.matchLabels``; a request is
denied if any DENY policy matches, otherwise allowed if there is no ALLOW policy or one matches.
A rule matches when one of its ``from`` entries and one of its ``to`` entries match (an absent
list matches everything); inside a source or operation, every field set must match.

``attributes`` maps a metadata key to one StringMatch or a list of them (any may match), and all
keys must match; ``notAttributes`` fails the operation if any listed alternative matches. A list
is a small superset of Aeraki's single-StringMatch map: it is what Istio's ``methods: [a, b]``
needs, and so :func:`dubbo_to_meta_policy` converts a Dubbo policy without a cross product.

Istio's string shorthand (``"*"``, ``"prefix*"``, ``"*suffix"``) in Dubbo policies becomes a
presence match, a prefix match and an anchored regex respectively.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from metamesh.api.base import LabelSelector, Resource, SpecModel, StringMatch

AuthAction = Literal["ALLOW", "DENY"]


def _as_list(value: object) -> object:
    if value is None:
        return [None]
    return value if isinstance(value, list) else [value]


def _presence(value: object) -> object:
    return {} if value is None else value


StringMatches = Annotated[
    list[Annotated[StringMatch, BeforeValidator(_presence)]], BeforeValidator(_as_list)
]
"""One StringMatch or a list of them in YAML; always a list here (any may match)."""


class Source(SpecModel):
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)
    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)


class From(SpecModel):
    source: Source = Field(default_factory=Source)


class Operation(SpecModel):
    attributes: dict[str, StringMatches] = Field(default_factory=dict)
    not_attributes: dict[str, StringMatches] = Field(default_factory=dict)


class To(SpecModel):
    operation: Operation = Field(default_factory=Operation)


class Rule(SpecModel):
    from_: list[From] = Field(default_factory=list, alias="from")
    to: list[To] = Field(default_factory=list)


class MetaAuthorizationPolicySpec(SpecModel):
    selector: LabelSelector | None = None
    action: AuthAction = "ALLOW"
    rules: list[Rule] = Field(default_factory=list)


class MetaAuthorizationPolicy(Resource):
    API_VERSIONS = ("metamesh.io/v1alpha1",)
    KIND = "MetaAuthorizationPolicy"

    spec: MetaAuthorizationPolicySpec


# --- Aeraki's Dubbo policy ---------------------------------------------------------------


class DubboOperation(SpecModel):
    interfaces: list[str] = Field(default_factory=list)
    not_interfaces: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)


class DubboTo(SpecModel):
    operation: DubboOperation = Field(default_factory=DubboOperation)


class DubboRule(SpecModel):
    from_: list[From] = Field(default_factory=list, alias="from")
    to: list[DubboTo] = Field(default_factory=list)


class DubboAuthorizationPolicySpec(SpecModel):
    selector: LabelSelector | None = None
    action: AuthAction = "ALLOW"
    rules: list[DubboRule] = Field(default_factory=list)


class DubboAuthorizationPolicy(Resource):
    API_VERSIONS = ("dubbo.aeraki.io/v1alpha1",)
    KIND = "DubboAuthorizationPolicy"

    spec: DubboAuthorizationPolicySpec


def istio_string_match(value: str) -> StringMatch:
    """Istio's policy string shorthand: ``*`` present, ``a*`` prefix, ``*a`` suffix, else exact."""
    if value == "*":
        return StringMatch()
    if value.endswith("*"):
        return StringMatch(prefix=value[:-1])
    if value.startswith("*"):
        return StringMatch(regex=".*" + re.escape(value[1:]))
    return StringMatch(exact=value)


def _dubbo_operation(op: DubboOperation) -> Operation:
    def matches(values: list[str]) -> list[StringMatch]:
        return [istio_string_match(v) for v in values]

    attributes = {k: matches(v) for k, v in (("interface", op.interfaces), ("method", op.methods))}
    not_attributes = {
        k: matches(v) for k, v in (("interface", op.not_interfaces), ("method", op.not_methods))
    }
    return Operation(
        attributes={k: v for k, v in attributes.items() if v},
        not_attributes={k: v for k, v in not_attributes.items() if v},
    )


def dubbo_to_meta_policy(policy: DubboAuthorizationPolicy) -> MetaAuthorizationPolicy:
    """The general policy equivalent to a Dubbo one (Dubbo metadata keys: interface, method)."""
    rules = [
        Rule.model_validate(
            {
                "from": list(rule.from_),
                "to": [To(operation=_dubbo_operation(to.operation)) for to in rule.to],
            }
        )
        for rule in policy.spec.rules
    ]
    return MetaAuthorizationPolicy.model_validate(
        {
            "apiVersion": MetaAuthorizationPolicy.API_VERSIONS[0],
            "kind": MetaAuthorizationPolicy.KIND,
            "metadata": policy.metadata,
            "spec": MetaAuthorizationPolicySpec(
                selector=policy.spec.selector, action=policy.spec.action, rules=rules
            ),
        }
    )
