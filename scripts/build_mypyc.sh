#!/usr/bin/env bash
# Builds the native metamesh (hot path compiled with mypyc, see setup.py) into build/native,
# beside the editable pure-Python install in .venv, which it leaves alone. Use it with
#   PYTHONPATH=build/native .venv/bin/python -m metamesh proxy --config FILE
# (`metamesh version` then reports "native"). Skipped when build/native is newer than every
# source file. Needs scripts/setup.sh first (mypy, which ships mypyc, and a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/native
stamp=$out/.metamesh-native
if [[ -f $stamp ]] && [[ -z $(find src setup.py pyproject.toml -newer "$stamp" -name '*.py' -print -quit) ]] \
    && [[ ! pyproject.toml -nt $stamp ]]; then
  exit 0
fi
echo "build_mypyc: compiling the hot path into $out"
# setuptools' build/lib.* would carry extensions of modules no longer listed into the install
rm -rf "$out" build/lib.* build/bdist.*
METAMESH_MYPYC=1 .venv/bin/python -m pip install -q --no-deps --no-build-isolation --target "$out" .
touch "$stamp"
