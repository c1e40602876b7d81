"""The api layer is the bottom one: importing it loads no proxy, runtime, xds or control code."""

from __future__ import annotations

from tests.support.layering import loaded_under


def test_api_imports_no_upper_layer() -> None:
    upper = ("metamesh.proxy", "metamesh.runtime", "metamesh.xds", "metamesh.control")
    assert loaded_under("metamesh.api, metamesh.api.validate", upper) == "[]"
