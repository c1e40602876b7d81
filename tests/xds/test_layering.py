"""The xds layer sits below control: importing it loads no control or runtime code."""

from __future__ import annotations

from tests.support.layering import loaded_under


def test_xds_imports_no_upper_layer() -> None:
    upper = ("metamesh.control", "metamesh.runtime", "metamesh.cli")
    assert loaded_under("metamesh.xds, metamesh.xds.server", upper) == "[]"
