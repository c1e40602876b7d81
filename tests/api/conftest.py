"""A small valid resource set that the rule tests edit one field at a time."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from metamesh.api import Problem, load_text, validate

HOST = "svc.ns.svc.cluster.local"
Docs = dict[str, dict[str, Any]]
DELETE = object()


def base_docs() -> Docs:
    return {
        "se": {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "ServiceEntry",
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {
                "hosts": [HOST],
                "addresses": ["127.0.10.1"],
                "ports": [{"number": 9090, "name": "tcp-metaprotocol-thrift-x", "protocol": "TCP"}],
                "resolution": "STATIC",
                "endpoints": [
                    {"address": "127.0.20.1", "labels": {"version": "v1"}},
                    {"address": "127.0.20.2", "labels": {"version": "v2"}},
                ],
            },
        },
        "dr": {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {
                "host": HOST,
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ],
            },
        },
        "ap": {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "ApplicationProtocol",
            "metadata": {"name": "thrift"},
            "spec": {"protocol": "thrift", "codec": "aeraki.meta_protocol.codec.thrift"},
        },
        "mr": {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "MetaRouter",
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {
                "hosts": [HOST],
                "routes": [
                    {
                        "name": "r",
                        "match": {"attributes": {"method": {"exact": "sayHello"}}},
                        "route": [{"destination": {"host": HOST, "subset": "v1"}}],
                    }
                ],
            },
        },
    }


def set_path(docs: Docs, key: str, path: str, value: Any) -> None:
    """``set_path(docs, "mr", "spec.routes.0.name", "x")``; DELETE removes the entry."""
    node: Any = docs[key]
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and last == len(node):
        node.append(copy.deepcopy(value))
    else:
        node[last] = copy.deepcopy(value)


Edit = Callable[[Docs], None]


def edit(key: str, path: str, value: Any) -> Edit:
    return lambda docs: set_path(docs, key, path, value)


def to_yaml(docs: Docs) -> str:
    return yaml.safe_dump_all(list(docs.values()), sort_keys=False)


def problems_for(*edits: Edit) -> list[Problem]:
    docs = base_docs()
    for change in edits:
        change(docs)
    return validate(load_text(to_yaml(docs), "mesh.yaml"))


@pytest.fixture
def docs() -> Docs:
    return base_docs()
