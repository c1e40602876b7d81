"""Static YAML: policy fields load into the snapshot, and mistakes name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import LocalRateLimitConfig, RbacConfig
from metamesh.proxy.config_yaml import ConfigError, load_snapshot, parse_snapshot

EXAMPLE = Path(__file__).parents[2] / "examples" / "proxy-policies.yaml"


def test_example_policies_file_loads() -> None:
    snap = load_snapshot(EXAMPLE)
    listener = snap.listeners["kv-19100"]
    assert isinstance(listener.filter_config("metamesh.filters.rbac"), RbacConfig)
    rl = listener.filter_config("aeraki.meta_protocol.filters.local_ratelimit")
    assert isinstance(rl, LocalRateLimitConfig) and rl.conditions[0][1].max_tokens == 50
    reads, chaos, _ = snap.route_configs["kv-routes"].routes
    assert reads.route.timeout == 2.0
    rp = reads.route.retry_policy
    assert rp is not None and rp.retry_on == ("connect-failure", "reset", "timeout")
    assert (rp.per_try_timeout, rp.backoff_base, rp.backoff_max) == (0.5, 0.025, 0.25)
    assert chaos.fault is not None and chaos.fault.abort is not None
    assert chaos.fault.abort.kind is ErrorKind.FAULT_ABORT and chaos.fault.abort.percent == 10
    od = snap.clusters["outbound|19100|v1|kv.example"].outlier_detection
    assert od is not None and od.max_ejection_percent == 50
    snap.to_dict()  # /config_dump can render it


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("retry_on: connect-failure,reset,timeout", "retry_on: 5xx", "retry_policy"),
        ("max_interval: 250ms", "max_interval: 1ms", "retry_policy"),
        ("timeout: 2s ", "timeout: soon ", "route.timeout"),
        ("error_kind: fault_abort", "error_kind: oops", "fault.abort"),
        ("max_ejection_percent: 50", "max_ejection_percent: 150", "outlier_detection"),
        (
            "fill_interval: 1s}\n          conditions",
            "fill_interval: 0}\n          conditions",
            "meta_protocol_filters.1",
        ),
        (
            "not_ip_blocks: [127.0.0.0/8]",
            "not_ip_blocks: [127.0.0.0/99]",
            "meta_protocol_filters.0",
        ),
        (
            "name: metamesh.filters.fault ",
            "name: metamesh.filters.nope ",
            "meta_protocol_filters.2",
        ),
    ],
)
def test_errors_name_the_field(old: str, new: str, field: str) -> None:
    text = EXAMPLE.read_text()
    assert old in text
    with pytest.raises(ConfigError) as e:
        parse_snapshot(text.replace(old, new, 1), "p.yaml")
    assert field in str(e.value)
