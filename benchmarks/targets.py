"""The things a benchmark run measures, each started as its own process on 127.0.0.1.

A target turns "the responder listens on port U" into "send load to port P; the proxy's pid is
X". Kinds:

- ``direct``: no proxy, the load generator talks to the responder (the baseline).
- metamesh, ``<mode>-<build>`` (:mod:`benchmarks.metamesh_target`): mode ``static`` is
  ``metamesh proxy --config <generated yaml>``, ``xds`` is ``metamesh control-plane`` plus
  ``metamesh proxy --xds`` (two processes; the proxy is measured), ``up`` is ``metamesh up DIR``
  (one process, measured whole); build ``pure`` is the editable install, ``native`` the mypyc
  build (``scripts/build_mypyc.sh``, refused unless the proxy reports "native"), ``native@DIR``
  a native tree built elsewhere (say, in a git worktree of an older commit), run with
  ``PYTHONPATH=DIR`` and not rebuilt: an A/B of two commits interleaved in one run. Every mode
  serves the same listener, route and cluster (:mod:`benchmarks.mesh_configs`), which is
  checked on the proxy's ``/config_dump`` before it is measured. ``metamesh`` and
  ``metamesh-native[@DIR]``, the names from before the deployed modes, mean ``static-pure`` and
  ``static-native[@DIR]``.
- ``envoy``: Envoy's own L7 filter for the protocol (thrift_proxy or dubbo_proxy), from
  ``benchmarks/envoy_configs/<filter>.yaml``.
- ``envoy-tcp``: Envoy tcp_proxy, the layer-4 floor.
- ``floor-c`` and ``floor-py``: the layer-7 floor, no features at all: ``benchmarks/floor/``
  holds a forwarder in C (built here with ``cc -O2``) and one in Python on uvloop (compiled
  here with mypyc, like metamesh's native build), each making
  metamesh's system calls (one shared upstream connection with id rewriting, one read per
  readable socket, one write per socket per loop turn) and nothing else. What metamesh costs
  above ``floor-c`` is the event loop plus its features; ``floor-c`` itself is kernel time.
  ``floor-epoll`` is ``floor-py`` without asyncio (compiled Python over ``select.epoll``), to
  tell uvloop's share from Python's.

Children are started and stopped by :mod:`benchmarks.processes` (own session, die with the
harness); ``stop()`` ends a target's proxy, then its helpers (the xds mode's control plane).
Envoy instances get ``--concurrency 1`` and a distinct ``--base-id``. Ports are fresh ephemeral
ports.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import string
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.frames import reply_scanner, request_template
from benchmarks.mesh_configs import metamesh_config
from benchmarks.metamesh_target import (
    ALIASES,
    METAMESH_KINDS,
    canonical_kind,
    metamesh_kind,
    prepare_native,
    spans_received,
    start_metamesh,
)
from benchmarks.processes import (
    Unavailable,
    die_with_parent,
    free_port,
    last_line,
    spawn,
    stop_process,
    wait_listening,
)

__all__ = [
    "ALIASES",
    "DEFAULT_TARGETS",
    "TARGET_KINDS",
    "Target",
    "Unavailable",
    "canonical_kind",
    "die_with_parent",
    "find_envoy",
    "free_port",
    "metamesh_config",
    "metamesh_kind",
    "prepare_native",
    "probe",
    "python_facts",
    "spans_received",
    "spawn",
    "stop_process",
    "wait_listening",
]

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIGS = Path(__file__).resolve().parent / "envoy_configs"
FLOOR = Path(__file__).resolve().parent / "floor"
DEFAULT_TARGETS = (
    "direct",
    "static-native",
    "xds-native",
    "up-native",
    "xds-pure",
    "envoy",
    "envoy-tcp",
)
TARGET_KINDS = (
    "direct",
    *METAMESH_KINDS,
    "envoy",
    "envoy-tcp",
    "floor-c",
    "floor-py",
    "floor-epoll",
)
# Distinct per Envoy and per harness process, so two runs at once do not clash on hot-restart ids.
_base_ids = itertools.count(
    int(os.environ.get("BENCH_ENVOY_BASE_ID", 10_000 + (os.getpid() % 100_000) * 8))
)


def probe(protocol: str, port: int, count: int = 3, timeout: float = 5.0) -> None:
    """Send ``count`` requests with distinct ids on one connection; check every reply's id."""
    template = request_template(protocol)
    scan = reply_scanner(protocol)
    want = [7_000_001 + i for i in range(count)]
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(b"".join(template.build(i) for i in want))
        buf, got, errors = b"", [], 0
        while len(got) < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise Unavailable(f"probe: connection closed after {len(got)} of {count} replies")
            buf += chunk
            used, errs = scan(buf, got)
            errors += errs
            buf = buf[used:]
    if sorted(got) != want or errors:
        raise Unavailable(f"probe: sent ids {want}, got {got} ({errors} error replies)")


