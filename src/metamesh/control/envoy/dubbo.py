"""MetaRouter -> Envoy ``generic_proxy`` with the Dubbo codec (placeholder, filled next)."""

from __future__ import annotations

from typing import Any

from metamesh.control.envoy.findings import Findings
from metamesh.control.envoy.ports import EnvoyPort, Tables


def dubbo_filter(item: EnvoyPort, tables: Tables, notes: Findings) -> Any:
    return None
