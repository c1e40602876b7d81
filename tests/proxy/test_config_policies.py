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


@pytest.mark.parametrize(
    ("regex", "refused"),
    [
        (r'"(?=d)delete"', "RE2 refuses regex '(?=d)delete'"),  # lookaround: Python's re takes it
        ('"' + "a" * 1100 + '"', "over the limit of 1024"),
        (r'"\\pL+"', None),  # RE2 syntax Python's re refuses
    ],
)
def test_authorization_regexes_are_re2(regex: str, refused: str | None) -> None:
    text = EXAMPLE.read_text()
    assert "{exact: delete}" in text
    text = text.replace("{exact: delete}", "{regex: " + regex + "}", 1)
    if refused is None:
        rbac = (
            parse_snapshot(text, "p.yaml")
            .listeners["kv-19100"]
            .filter_config("metamesh.filters.rbac")
        )
        assert isinstance(rbac, RbacConfig)
        return
    with pytest.raises(ConfigError) as e:
        parse_snapshot(text, "p.yaml")
    assert "meta_protocol_filters.0" in str(e.value) and refused in str(e.value)