#: floor module -> the directory it was compiled into by this process (see floor_command)
_floor_trees: dict[str, Path] = {}


def floor_command(kind: str, workdir: Path) -> tuple[list[str], dict[str, str], str]:
    """A floor's command (``PROTOCOL PORT UPSTREAM_PORT`` to be added), environment and
    description: ``floor-c`` (built here once), or ``floor-py`` / ``floor-epoll`` (Python
    compiled with mypyc, as metamesh-native is, built into ``workdir`` once per process: a
    later call reuses the first tree while it is there, so the harness tests and the two
    hops of a two-hop floor compile each floor once)."""
    if kind == "floor-c":
        return [str(build_floor_c(workdir))], dict(os.environ), "floor.c, cc -O2"
    module = kind.replace("-", "_")
    tree = _floor_trees.get(module, workdir / f"{module}_native")
    if not any(tree.glob(f"{module}.*.so")):  # not built yet, or a failed build
        tree = workdir / f"{module}_native"
        tree.mkdir(exist_ok=True)
        shutil.copy(FLOOR / f"{module}.py", tree)
        shutil.copy(FLOOR / "floor_frames.py", tree)
        build = subprocess.run(
            [str(Path(sys.executable).parent / "mypyc"), f"{module}.py", "floor_frames.py"],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            raise Unavailable(f"{module}.py does not compile: " + last_line(build))
    _floor_trees[module] = tree
    run = f"import {module}, floor_frames, sys; "
    run += f"assert all(m.__file__.endswith('.so') for m in ({module}, floor_frames)); "
    run += f"sys.exit({module}.main(sys.argv[1:]))"
    loop = "uvloop" if kind == "floor-py" else "select.epoll, no asyncio"
    env = dict(os.environ, PYTHONPATH=str(tree))
    return [sys.executable, "-c", run], env, f"{module}.py compiled by mypyc, {loop}"


def build_floor_c(workdir: Path) -> Path:
    """``benchmarks/floor/floor.c`` compiled with ``cc -O2`` into ``workdir`` (once)."""
    binary = workdir / "floor"
    if not binary.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise Unavailable("no C compiler (cc/gcc) to build benchmarks/floor/floor.c")
        build = subprocess.run(
            [cc, "-O2", "-o", str(binary), str(FLOOR / "floor.c")], capture_output=True, text=True
        )
        if build.returncode != 0:
            raise Unavailable("floor.c does not build: " + last_line(build))
    return binary


@dataclass
class Target:
    """One measured path. ``port`` is where load goes; ``pid`` is the proxy (None for direct)."""

    kind: str
    protocol: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Processes the target needs beside the measured one (the xds mode's control plane).
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = canonical_kind(self.kind)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def label(self) -> str:
        if self.kind == "envoy":
            return f"Envoy {self.protocol}_proxy"
        if self.kind == "envoy-tcp":
            return "Envoy tcp_proxy (L4)"
        if self.kind == "floor-c":
            return "floor: C, no features"
        if self.kind == "floor-py":
            return "floor: Python (mypyc)+uvloop, no features"
        if self.kind == "floor-epoll":
            return "floor: Python (mypyc)+epoll, no features"
        return self.kind

    @property
    def is_metamesh(self) -> bool:
        return metamesh_kind(self.kind) is not None

    def describe(self) -> str:
        """The target's version, and for metamesh what ``/server_info`` reported."""
        info = self.extra.get("server_info")
        if not info:
            return self.version
        return f"{self.version}; /server_info: {info['build']}, loop {info['loop']}"

    def start(self, upstream_port: int, options: dict[str, Any]) -> None:
        if self.kind == "direct":
            self.port = upstream_port
        elif self.kind in ("envoy", "envoy-tcp"):
            self._start_envoy(upstream_port, options)
        elif self.is_metamesh:
            start_metamesh(self, upstream_port, options)
        elif self.kind in ("floor-c", "floor-py", "floor-epoll"):
            self._start_floor(upstream_port)
        else:
            known = ", ".join((*TARGET_KINDS, *ALIASES))
            raise ValueError(f"unknown target {self.kind!r}; known: {known}, <kind>-native@DIR")
        probe(self.protocol, self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        for helper in reversed(self.helpers):
            stop_process(helper)

    # -- floors ---------------------------------------------------------------------------------
    def _start_floor(self, upstream_port: int) -> None:
        self.port = free_port()
        log = self.workdir / f"{self.kind}-{self.protocol}.log"
        cmd, env, self.version = floor_command(self.kind, self.workdir)
        cmd += [self.protocol, str(self.port), str(upstream_port)]
        self.proc = spawn(cmd, log, env=env)
        wait_listening(self.port, self.proc, 30.0, log)

    # -- Envoy ----------------------------------------------------------------------------------

    def _start_envoy(self, upstream_port: int, options: dict[str, Any]) -> None:
        binary = options.get("envoy_bin") or find_envoy()
        if not binary:
            raise Unavailable("no Envoy binary: run benchmarks/setup.sh (or pass --envoy-bin)")
        name = "tcp_proxy" if self.kind == "envoy-tcp" else f"{self.protocol}_proxy"
        self.port, admin = free_port(), free_port()
        source = options.get("envoy_config") or ENVOY_CONFIGS / f"{name}.yaml"  # inflight.py
        text = string.Template(Path(source).read_text()).substitute(
            admin_port=admin, listen_port=self.port, upstream_port=upstream_port
        )
        config = self.workdir / f"envoy-{self.protocol}-{name}.yaml"
        config.write_text(text)
        log = self.workdir / f"envoy-{self.protocol}-{name}.log"
        concurrency = str(options.get("envoy_concurrency", 1))  # benchmarks/workers.py: 1 or 2
        cmd = [str(binary), "-c", str(config), "--concurrency", concurrency]
        cmd += ["--base-id", str(next(_base_ids)), "-l", "warning"]
        self.proc = spawn(cmd, log)
        self.extra = {"admin_port": admin, "config": str(config), "base_id": cmd[-3]}
        wait_listening(self.port, self.proc, 30.0, log)
        self.version = envoy_version(str(binary))

    def envoy_stats(self, prefix: str) -> dict[str, int]:
        """Counters/gauges from Envoy's admin whose names start with ``prefix``."""
        url = f"http://127.0.0.1:{self.extra['admin_port']}/stats?filter=^{prefix}"
        with urllib.request.urlopen(url, timeout=5) as r:
            lines = r.read().decode().splitlines()
        stats = {}
        for line in lines:
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                stats[k] = int(v)
        return stats


def find_envoy() -> Path | None:
    """The real Envoy binary in .venv-envoy (installed by benchmarks/setup.sh), if present."""
    for candidate in sorted(
        (ROOT / ".venv-envoy").glob("lib/python3*/site-packages/envoy/_bin/envoy")
    ):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def envoy_version(binary: str) -> str:
    run = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    text = run.stdout.strip().split("version:")[-1].strip()
    parts = text.split("/")
    return parts[1] if len(parts) > 1 else text


def python_facts() -> dict[str, str]:
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {"python": sys.version.split()[0], "uvloop": uv}
