#!/usr/bin/env bash
# Runs the live demo (`metamesh demo`), first installing only what it needs: a virtualenv in
# .venv with metamesh and its `demo` and `fast` extras (Apache thrift, thriftpy2 and dubbo-py
# for the sample servers and clients; uvloop, RE2). No Debian packages (except python3-venv when
# this Python cannot make a virtualenv without it), no npm, no Envoy, no dev tools: those are
# for the test suite, which scripts/setup.sh installs (into the same .venv).
# metamesh itself is installed as users install it (not editable), so the demo runs the native
# build: setup.py compiles the hot path with mypyc where a C compiler and the Python headers are,
# and says so once at start-up when it could not.
# Idempotent: a .venv that either script installed from the current pyproject.toml is reused.
# pip's own output goes to .venv/pip-demo.log and is shown only if the install fails.
# Arguments go to `metamesh demo` (--step-seconds N, --keep-running, --admin-port P).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "demo: metamesh needs Python 3.11 or newer; $PY is not (set PYTHON=python3.11)" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  if ! "$PY" -c 'import ensurepip' 2>/dev/null && [[ "${METAMESH_SKIP_APT:-0}" != 1 ]]; then
    echo "demo: apt-get install python3-venv ($PY cannot make a virtualenv without it)"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      python3-venv >/dev/null
  fi
  echo "demo: creating .venv"
  "$PY" -m venv .venv
fi

installed() { [[ -f $1 && ! pyproject.toml -nt $1 ]]; }
if ! installed .venv/.metamesh-installed && ! installed .venv/.metamesh-demo-installed; then
  log=.venv/pip-demo.log
  echo "demo: pip install '.[demo,fast]' into .venv (the first time takes a few minutes: it compiles the hot path)"
  if ! .venv/bin/python -m pip install --disable-pip-version-check ".[demo,fast]" \
    >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "demo: pip install failed; its whole output is in $log" >&2
    exit 1
  fi
  # (xds-protos may have overwritten opentelemetry-proto's modules: scripts/fix_otlp_protos.sh)
  if ! scripts/fix_otlp_protos.sh .venv/bin/python >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "demo: repairing opentelemetry-proto failed; the whole output is in $log" >&2
    exit 1
  fi
  touch .venv/.metamesh-demo-installed
fi

exec .venv/bin/metamesh demo "$@"
