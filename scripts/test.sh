#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh), checks lint and types, then runs the whole
# test suite, slow and interop suites included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/pytest "$@"
