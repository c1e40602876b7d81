"""Python values from a composed YAML node tree, faster than PyYAML's constructor.

The loader composes each document into nodes (kept for ``file:line``) and then needs plain
Python values. PyYAML's ``SafeConstructor.construct_document`` is pure Python and generic
(generators for recursive structures, a cache per node, merge-key flattening): at 10,000
services it was a third of the load. Manifests use little of that, so :func:`node_values`
walks the tree itself for mappings, sequences and strings, and hands every other scalar to
the very constructor function PyYAML would use for its tag (int, float, bool, null,
timestamp: the same YAML 1.1 rules). Anything else (a merge key ``<<``, a ``=`` key, another
tag, an unhashable key, nesting deeper than the interpreter's recursion) is left to
``construct_document`` for the whole document, so the result and the errors are PyYAML's.
Documents with anchors are not given to it (the loader builds those with PyYAML, after its
alias-expansion check), so a node is never shared and never recursive here.
"""

from __future__ import annotations

from typing import Any

import yaml

_PREFIX = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ = _PREFIX + "str", _PREFIX + "map", _PREFIX + "seq"
_SCALARS = frozenset(_PREFIX + t for t in ("int", "float", "bool", "null", "timestamp"))


class _Unusual(Exception):
    """A node left to PyYAML's constructor."""


def node_values(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """The Python value of the document ``node`` (composed by ``loader``, without anchors)."""
    try:
        return _value(loader, node)
    except (_Unusual, RecursionError):
        return loader.construct_document(node)


def _value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    tag = node.tag
    if tag == _STR and isinstance(node, yaml.ScalarNode):
        return node.value
    if tag == _MAP and isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _value(loader, key_node)
            if isinstance(key, list | dict):
                raise _Unusual
            mapping[key] = _value(loader, value_node)
        return mapping
    if tag == _SEQ and isinstance(node, yaml.SequenceNode):
        return [_value(loader, item) for item in node.value]
    if tag in _SCALARS and isinstance(node, yaml.ScalarNode):
        return loader.yaml_constructors[tag](loader, node)
    raise _Unusual
