#!/usr/bin/env bash
# Builds a native metamesh that burns NS nanoseconds of CPU (a busy wait on the monotonic
# clock) on every read from a client, into OUTDIR, for an A/B run against the real build:
#
#   bash benchmarks/spin_build.sh 500 /tmp/spin500
#   .venv/bin/python benchmarks/compare.py --protocol dubbo --shapes c16k1 \
#       --targets metamesh-native,metamesh-native@/tmp/spin500,envoy --reps 6
#
# Why: it measures how the proxy's CPU per request answers to user-space work it does per
# request. At c16k1 every client read is one request, so the variant does NS ns more per
# request; what its CPU per request rises by says what removing that much work would save
# (benchmarks/README.md, "What holds Dubbo c16k1 back"). The working tree is copied and the
# copy edited by benchmarks/spin_patch.py; nothing in the tree changes.
set -euo pipefail
if [[ $# -ne 2 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NS OUTDIR" >&2
  exit 2
fi
ns=$1
out=$(realpath -m "$2")
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/src" "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$root/scripts" "$work/"
ln -s "$root/.venv" "$work/.venv"
"$root/.venv/bin/python" "$root/benchmarks/spin_patch.py" "$work/src/metamesh/runtime/protocols.py" "$ns"
(cd "$work" && bash scripts/build_mypyc.sh >/dev/null)
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$work/build/native" "$out"
echo "spin_build: native build with ${ns} ns per client read in $out"
