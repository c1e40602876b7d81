"""Authorization policies: the general form, and Aeraki's Dubbo form converted to it."""

from __future__ import annotations

from metamesh.api import (
    DubboAuthorizationPolicy,
    MetaAuthorizationPolicy,
    StringMatch,
    dubbo_to_meta_policy,
    load_text,
    validate,
)

DUBBO = """\
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata:
  name: deny-bad
  namespace: meta
spec:
  selector:
    matchLabels: {app: dubbo-sample-provider}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/meta/sa/consumer]
        notNamespaces: [trusted]
    to:
    - operation:
        interfaces: [org.apache.dubbo.samples.basic.api.DemoService]
        methods: [sayHello, "say*", "*Bye", "*"]
        notMethods: [ping]
"""


def test_dubbo_policy_converts_to_general_form() -> None:
    result = load_text(DUBBO)
    # no service with mesh workloads is selected, so no peer identity is verified where the
    # policy runs: the rule is accepted, and the gap is a warning
    assert [(p.severity, p.line, p.field_path) for p in validate(result)] == [
        ("warning", 11, "spec.rules[0]"),
    ]
    provider = """\
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: provider, namespace: meta}
spec:
  hosts: [org.apache.dubbo.samples.basic.api.demoservice]
  ports: [{number: 20880, name: tcp-metaprotocol-dubbo}]
  endpoints:
  - {address: 127.0.31.3, labels: {app: dubbo-sample-provider}, serviceAccount: provider}
"""
    assert validate(load_text(DUBBO + provider)) == []  # enforced inbound, with mutual TLS
    (dubbo,) = result.of_kind(DubboAuthorizationPolicy)
    meta = dubbo_to_meta_policy(dubbo)
    assert isinstance(meta, MetaAuthorizationPolicy)
    assert meta.ref == "meta/deny-bad" and meta.spec.action == "DENY"
    assert meta.spec.selector is not None
    assert meta.spec.selector.match_labels == {"app": "dubbo-sample-provider"}
    (rule,) = meta.spec.rules
    assert rule.from_[0].source.principals == ["cluster.local/ns/meta/sa/consumer"]
    assert rule.from_[0].source.not_namespaces == ["trusted"]
    (to,) = rule.to
    assert to.operation.attributes == {
        "interface": [StringMatch(exact="org.apache.dubbo.samples.basic.api.DemoService")],
        "method": [
            StringMatch(exact="sayHello"),
            StringMatch(prefix="say"),
            StringMatch(regex=".*Bye"),
            StringMatch(),
        ],
    }
    assert to.operation.not_attributes == {"method": [StringMatch(exact="ping")]}


def test_general_policy_accepts_single_match_or_list() -> None:
    text = """\
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: p}
spec:
  selector: {matchLabels: {app: a}}
  action: ALLOW
  rules:
  - from:
    - source: {ipBlocks: [127.0.0.0/8], notIpBlocks: [127.0.0.2/32], namespaces: [a]}
    to:
    - operation:
        attributes:
          method: {exact: get}
          service: [{prefix: kv.}, {exact: admin}]
          tenant:
        notAttributes:
          key: {regex: "secret-.*"}
"""
    result = load_text(text)
    assert [(p.line, p.field_path) for p in validate(result)] == [
        (7, "spec.rules"),  # the ALLOW policy can never match: it denies everything
        (8, "spec.rules[0]"),  # the rule can never match (no service with mesh workloads)
    ]
    (policy,) = result.of_kind(MetaAuthorizationPolicy)
    operation = policy.spec.rules[0].to[0].operation
    assert operation.attributes["method"] == [StringMatch(exact="get")]
    assert len(operation.attributes["service"]) == 2
    assert operation.attributes["tenant"] == [StringMatch()]


def test_bad_action_is_rejected() -> None:
    (problem,) = load_text(DUBBO.replace("action: DENY", "action: AUDIT")).problems
    assert problem.field_path == "spec.action"
