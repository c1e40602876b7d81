"""Fixtures of the chaos suite: the Thrift IDL compiled once per session, and the ``chaos``
marker (registered here so the suite stays self-contained under ``--strict-markers``)."""

from __future__ import annotations

import types

import pytest

from tests.codecs.thrift import apache_peer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: hostile inputs and killed processes beside real good traffic"
    )


@pytest.fixture(scope="session")
def calc_gen(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    return apache_peer.generate(tmp_path_factory.mktemp("thrift-gen-chaos"))
