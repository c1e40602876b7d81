"""Fixtures for the Envoy data-plane tests: the Thrift IDL compiled once per session."""

from __future__ import annotations

import types

import pytest

from tests.codecs.thrift import apache_peer


@pytest.fixture(scope="session")
def calc_gen(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    return apache_peer.generate(tmp_path_factory.mktemp("thrift-gen-envoy"))
