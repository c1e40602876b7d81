#!/usr/bin/env bash
# xds-protos bundles an older copy of the OpenTelemetry protos under the same package path as
# opentelemetry-proto (opentelemetry/proto/...), so whichever pip installs last owns the files.
# When xds-protos' copy won, reinstall opentelemetry-proto's own files (same version, no deps):
# tracing's OTLP exporters need them (`metamesh ... --tracing-endpoint` says so at start).
# Usage: scripts/fix_otlp_protos.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
if ! "$PY" -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope' 2>/dev/null; then
  v=$("$PY" -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')
  echo "setup: reinstalling opentelemetry-proto $v over xds-protos' older copy of its modules"
  "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "opentelemetry-proto==$v"
fi
