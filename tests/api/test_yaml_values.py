"""The loader's fast YAML values (api/yaml_values.py) equal PyYAML's, errors included."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from metamesh.api.yaml_values import node_values

Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DOCUMENTS = [
    "a: 1\nb: [x, 'y', \"z\", 2.5, -3, 0x1F, 0o17, 1_000, 190:20:30]\n",
    "flags: [yes, No, on, OFF, true, False, y, n]\nnothing: [~, null, ]\nempty:\n",
    "numbers: [.inf, -.Inf, 1e3, 6.8523015e+5, 685.230_15e+03, '12', !!str 12]\n",
    "when: 2001-12-14t21:59:43.10-05:00\nday: 2002-12-14\n",
    "nested: {a: {b: [{c: d}, [1, [2, [3]]]]}, 7: seven, 2.5: f, null: n, true: t}\n",
    "dup: 1\ndup: 2\n",
    "base: &b {x: 1}\n",  # (the loader takes PyYAML's path for anchors; still equal)
    "merged:\n  <<: {x: 1, y: 2}\n  y: 3\n",
    "=: value-key\n",
    "text: |\n  two\n  lines\nfolded: >\n  one\n  line\n",
    "- a\n- {b: c}\n- - d\n",
    "plain scalar",
    "!!set {a, b}",
    "!!binary aGVsbG8=",
]


def _compose(text: str) -> tuple[yaml.SafeLoader, yaml.Node]:
    loader = Loader(text)
    assert loader.check_node()
    node = loader.get_node()
    assert node is not None
    return loader, node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("text", [*DOCUMENTS, "nan: .NaN\n"])
def test_values_equal_pyyamls(text: str) -> None:
    fast = node_values(*_compose(text))
    loader, node = _compose(text)
    assert _same(fast, loader.construct_document(node))


@pytest.mark.parametrize(
    "text",
    ["a: !custom x\n", "? [a, b]\n: c\n", "? {a: 1}\n: c\n", "a: !!int x\n", "a: !!str {b: 1}\n"],
)
def test_errors_are_pyyamls(text: str) -> None:
    loader, node = _compose(text)
    with pytest.raises(Exception) as expected:  # PyYAML's own, whatever it is
        loader.construct_document(node)
    with pytest.raises(type(expected.value)) as raised:
        node_values(*_compose(text))
    assert str(raised.value) == str(expected.value)


def test_nesting_deeper_than_the_recursion_limit_is_left_to_pyyaml() -> None:
    text = "[" * 990 + "]" * 990  # (libyaml's own limit is 1,000 levels)
    value = node_values(*_compose(text))
    depth = 1
    while value != []:
        (value,) = value
        depth += 1
    assert depth == 990
