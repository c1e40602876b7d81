"""Nothing accepted is silently ignored: every model field is applied, or warned about.

The first test walks every resource kind's models and fails on a field that is in none of
api/unsupported.py's registries (add a new field to APPLIED only if the translation acts on
it, else to UNSUPPORTED with the reason). The second sets each unsupported field in a manifest
and checks the warning names the file, the resource and the field path.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from metamesh.api import istio, metaprotocol, sidecar, validate
from metamesh.api.loader import KINDS
from metamesh.api.unsupported import (
    APPLIED,
    NOT_CONFIG,
    UNSUPPORTED,
    FieldKey,
    authorization_findings,
)
from tests.api.conftest import Docs, Edit, edit, load_text, problems_for, to_yaml
from tests.api.redis_samples import REDIS_SAMPLES

Sample = tuple[list[Edit], str]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _reachable_fields() -> set[FieldKey]:
    """Every (model, field) of every kind, not descending below an unsupported field."""
    seen: set[type[BaseModel]] = set()
    fields: set[FieldKey] = set()
    todo: list[type[BaseModel]] = list(KINDS.values())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, info in cls.model_fields.items():
            fields.add((cls, name))
            if (cls, name) not in UNSUPPORTED:
                todo.extend(_models_in(info.annotation))
    return fields


def _name(key: FieldKey) -> str:
    return f"{key[0].__module__}.{key[0].__qualname__}.{key[1]}"


def test_every_field_is_applied_unsupported_or_not_config() -> None:
    applied = {(cls, name) for cls, names in APPLIED.items() for name in names}
    unsupported, bookkeeping = set(UNSUPPORTED), set(NOT_CONFIG)
    reachable = _reachable_fields()
    unlisted = reachable - applied - unsupported - bookkeeping
    assert not unlisted, "fields neither applied nor warned about:\n" + "\n".join(
        sorted(map(_name, unlisted))
    )
    twice = (applied & unsupported) | (applied & bookkeeping) | (unsupported & bookkeeping)
    assert not twice, "fields in two registries: " + ", ".join(sorted(map(_name, twice)))
    stale = (applied | unsupported | bookkeeping) - reachable
    assert not stale, "registry entries naming no reachable field: " + ", ".join(
        sorted(map(_name, stale))
    )


def policy(source: dict[str, Any], action: str = "ALLOW") -> Edit:
    def add(docs: Docs) -> None:
        docs["policy"] = {
            "apiVersion": "metamesh.io/v1alpha1",
            "kind": "MetaAuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"action": action, "rules": [{"from": [{"source": source}]}]},
        }

    return add


def sidecar_with(**spec: Any) -> Edit:
    """Adds a Sidecar in namespace ns importing its own namespace, plus ``spec``."""

    def add(docs: Docs) -> None:
        egress = spec.pop("egress", [{"hosts": ["./*"]}])
        docs["sidecar"] = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "ns"},
            "spec": {"egress": egress, **spec},
        }

    return add


TP = "spec.trafficPolicy"
CH = f"{TP}.loadBalancer.consistentHash"
HASH = {"httpHeaderName": "user"}

#: One manifest edit per unsupported field, and the field path the warning must name.
SAMPLES: dict[FieldKey, Sample] = {
    (istio.ServicePort, "protocol"): (
        [edit("se", "spec.ports.0.protocol", "HTTP")],
        "spec.ports[0].protocol",
    ),
    (istio.ServiceEntrySpec, "location"): (
        [edit("se", "spec.location", "MESH_EXTERNAL")],
        "spec.location",
    ),
    (istio.WorkloadEntry, "network"): (
        [edit("se", "spec.endpoints.0.network", "net-1")],
        "spec.endpoints[0].network",
    ),
    (istio.WorkloadEntry, "locality"): (
        [edit("se", "spec.endpoints.1.locality", "eu/west/a")],
        "spec.endpoints[1].locality",
    ),
    (istio.DestinationRuleSpec, "export_to"): (
        [edit("dr", "spec.exportTo", ["."])],
        "spec.exportTo",
    ),
    (istio.DestinationRuleSpec, "workload_selector"): (
        [edit("dr", "spec.workloadSelector", {"matchLabels": {"app": "a"}})],
        "spec.workloadSelector",
    ),
    (istio.ClientTLSSettings, "ca_crl"): (
        [edit("dr", f"{TP}.tls", {"mode": "SIMPLE", "caCrl": "/etc/crl.pem"})],
        f"{TP}.tls.caCrl",
    ),
    (istio.ClientTLSSettings, "credential_name"): (
        [edit("dr", f"{TP}.tls", {"mode": "SIMPLE", "credentialName": "client-secret"})],
        f"{TP}.tls.credentialName",
    ),
    (istio.ClientTLSSettings, "insecure_skip_verify"): (
        [
            edit(
                "dr",
                f"{TP}.portLevelSettings",
                [{"port": {"number": 9090}, "tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}],
            )
        ],
        f"{TP}.portLevelSettings[0].tls.insecureSkipVerify",
    ),
    (istio.TrafficPolicy, "tunnel"): (
        [edit("dr", f"{TP}.tunnel", {"protocol": "CONNECT", "targetHost": "gw"})],
        f"{TP}.tunnel",
    ),
    (istio.TrafficPolicy, "proxy_protocol"): (
        [edit("dr", f"{TP}.proxyProtocol", {"version": "V2"})],
        f"{TP}.proxyProtocol",
    ),
    (istio.LoadBalancerSettings, "simple"): (
        [edit("dr", "spec.subsets.1.trafficPolicy.loadBalancer.simple", "PASSTHROUGH")],
        "spec.subsets[1].trafficPolicy.loadBalancer.simple",
    ),
    (istio.LoadBalancerSettings, "locality_lb_setting"): (
        [edit("dr", f"{TP}.loadBalancer.localityLbSetting", {"enabled": True})],
        f"{TP}.loadBalancer.localityLbSetting",
    ),
    (istio.LoadBalancerSettings, "warmup_duration_secs"): (
        [edit("dr", f"{TP}.loadBalancer.warmupDurationSecs", "30s")],
        f"{TP}.loadBalancer.warmupDurationSecs",
    ),
    (istio.LoadBalancerSettings, "warmup"): (
        [edit("dr", f"{TP}.loadBalancer.warmup", {"duration": "30s"})],
        f"{TP}.loadBalancer.warmup",
    ),
    (istio.ConsistentHash, "http_cookie"): (
        [edit("dr", CH, {"httpCookie": {"name": "session", "ttl": "0s"}})],
        f"{CH}.httpCookie",
    ),
    (istio.ConsistentHash, "use_source_ip"): (
        [edit("dr", CH, {"useSourceIp": True})],
        f"{CH}.useSourceIp",
    ),
    (istio.ConsistentHash, "http_query_parameter_name"): (
        [edit("dr", CH, {"httpQueryParameterName": "user"})],
        f"{CH}.httpQueryParameterName",
    ),
    (istio.ConsistentHash, "minimum_ring_size"): (
        [edit("dr", CH, {**HASH, "minimumRingSize": 4096})],
        f"{CH}.minimumRingSize",
    ),
    (istio.RingHash, "minimum_ring_size"): (
        [edit("dr", CH, {**HASH, "ringHash": {"minimumRingSize": 4096}})],
        f"{CH}.ringHash.minimumRingSize",
    ),
    (istio.Maglev, "table_size"): (
        [edit("dr", CH, {**HASH, "maglev": {"tableSize": 65537}})],
        f"{CH}.maglev.tableSize",
    ),
    (istio.TcpSettings, "tcp_keepalive"): (
        [edit("dr", f"{TP}.connectionPool.tcp.tcpKeepalive", {"time": "60s"})],
        f"{TP}.connectionPool.tcp.tcpKeepalive",
    ),
    (istio.TcpSettings, "max_connection_duration"): (
        [edit("dr", f"{TP}.connectionPool.tcp.maxConnectionDuration", "1h")],
        f"{TP}.connectionPool.tcp.maxConnectionDuration",
    ),
    (istio.TcpSettings, "idle_timeout"): (
        [edit("dr", f"{TP}.connectionPool.tcp.idleTimeout", "1h")],
        f"{TP}.connectionPool.tcp.idleTimeout",
    ),
    (istio.HttpSettings, "idle_timeout"): (
        [edit("dr", f"{TP}.connectionPool.http.idleTimeout", "1h")],
        f"{TP}.connectionPool.http.idleTimeout",
    ),
    (istio.HttpSettings, "max_retries"): (
        [edit("dr", f"{TP}.connectionPool.http.maxRetries", 3)],
        f"{TP}.connectionPool.http.maxRetries",
    ),
    (istio.HttpSettings, "h2_upgrade_policy"): (
        [edit("dr", f"{TP}.connectionPool.http.h2UpgradePolicy", "UPGRADE")],
        f"{TP}.connectionPool.http.h2UpgradePolicy",
    ),
    (istio.HttpSettings, "use_client_protocol"): (
        [edit("dr", f"{TP}.connectionPool.http.useClientProtocol", True)],
        f"{TP}.connectionPool.http.useClientProtocol",
    ),
    (istio.HttpSettings, "max_concurrent_streams"): (
        [edit("dr", f"{TP}.connectionPool.http.maxConcurrentStreams", 100)],
        f"{TP}.connectionPool.http.maxConcurrentStreams",
    ),
    (istio.OutlierDetection, "min_health_percent"): (
        [edit("dr", "spec.subsets.0.trafficPolicy.outlierDetection.minHealthPercent", 50)],
        "spec.subsets[0].trafficPolicy.outlierDetection.minHealthPercent",
    ),
    (metaprotocol.MetaRouterSpec, "gateways"): (
        [edit("mr", "spec.gateways", ["istio-system/ingress"])],
        "spec.gateways",
    ),
    (metaprotocol.MetaRouterSpec, "export_to"): (
        [edit("mr", "spec.exportTo", ["."])],
        "spec.exportTo",
    ),
    (sidecar.SidecarSpec, "ingress"): (
        [sidecar_with(ingress=[{"port": {"number": 9080}, "defaultEndpoint": "127.0.0.1:8080"}])],
        "spec.ingress",
    ),
    (sidecar.SidecarSpec, "outbound_traffic_policy"): (
        [sidecar_with(outboundTrafficPolicy={"mode": "REGISTRY_ONLY"})],
        "spec.outboundTrafficPolicy",
    ),
    (sidecar.SidecarSpec, "inbound_connection_pool"): (
        [sidecar_with(inboundConnectionPool={"tcp": {"maxConnections": 10}})],
        "spec.inboundConnectionPool",
    ),
    (sidecar.EgressListener, "port"): (
        [sidecar_with(egress=[{"port": {"number": 9090}, "hosts": ["./*"]}])],
        "spec.egress[0].port",
    ),
    (sidecar.EgressListener, "bind"): (
        [sidecar_with(egress=[{"bind": "127.0.0.2", "hosts": ["./*"]}])],
        "spec.egress[0].bind",
    ),
    (sidecar.EgressListener, "capture_mode"): (
        [sidecar_with(egress=[{"captureMode": "NONE", "hosts": ["./*"]}])],
        "spec.egress[0].captureMode",
    ),
    **REDIS_SAMPLES,
}


def test_every_unsupported_field_has_a_sample() -> None:
    assert set(SAMPLES) == set(UNSUPPORTED)


@pytest.mark.parametrize("key", list(SAMPLES), ids=_name)
def test_each_unsupported_field_in_a_manifest_is_a_warning(key: FieldKey) -> None:
    edits, path = SAMPLES[key]
    problems = problems_for(*edits)
    assert not [p for p in problems if p.is_error], [p.format() for p in problems]
    (warning,) = [p for p in problems if p.field_path == path]
    assert warning.severity == "warning" and warning.file == "mesh.yaml"
    assert warning.line is not None and warning.name.startswith("ns/")
    assert warning.message == f"not supported: {UNSUPPORTED[key].reason}"
    assert f"mesh.yaml:{warning.line}: warning: {warning.kind} {warning.name}: {path}: " in (
        warning.format()
    )


def test_the_base_set_and_applied_values_of_conditional_fields_warn_nothing() -> None:
    assert problems_for() == []
    applied_values = [
        edit("se", "spec.ports.0.protocol", "TCP"),
        edit("se", "spec.location", "MESH_INTERNAL"),
        edit("se", "spec.exportTo", ["."]),
        edit("dr", "spec.exportTo", ["*"]),
        edit("mr", "spec.exportTo", ["*"]),
        edit("mr", "spec.gateways", ["mesh"]),
        edit("dr", "spec.subsets.1.trafficPolicy.loadBalancer.simple", "LEAST_CONN"),
        edit("dr", CH, {**HASH, "useSourceIp": False, "maglev": {}}),
        edit("dr", f"{TP}.connectionPool.tcp", {"maxConnections": 10, "connectTimeout": "1s"}),
        policy({"ipBlocks": ["127.0.0.0/8"]}),
    ]
    assert problems_for(*applied_values) == []


def test_a_field_set_in_many_places_is_one_warning_that_counts_them() -> None:
    docs_edits = [edit("se", f"spec.endpoints.{i}.locality", "eu/west/a") for i in (0, 1)]
    (warning,) = problems_for(*docs_edits)
    assert warning.field_path == "spec.endpoints[0].locality"
    assert warning.message.endswith("(set in 1 more place)")


def test_an_allow_policy_that_needs_identities_says_it_denies_everything() -> None:
    problems = problems_for(policy({"namespaces": ["ns"]}))
    messages = {p.field_path: p.message for p in problems}
    assert messages["spec.rules"] == (
        "this ALLOW policy can never match (every rule requires a peer identity), so every "
        "request to the services it selects is denied"
    )
    assert messages["spec.rules[0]"].endswith("so this ALLOW rule allows nothing")


def test_rule_findings_for_mixed_and_deny_policies() -> None:
    from metamesh.api.authz import Rule

    identity = Rule.model_validate({"from": [{"source": {"principals": ["a"]}}]})
    mixed = Rule.model_validate(
        {"from": [{"source": {"principals": ["a"]}}, {"source": {"ipBlocks": ["10.0.0.0/8"]}}]}
    )
    anyone = Rule.model_validate({"to": [{"operation": {"attributes": {"m": {"exact": "x"}}}}]})
    # one live rule: only the dead one is named, the policy can still match
    assert [path for path, _ in authorization_findings("ALLOW", [identity, mixed, anyone])] == [
        ("spec", "rules", 0)
    ]
    ((path, message),) = authorization_findings("DENY", [identity], ("policies", 2))
    assert path == ("policies", 2, "rules", 0)
    assert message.endswith("so this DENY rule denies nothing")


def test_a_dubbo_policy_gets_the_same_warnings() -> None:
    text = """\
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {name: d, namespace: ns}
spec:
  rules:
  - from: [{source: {namespaces: [ns]}}]
"""
    paths = [p.field_path for p in validate(load_text(text, "d.yaml"))]
    assert paths == ["spec.rules", "spec.rules[0]"]


def test_samples_are_yaml_that_loads() -> None:
    # the edits above build real YAML (not models): one full manifest with all of them loads
    from tests.api.conftest import base_docs

    docs = base_docs()
    for edits, _ in SAMPLES.values():
        for change in edits:
            change(docs)
    assert load_text(to_yaml(docs), "all.yaml").problems == []


def test_docs_list_every_unsupported_field() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "resources.md"
    text = docs.read_text()
    section = text[text.index("## Accepted but not applied") : text.index("## Validation rules")]
    missing = [
        _name(key)
        for key in UNSUPPORTED
        if f"`{key[0].model_fields[key[1]].alias}" not in section
        and f".{key[0].model_fields[key[1]].alias}" not in section
    ]
    assert not missing, f"docs/resources.md does not name: {', '.join(missing)}"
