"""The things a benchmark run measures, each started as its own process on 127.0.0.1.

A target turns "the responder listens on port U" into "send load to port P; the proxy's pid is
X". Kinds:

- ``direct``: no proxy, the load generator talks to the responder (the baseline).
- ``metamesh``: ``.venv/bin/metamesh proxy --config <generated yaml>``, one MetaProtocol listener
  with the built-in codec and one route (Thrift: method ``add``; Dubbo: interface + method), like
  the Envoy L7 configs. Reported as unavailable (with the reason) while the CLI cannot run it.
- ``metamesh-native``: the same command and config on the native build (hot path compiled with
  mypyc; ``scripts/build_mypyc.sh`` builds it into ``build/native`` first, then the proxy runs
  with ``PYTHONPATH=build/native``). Refused unless ``metamesh --version`` reports "native".
- ``metamesh-native@DIR``: a native tree built elsewhere (say, ``scripts/build_mypyc.sh`` in a
  git worktree of an older commit), run with ``PYTHONPATH=DIR`` and not rebuilt: an A/B of two
  commits interleaved in one run, so the machine's drift hits both alike.
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

Every child process gets its own session (the shell-job SIGTERM gotcha that ``setsid -f`` works
around for Envoy) and ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the harness even if the
harness is killed; ``stop()`` terminates it and waits, escalating to SIGKILL. Envoy instances get
``--concurrency 1`` and a distinct ``--base-id``. Ports are fresh ephemeral ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.frames import (
    DUBBO_INTERFACE,
    DUBBO_METHOD,
    THRIFT_METHOD,
    reply_scanner,
    request_template,
)

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIGS = Path(__file__).resolve().parent / "envoy_configs"
FLOOR = Path(__file__).resolve().parent / "floor"
DEFAULT_TARGETS = ("direct", "metamesh", "metamesh-native", "envoy", "envoy-tcp")
TARGET_KINDS = (*DEFAULT_TARGETS, "floor-c", "floor-py", "floor-epoll")
# Distinct per Envoy and per harness process, so two runs at once do not clash on hot-restart ids.
_base_ids = itertools.count(
    int(os.environ.get("BENCH_ENVOY_BASE_ID", 10_000 + (os.getpid() % 100_000) * 8))
)


class Unavailable(RuntimeError):
    """The target cannot run on this machine or tree (yet); the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the harness process exits."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, bound to our lifetime, stdout+stderr to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            **kw,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def wait_listening(
    port: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise Unavailable(f"exited with code {proc.returncode} before listening:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise Unavailable(f"port {port} not accepting after {timeout:.0f}s (log: {log})")


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

    def start(self, upstream_port: int, options: dict[str, Any]) -> None:
        if self.kind == "direct":
            self.port = upstream_port
        elif self.kind in ("envoy", "envoy-tcp"):
            self._start_envoy(upstream_port, options)
        elif self.kind == "metamesh":
            self._start_metamesh(upstream_port, options)
        elif self.kind == "metamesh-native":
            self._start_metamesh(upstream_port, options, native=True)
        elif self.kind.startswith("metamesh-native@"):
            tree = Path(self.kind.partition("@")[2]).resolve()
            self._start_metamesh(upstream_port, options, native=True, tree=tree)
        elif self.kind in ("floor-c", "floor-py", "floor-epoll"):
            self._start_floor(upstream_port)
        else:
            raise ValueError(f"unknown target {self.kind!r}; known: {', '.join(TARGET_KINDS)}")
        probe(self.protocol, self.port)

    def stop(self) -> None:
        stop_process(self.proc)

    # -- floors ---------------------------------------------------------------------------------
    def _start_floor(self, upstream_port: int) -> None:
        self.port = free_port()
        log = self.workdir / f"{self.kind}-{self.protocol}.log"
        if self.kind == "floor-c":
            binary = self.workdir / "floor"
            if not binary.exists():
                cc = shutil.which("cc") or shutil.which("gcc")
                if cc is None:
                    raise Unavailable("no C compiler (cc/gcc) to build benchmarks/floor/floor.c")
                build = subprocess.run(
                    [cc, "-O2", "-o", str(binary), str(FLOOR / "floor.c")],
                    capture_output=True,
                    text=True,
                )
                if build.returncode != 0:
                    raise Unavailable("floor.c does not build: " + _last_line(build))
            cmd = [str(binary)]
            env = dict(os.environ)
            self.version = "floor.c, cc -O2"
        else:  # floor-py, floor-epoll: Python compiled with mypyc, as metamesh-native is
            module = self.kind.replace("-", "_")
            tree = self.workdir / f"{module}_native"
            if not any(tree.glob(f"{module}.*.so")):  # not built yet, or a failed build
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
                    raise Unavailable(f"{module}.py does not compile: " + _last_line(build))
            run = f"import {module}, floor_frames, sys; "
            run += f"assert all(m.__file__.endswith('.so') for m in ({module}, floor_frames)); "
            run += f"sys.exit({module}.main(sys.argv[1:]))"
            cmd = [sys.executable, "-c", run]
            env = dict(os.environ, PYTHONPATH=str(tree))
            loop = "uvloop" if self.kind == "floor-py" else "select.epoll, no asyncio"
            self.version = f"{module}.py compiled by mypyc, {loop}"
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
        text = string.Template((ENVOY_CONFIGS / f"{name}.yaml").read_text()).substitute(
            admin_port=admin, listen_port=self.port, upstream_port=upstream_port
        )
        config = self.workdir / f"envoy-{self.protocol}-{name}.yaml"
        config.write_text(text)
        log = self.workdir / f"envoy-{self.protocol}-{name}.log"
        cmd = [str(binary), "-c", str(config), "--concurrency", "1"]
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

    # -- metamesh -------------------------------------------------------------------------------

    def _start_metamesh(
        self,
        upstream_port: int,
        options: dict[str, Any],
        native: bool = False,
        tree: Path | None = None,
    ) -> None:
        binary = Path(options.get("metamesh_bin") or ROOT / ".venv" / "bin" / "metamesh")
        if not binary.exists():
            raise Unavailable(f"{binary} not found (run scripts/setup.sh)")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if tree is not None:
            if not tree.is_dir():
                raise Unavailable(f"{tree} is not a directory (build it with build_mypyc.sh)")
            env["PYTHONPATH"] = str(tree)
        elif native:
            build = subprocess.run(
                [str(ROOT / "scripts" / "build_mypyc.sh")], capture_output=True, text=True
            )
            if build.returncode != 0:
                raise Unavailable("native build failed: " + _last_line(build))
            env["PYTHONPATH"] = str(ROOT / "build" / "native")
        help_run = subprocess.run(
            [str(binary), "proxy", "--help"], capture_output=True, text=True, timeout=30, env=env
        )
        if help_run.returncode != 0:
            raise Unavailable("`metamesh proxy` is not available yet: " + _last_line(help_run))
        self.port = free_port()
        slug = self.kind.replace("/", "_").replace("@", "-at")
        config = self.workdir / f"{slug}-{self.protocol}.yaml"
        template = options.get("metamesh_config")
        if template:
            config.write_text(
                string.Template(Path(template).read_text()).substitute(
                    listen_port=self.port, upstream_port=upstream_port, protocol=self.protocol
                )
            )
        else:
            config.write_text(
                yaml.safe_dump(
                    metamesh_config(self.protocol, self.port, upstream_port), sort_keys=False
                )
            )
        cmd = [str(binary), "proxy", "--config", str(config)]
        if "--admin-port" in help_run.stdout:
            admin = free_port()
            cmd += ["--admin-port", str(admin)]
            self.extra["admin_port"] = admin
        if "--drain-timeout" in help_run.stdout:
            cmd += ["--drain-timeout", "1"]
        if "--log-level" in help_run.stdout:
            cmd += ["--log-level", "WARNING"]
        cmd += list(options.get("metamesh_args") or [])
        log = self.workdir / f"{slug}-{self.protocol}.log"
        version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, env=env
        ).stdout.strip()
        if native and "native" not in version:
            raise Unavailable(f"{env['PYTHONPATH']} does not load compiled: {version!r}")
        self.proc = spawn(cmd, log, env=env)
        self.extra["config"] = str(config)
        wait_listening(self.port, self.proc, 30.0, log)
        self.version = version


