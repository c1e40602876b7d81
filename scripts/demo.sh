#!/usr/bin/env bash
# Installs metamesh (scripts/setup.sh) and runs its main job, the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/metamesh demo "$@"
