#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh), checks lint and types, then runs the whole
# test suite, slow and interop suites included, twice: on the pure-Python tree, then on the
# native build (hot path compiled with mypyc, scripts/build_mypyc.sh), which must behave the same.
# Extra arguments go to pytest. METAMESH_NATIVE_TESTS=0 skips the native pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check setup.py src tests benchmarks examples
.venv/bin/ruff format --check setup.py src tests benchmarks examples
.venv/bin/mypy
.venv/bin/pytest "$@"
if [[ "${METAMESH_NATIVE_TESTS:-1}" != 0 ]]; then
  scripts/build_mypyc.sh
  echo "test: the same suite on the native build (build/native)"
  # the demo script and the wheel tests install metamesh from a copy of the sources into venvs
  # of their own (PYTHONPATH dropped): the same work whichever tree runs pytest, done once above
  METAMESH_EXPECT_NATIVE=1 PYTHONPATH=build/native .venv/bin/pytest -p no:cacheprovider \
    --ignore=tests/test_demo_script.py --ignore=tests/test_native_build.py "$@"
fi
