"""Fixed windows and counter keys with an injected clock; decisions from counts."""

from __future__ import annotations

import pytest

from metamesh.ratelimit.counting import decide, plan_hits, window_start
from metamesh.ratelimit.limits import parse_limits

LIMITS = parse_limits(
    """
domain: kv
descriptors:
- key: method
  rate_limit: {unit: minute, requests_per_unit: 3}
- key: user
  rate_limit: {unit: hour, requests_per_unit: 1}
  shadow_mode: true
- key: tenant
  value: t1
  descriptors:
  - key: method
    rate_limit: {unit: day, requests_per_unit: 10}
- key: free
  rate_limit: {unlimited: true}
"""
)


@pytest.mark.parametrize(
    ("now", "size", "start"),
    [(0.0, 60, 0), (59.999, 60, 0), (60.0, 60, 60), (1_700_000_123.5, 60, 1_700_000_100),
     (1_700_000_123.5, 1, 1_700_000_123), (1_700_000_123.5, 86400, 1_699_920_000)],
)  # fmt: skip
def test_window_start(now: float, size: int, start: int) -> None:
    assert window_start(now, size) == start


def test_keys_follow_the_reference_layout_and_window() -> None:
    now = 1_700_000_123.25
    plan = plan_hits(
        LIMITS,
        "kv",
        [([("method", "get")], 1), ([("tenant", "t1"), ("method", "put")], 4),
         ([("free", "x")], 1), ([("unknown", "x")], 1)],
        now,
    )  # fmt: skip
    first, nested, free, unknown = plan
    assert first is not None and nested is not None
    assert first.key == "kv_method_get_1700000100"
    assert first.reset_after == pytest.approx(1_700_000_160 - now)
    assert nested.key == "kv_tenant_t1_method_put_1699920000" and nested.hits == 4
    assert nested.reset_after == pytest.approx(1_699_920_000 + 86400 - now)
    assert free is None and unknown is None


def test_wildcard_counts_each_value_and_windows_roll_over() -> None:
    a = plan_hits(LIMITS, "kv", [([("method", "a")], 1)], 119.0)[0]
    b = plan_hits(LIMITS, "kv", [([("method", "b")], 1)], 119.0)[0]
    later = plan_hits(LIMITS, "kv", [([("method", "a")], 1)], 120.0)[0]
    assert a is not None and b is not None and later is not None
    assert a.key == "kv_method_a_60" and b.key == "kv_method_b_60"
    assert later.key == "kv_method_a_120" and later.reset_after == 60.0


def test_decide_over_remaining_and_shadow() -> None:
    plan = plan_hits(LIMITS, "kv", [([("method", "get")], 1), ([("x", "y")], 1)], 10.0)
    over, decisions = decide(plan, [3])
    assert not over and decisions[0].remaining == 0 and not decisions[0].over_limit
    assert decisions[1].limit is None and not decisions[1].over_limit
    over, decisions = decide(plan, [4])
    assert over and decisions[0].over_limit and decisions[0].remaining == 0
    shadow = plan_hits(LIMITS, "kv", [([("user", "u")], 1)], 10.0)
    over, decisions = decide(shadow, [2])
    assert not over and decisions[0].over_limit  # reported, not enforced
