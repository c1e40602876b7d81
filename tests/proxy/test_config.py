"""Static YAML config: the sample loads into the expected snapshot; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from metamesh.proxy.config import LbPolicy, MatchKind
from metamesh.proxy.config_yaml import ConfigError, load_snapshot, parse_snapshot

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "proxy-static.yaml"

MINIMAL = """
static_resources:
  listeners:
  - name: l1
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    meta_protocol_proxy:
      codec: {name: "examples.kvrpc.kvrpc_codec:KvRpcCodec"}
      route_config_name: rc
  clusters:
  - name: outbound|1|v1|svc
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}
  route_configs:
  - name: rc
    routes:
    - route: {cluster: outbound|1|v1|svc}
"""


def test_max_requests_per_connection() -> None:
    assert parse_snapshot(MINIMAL).clusters["outbound|1|v1|svc"].max_requests_per_connection is None
    text = MINIMAL.replace(
        "  - name: outbound|1|v1|svc\n",
        "  - name: outbound|1|v1|svc\n    max_requests_per_connection: 100\n",
    )
    assert parse_snapshot(text).clusters["outbound|1|v1|svc"].max_requests_per_connection == 100
    with pytest.raises(ConfigError, match="max_requests_per_connection"):
        parse_snapshot(text.replace(": 100", ": -1"))


def test_sample_file_loads() -> None:
    snap = load_snapshot(SAMPLE)
    assert snap.version == "1"
    listener = snap.listeners["kv-19000"]
    assert (listener.address, listener.port, listener.stat_prefix) == ("127.0.0.1", 19000, "kv")
    assert listener.idle_timeout == 300.0
    v2 = snap.clusters["outbound|19000|v2|kv.example"]
    assert v2.lb_policy is LbPolicy.RING_HASH
    assert v2.connect_timeout == pytest.approx(0.25)
    assert [e.weight for e in v2.endpoints] == [2, 1]
    assert v2.endpoints[0].labels == (("version", "v2"),)
    assert (v2.service, v2.subset) == ("kv.example", "v2")
    routes = snap.route_configs["kv.example_19000"].routes
    assert [m.kind for m in routes[0].match] == [MatchKind.EXACT, MatchKind.PREFIX]
    assert routes[0].route.hash_policy == ("user",)
    assert routes[0].request_mutation == (("x-canary", "true"),)
    assert [w.weight for w in routes[1].route.weighted_clusters] == [90, 10]
    assert routes[1].route.request_mirror_policies[0].percent == pytest.approx(5.0)
    assert routes[1].response_mutation == (("x-served-by", "metamesh"),)
    assert snap.to_dict()["clusters"]  # JSON-ready


def test_listener_idle_timeout() -> None:
    assert parse_snapshot(MINIMAL).listeners["l1"].idle_timeout is None
    text = MINIMAL.replace(
        "route_config_name: rc", "route_config_name: rc\n      idle_timeout: 90s", 1
    )
    assert parse_snapshot(text).listeners["l1"].idle_timeout == 90.0
    with pytest.raises(ConfigError) as info:
        parse_snapshot(text.replace("90s", "soon"), source="proxy.yaml")
    assert "listeners[0] (name 'l1'): field 'meta_protocol_proxy.idle_timeout'" in str(info.value)


def test_minimal_defaults() -> None:
    snap = parse_snapshot(MINIMAL)
    cluster = snap.clusters["outbound|1|v1|svc"]
    assert cluster.lb_policy is LbPolicy.ROUND_ROBIN
    assert cluster.circuit_breakers.max_requests == 1024
    assert snap.route_configs["rc"].routes[0].match == ()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "lb_policy: ROUND_ROBIN",
            "lb_policy: MAGLEV_X",
            "clusters[0] (name 'outbound|1|v1|svc'): field 'lb_policy'",
        ),
        ("port_value: 1}", "port_value: 70000}", "field 'load_assignment.endpoints.0"),
        ("route: {cluster: outbound|1|v1|svc}", "route: {}", "route_configs[0] (name 'rc')"),
        (
            "route: {cluster: outbound|1|v1|svc}",
            "route: {cluster: nope}",
            "field 'route.cluster': no cluster named 'nope'",
        ),
        ("route_config_name: rc", "route_config_name: other", "no route configuration named"),
        ("KvRpcCodec", "NoSuchCodec", "field 'meta_protocol_proxy.codec.name'"),
        ("    - route:", "    - bogus: 1\n      route:", "field 'routes.0.bogus'"),
        (
            "    - route:",
            "    - match: {metadata: [{name: m, safe_regex_match: {regex: '('}}]}\n      route:",
            "RE2 refuses regex '('",
        ),
        (
            "    - route:",
            "    - match: {metadata: [{name: m}]}\n      route:",
            "needs exactly one of exact_match",
        ),
    ],
)
def test_invalid_config_names_file_resource_and_field(old: str, new: str, expected: str) -> None:
    text = MINIMAL.replace(
        "  - name: outbound|1|v1|svc\n", "  - name: outbound|1|v1|svc\n    lb_policy: ROUND_ROBIN\n"
    )
    assert old in text
    with pytest.raises(ConfigError) as info:
        parse_snapshot(text.replace(old, new, 1), source="proxy.yaml")
    message = str(info.value)
    assert message.startswith("proxy.yaml: ")
    assert expected in message


def test_duplicate_names_rejected() -> None:
    text = MINIMAL.replace("  route_configs:\n", "  route_configs:\n  - name: rc\n    routes: []\n")
    with pytest.raises(ConfigError, match=r"route_configs\[1\] \(name 'rc'\): field 'name'"):
        parse_snapshot(text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_snapshot(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: [")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_snapshot(bad)
