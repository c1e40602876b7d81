"""Limits YAML: validation errors name the file and field; descriptor matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from metamesh.ratelimit.limits import LimitsError, load_limits, parse_limits

LIMITS = """
domain: kv
descriptors:
- key: method
  rate_limit: {unit: minute, requests_per_unit: 100}
- key: method
  value: put
  rate_limit: {unit: second, requests_per_unit: 5, name: puts}
  shadow_mode: true
- key: user
  value: "beta-*"
  rate_limit: {unit: hour, requests_per_unit: 7}
  descriptors:
  - key: method
    rate_limit: {unit: day, requests_per_unit: 1000}
- key: user
  value: "beta-vip-*"
  rate_limit: {unit: hour, requests_per_unit: 70}
- key: user
  value: root
  rate_limit: {unlimited: true}
- key: tenant
  descriptors:
  - key: method
    value: get
    rate_limit: {unit: second, requests_per_unit: 3}
---
domain: other
descriptors:
- key: k
  value: 42
  rate_limit: {unit: SECOND, requests_per_unit: 1}
"""


def limit_of(entries: list[tuple[str, str]], domain: str = "kv") -> tuple[str, int] | None:
    node = parse_limits(LIMITS).find(domain, entries)
    if node is None or node.rate_limit is None:
        return None
    return node.rate_limit.unit, node.rate_limit.requests_per_unit


def test_exact_value_beats_any_value() -> None:
    assert limit_of([("method", "put")]) == ("second", 5)
    assert limit_of([("method", "get")]) == ("minute", 100)
    assert limit_of([("method", "")]) == ("minute", 100)


def test_prefix_wildcard_longest_prefix_wins() -> None:
    assert limit_of([("user", "beta-1")]) == ("hour", 7)
    assert limit_of([("user", "beta-vip-1")]) == ("hour", 70)
    assert limit_of([("user", "alpha")]) is None


def test_nested_descriptors_walk_one_entry_per_level() -> None:
    assert limit_of([("user", "beta-1"), ("method", "anything")]) == ("day", 1000)
    assert limit_of([("tenant", "t1"), ("method", "get")]) == ("second", 3)
    assert limit_of([("tenant", "t1"), ("method", "put")]) is None  # not in the tree
    assert limit_of([("tenant", "t1")]) is None  # the level has no limit of its own
    assert limit_of([("method", "get"), ("user", "x")]) is None  # walked off the tree


def test_unknown_domain_and_empty_descriptor_are_not_limited() -> None:
    assert limit_of([("method", "get")], domain="nope") is None
    assert limit_of([]) is None


def test_shadow_unlimited_names_and_numeric_values() -> None:
    limits = parse_limits(LIMITS)
    put = limits.find("kv", [("method", "put")])
    assert put is not None and put.shadow_mode and put.rate_limit is not None
    assert put.rate_limit.name == "puts"
    root = limits.find("kv", [("user", "root")])
    assert root is not None and root.rate_limit is not None and root.rate_limit.unlimited
    assert limit_of([("k", "42")], domain="other") == ("second", 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("descriptors: []", "f.yaml: field 'domain': must be a non-empty string"),
        ("domain: d\nextra: 1", "f.yaml: field 'extra': unknown field"),
        ("domain: d\ndescriptors: {}", "f.yaml: field 'descriptors': must be a list"),
        ("domain: d\ndescriptors: [{value: x}]", "field 'descriptors[0].key': must be"),
        (
            "domain: d\ndescriptors: [{key: a, rate_limit: "
            "{unit: fortnight, requests_per_unit: 1}}]",
            "field 'descriptors[0].rate_limit.unit': must be one of second, minute, hour, day "
            "(got 'fortnight')",
        ),
        (
            "domain: d\ndescriptors: [{key: a, descriptors: [{key: b, rate_limit: "
            "{unit: second, requests_per_unit: -1}}]}]",
            "field 'descriptors[0].descriptors[0].rate_limit.requests_per_unit': must be an "
            "integer >= 0 (got -1)",
        ),
        (
            "domain: d\ndescriptors: [{key: a, rate_limit: {unit: second}}]",
            "field 'descriptors[0].rate_limit.requests_per_unit': must be an integer",
        ),
        (
            "domain: d\ndescriptors: [{key: a, shadow_mode: maybe}]",
            "field 'descriptors[0].shadow_mode': must be true or false",
        ),
        (
            "domain: d\ndescriptors: [{key: a, value: x}, {key: a, value: x}]",
            "field 'descriptors[1]': duplicate descriptor a=x",
        ),
        (
            "domain: d\ndescriptors: [{key: a, ratelimit: {}}]",
            "field 'descriptors[0].ratelimit': unknown field",
        ),
        ("domain: d\n---\ndomain: d\n", "f.yaml: document 2: domain 'd' is already defined"),
        ("", "f.yaml: no domain defined"),
        ("domain: [", "f.yaml: not valid YAML"),
    ],
)
def test_validation_errors_name_file_and_field(text: str, message: str) -> None:
    with pytest.raises(LimitsError) as err:
        parse_limits(text, "f.yaml")
    assert message in str(err.value)


def test_load_limits_from_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("domain: one\ndescriptors: []\n")
    b.write_text("domain: two\ndescriptors: []\n")
    assert sorted(load_limits([a, b]).domains) == ["one", "two"]
    with pytest.raises(LimitsError, match=r"b\.yaml: domain 'one' is already defined"):
        b.write_text("domain: one\n")
        load_limits([a, b])
    with pytest.raises(LimitsError, match=r"missing\.yaml: cannot read"):
        load_limits([tmp_path / "missing.yaml"])


def test_example_limits_file_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "ratelimit" / "limits.yaml"
    limits = load_limits([example])
    node = limits.find("kv", [("user", "beta-7"), ("method", "put")])
    assert node is not None and node.rate_limit is not None
    assert node.rate_limit.requests_per_unit == 1000