def metamesh_config(protocol: str, listen_port: int, upstream_port: int) -> dict[str, Any]:
    """A static metamesh proxy config equivalent to the Envoy L7 config for ``protocol``."""
    if protocol == "thrift":
        match = [{"name": "method", "exact_match": THRIFT_METHOD.decode()}]
    else:
        match = [
            {"name": "interface", "exact_match": DUBBO_INTERFACE},
            {"name": "method", "exact_match": DUBBO_METHOD},
        ]
    cluster = f"outbound|{listen_port}||bench.upstream"
    routes = f"bench_{listen_port}"
    return {
        "version": "bench",
        "static_resources": {
            "listeners": [
                {
                    "name": f"bench-{protocol}",
                    "address": _address(listen_port)["address"],
                    "meta_protocol_proxy": {
                        "stat_prefix": f"bench_{protocol}",
                        "codec": {"name": protocol},
                        "route_config_name": routes,
                        "meta_protocol_filters": [{"name": "aeraki.meta_protocol.filters.router"}],
                    },
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "endpoints": [{"lb_endpoints": [{"endpoint": _address(upstream_port)}]}]
                    },
                }
            ],
            "route_configs": [
                {
                    "name": routes,
                    "routes": [
                        {
                            "name": "bench",
                            "match": {"metadata": match},
                            "route": {"cluster": cluster},
                        }
                    ],
                }
            ],
        },
    }


def _address(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def _last_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = (run.stderr or run.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {run.returncode}"


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
