"""Shared fixtures for the Hessian 2.0 tests: where the golden vectors live."""

from pathlib import Path

import pytest

GOLDEN_DIR = (Path(__file__).parents[3] / "../shared/testdata/hessian2").resolve()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN_DIR}")
    return GOLDEN_DIR
