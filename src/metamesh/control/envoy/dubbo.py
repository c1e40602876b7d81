"""MetaRouter -> Envoy ``generic_proxy`` with the Dubbo codec (placeholder, filled next)."""

from __future__ import annotations

from typing import Any

from metamesh.control.envoy.ports import EnvoyPort, Tables
from metamesh.control.model import MeshModel


def dubbo_filter(model: MeshModel, item: EnvoyPort, tables: Tables) -> Any:
    return None
