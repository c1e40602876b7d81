"""Redis side by side: redis-benchmark direct, through metamesh and through Envoy's redis_proxy.

Usage (after ``scripts/setup.sh`` and ``benchmarks/setup.sh``)::

    .venv/bin/python benchmarks/redis_compare.py --shapes c20P1,c20P16,c50P1 --reps 1

One real ``redis-server`` is the backend of every target. One ``metamesh control-plane`` serves
one config directory (a ServiceEntry with a ``tcp-redis`` port and a RedisService with a
``key:`` prefix route and a catch-all, both to that backend) to two data planes at once: a
``metamesh proxy --xds`` (on the service's address; with ``--native``, the mypyc build) and a
real Envoy (``--concurrency 1``, node metadata ``METAMESH_LISTEN_ADDRESS`` so its
``redis_proxy`` listener binds another loopback address), so both proxies serve the same
routes, from the same resources.

Each shape ``c<clients>P<pipeline>`` is one ``redis-benchmark -t set,get -c C -P P -n N`` per
target, interleaved (direct, metamesh, Envoy; ``--reps`` rounds). Around each run the proxy's
CPU time (utime+stime of all its threads, ``/proc/PID/stat``) and the backend's are read:
**CPU per request** is the proxy's CPU over the run divided by its ``2N`` requests (a GET and a
SET test of N each), the number to compare on a noisy shared box; throughput is
redis-benchmark's requests per second per test. Medians over the rounds go into a Markdown
table (printed, and saved under ``benchmarks/results/`` with the command line, the date, the
machine facts and the metamesh build the proxy reported on ``/server_info``) and a JSON file.

``--floor`` adds a fourth target, ``benchmarks/floor/floor_redis.py``: a uvloop forwarder that
only copies bytes (an upstream connection per client), the kernel + event loop floor of a
Python proxy. ``--native-tree DIR`` runs metamesh from a native build made elsewhere (a
``pip install --target DIR`` with ``METAMESH_MYPYC=1``) instead of building ``build/native``.

The measured part holds ``/tmp/metamesh-bench.lock`` (``flock``), so two benchmarks never run
at once on the shared machine; other work may still run beside it: figures from a shared
machine are smoke, not publishable.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import io
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metamesh_target import native_tree
from benchmarks.processes import (
    Unavailable,
    fail_if_exited,
    free_port,
    spawn,
    stop_process,
    wait_listening,
)
from benchmarks.targets import envoy_version, find_envoy, python_facts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = Path("/tmp/metamesh-bench.lock")
HOST = "redis-bench.demo.svc.cluster.local"
_SHAPE = re.compile(r"c(\d+)P(\d+)$")
_XDS_PORT = re.compile(r"control plane \(xDS\) on [^\s:]+:(\d+)")
_TICKS = os.sysconf("SC_CLK_TCK")
NA = "\u2013"  # en dash: "no value" in the table

ENVOY_BOOTSTRAP = """
node: {{id: redis-bench-envoy, cluster: bench, metadata: {{METAMESH_LISTEN_ADDRESS: {listen}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: metamesh_xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: metamesh_xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: metamesh_xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}
"""


def mesh_config(address: str, port: int, backend: int) -> str:
    """The one config both proxies are served: a prefix route and a catch-all."""
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: redis-bench, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{address}]
  ports: [{{number: {port}, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-redis: {backend}}}}}]
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis-bench, namespace: demo}}
spec:
  host: [{HOST}]
  settings: {{opTimeout: 5s}}
  redis:
  - match: {{key: {{prefix: "key:"}}}}
    route: {{host: {HOST}}}
  - route: {{host: {HOST}}}
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- the processes ------------------------------------------------------------------------


class Bench:
    """The backend, the control plane and the two proxies of one run (see the docstring)."""

    def __init__(
        self,
        workdir: Path,
        envoy_bin: Path,
        native: bool = False,
        tree: Path | None = None,
        floor: bool = False,
    ) -> None:
        self.workdir = workdir
        #: the metamesh processes' environment: the native build on PYTHONPATH when asked
        #: (``tree``: a native build made elsewhere, used as is)
        self.env = {**os.environ}
        self.native = native or tree is not None
        if tree is not None:
            self.env["PYTHONPATH"] = str(tree)
        elif native:
            self.env["PYTHONPATH"] = str(native_tree(workdir))
        #: also measure benchmarks/floor/floor_redis.py (a byte-copying uvloop forwarder)
        self.floor = floor
        self.floor_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.backend_port = free_port()
        self.address = f"127.0.14.{random.randint(10, 250)}"
        self.envoy_address = f"127.0.15.{random.randint(10, 250)}"
        self.port = free_port()
        self.envoy_bin = envoy_bin
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        self.backend = self._spawn(
            "redis-server",
            ["redis-server", "--port", str(self.backend_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        )  # fmt: skip
        wait_listening(self.backend_port, self.backend, 10, self.workdir / "redis-server.log")
        mesh = self.workdir / "mesh"
        mesh.mkdir()
        (mesh / "redis.yaml").write_text(mesh_config(self.address, self.port, self.backend_port))
        metamesh = [sys.executable, "-m", "metamesh"]
        control = self._spawn(
            "control-plane",
            [*metamesh, "control-plane", "--config-dir", str(mesh), "--xds-port", "0",
             "--log-level", "WARNING"],
        )  # fmt: skip
        xds = self._xds_port(control)
        self.admin = free_port()
        self.proxy = self._spawn(
            "metamesh-proxy",
            [*metamesh, "proxy", "--xds", f"127.0.0.1:{xds}", "--node-id", "redis-bench",
             "--admin-port", str(self.admin), "--log-level", "WARNING"],
        )  # fmt: skip
        if self.floor:
            self.floor_proc = self._spawn(
                "floor-redis",
                [sys.executable, str(HERE / "floor" / "floor_redis.py"), "127.0.0.1",
                 str(self.floor_port), str(self.backend_port)],
            )  # fmt: skip
            wait_listening(self.floor_port, self.floor_proc, 10, self.workdir / "floor-redis.log")
        envoy_admin = free_port()
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(
            ENVOY_BOOTSTRAP.format(listen=self.envoy_address, admin=envoy_admin, xds=xds)
        )
        self.envoy = self._spawn(
            "envoy",
            [str(self.envoy_bin), "-c", str(bootstrap), "--concurrency", "1",
             "--base-id", str(3_000_000 + os.getpid() % 100_000), "-l", "warning"],
        )  # fmt: skip
        for name, host, proc in (
            ("metamesh", self.address, self.proxy),
            ("envoy", self.envoy_address, self.envoy),
        ):
            self._wait_serving(name, host, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/server_info", timeout=5) as r:
            server_info = json.load(r)
        if self.native and "native" not in str(server_info.get("build")):
            raise Unavailable(f"the proxy does not run the native build: {server_info}")
        self.info = {
            "metamesh_build": server_info.get("build", "not reported"),
            "metamesh_loop": server_info.get("loop", "not reported"),
            "envoy": envoy_version(str(self.envoy_bin)),
            "redis_server": _redis_version(),
        }

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(cmd, self.workdir / f"{name}.log", cwd=str(ROOT), env=self.env)
        self.procs.append(proc)
        return proc

    def _xds_port(self, control: subprocess.Popen[bytes]) -> int:
        log = self.workdir / "control-plane.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = _XDS_PORT.search(log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            fail_if_exited(control, log, "serving xDS")
            time.sleep(0.05)
        raise Unavailable(f"the control plane reported no xDS port (log: {log})")

    def _wait_serving(self, name: str, host: str, proc: subprocess.Popen[bytes]) -> None:
        """Until a real client (redis-cli) gets its SET back through ``host``."""
        log = self.workdir / f"{'metamesh-proxy' if name == 'metamesh' else name}.log"
        deadline = time.monotonic() + 60
        cli = ["redis-cli", "-h", host, "-p", str(self.port)]
        while time.monotonic() < deadline:
            fail_if_exited(proc, log, "serving Redis")
            run = subprocess.run([*cli, "SET", f"key:{name}", name], capture_output=True, text=True)
            got = subprocess.run([*cli, "GET", f"key:{name}"], capture_output=True, text=True)
            if run.stdout.strip() == "OK" and got.stdout.strip() == name:
                return
            time.sleep(0.2)
        raise Unavailable(f"{name} does not serve Redis on {host}:{self.port} (log: {log})")

    def targets(self) -> dict[str, tuple[str, int, int]]:
        """name -> (host, port, PID whose CPU is the proxy's; the backend's for direct)."""
        found = {"direct": ("127.0.0.1", self.backend_port, self.backend.pid)}
        if self.floor:
            found["floor (uvloop byte copy)"] = ("127.0.0.1", self.floor_port, self.floor_proc.pid)
        found["metamesh"] = (self.address, self.port, self.proxy.pid)
        found["envoy redis_proxy"] = (self.envoy_address, self.port, self.envoy.pid)
        return found

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


def _redis_version() -> str:
    run = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    found = re.search(r"v=(\S+)", run.stdout)
    return found.group(1) if found else run.stdout.strip()


# --- one measurement ----------------------------------------------------------------------


def run_shape(
    host: str, port: int, pid: int, backend_pid: int, clients: int, pipeline: int, n: int
) -> dict[str, float]:
    """One redis-benchmark GET+SET run: rps and p50 per test, the proxy's CPU per request."""
    cmd = ["redis-benchmark", "-h", host, "-p", str(port), "-c", str(clients),
           "-P", str(pipeline), "-n", str(n), "-t", "set,get", "-r", "100000", "--csv"]  # fmt: skip
    cpu0, backend0, wall0 = cpu_seconds(pid), cpu_seconds(backend_pid), time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    cpu1, backend1, wall1 = cpu_seconds(pid), cpu_seconds(backend_pid), time.monotonic()
    if run.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {run.stderr.strip() or run.stdout.strip()}")
    rows = {r["test"]: r for r in csv.DictReader(io.StringIO(run.stdout))}
    if set(rows) != {"SET", "GET"}:
        raise RuntimeError(f"{shlex.join(cmd)}: unexpected output {run.stdout!r}")
    return {
        "set_rps": float(rows["SET"]["rps"]),
        "get_rps": float(rows["GET"]["rps"]),
        "get_p50_ms": float(rows["GET"]["p50_latency_ms"]),
        "get_p99_ms": float(rows["GET"]["p99_latency_ms"]),
        "cpu_us_per_req": (cpu1 - cpu0) / (2 * n) * 1e6,
        "backend_cpu_us_per_req": (backend1 - backend0) / (2 * n) * 1e6,
        "wall_s": wall1 - wall0,
    }


def parse_shape(text: str) -> tuple[int, int]:
    found = _SHAPE.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"a shape is c<clients>P<pipeline>, not {text!r}")
    return int(found.group(1)), int(found.group(2))


@contextmanager
def bench_lock() -> Iterator[None]:
    """``flock /tmp/metamesh-bench.lock`` for the measured part (waits for another run)."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the report ---------------------------------------------------------------------------


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| shape | target | SET req/s | GET req/s | GET p50 ms | GET p99 ms "
        "| proxy CPU µs/req | vs Envoy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, by_target in results.items():
        envoy = by_target.get("envoy redis_proxy", {}).get("cpu_us_per_req")
        for target, m in by_target.items():
            cpu = m["cpu_us_per_req"]
            if target == "direct":
                cpu_text, ratio = f"({m['backend_cpu_us_per_req']:.1f} server)", NA
            else:
                cpu_text = f"{cpu:.1f}"
                ratio = f"{cpu / envoy:.2f}x" if envoy else NA
            lines.append(
                f"| {shape} | {target} | {m['set_rps']:,.0f} | {m['get_rps']:,.0f} "
                f"| {m['get_p50_ms']:.3f} | {m['get_p99_ms']:.3f} | {cpu_text} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def tree_state() -> str:
    """The commit measured, and whether the working tree differed from it (a shared tree)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)  # fmt: skip
    changed = len(dirty.stdout.splitlines())
    return head.stdout.strip() + (f" + {changed} uncommitted file(s)" if changed else "")


def machine_facts() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **python_facts(),
    }


def save(text: str, data: dict[str, Any]) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M%S")
    out = HERE / "results" / f"{stamp}-redis.md"
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="c20P1,c20P16,c50P1", help="c<clients>P<pipeline>,...")
    parser.add_argument("--requests", type=int, default=50_000, help="per test (GET, SET)")
    parser.add_argument("--reps", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--envoy-bin", type=Path, default=None, help="the Envoy binary")
    parser.add_argument(
        "--native",
        action="store_true",
        help="run metamesh from the mypyc build (scripts/build_mypyc.sh; rebuilt when stale)",
    )
    parser.add_argument(
        "--native-tree",
        type=Path,
        default=None,
        help="run metamesh from this native build (a pip --target directory) instead",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure benchmarks/floor/floor_redis.py, a byte-copying uvloop forwarder",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    shapes = [(s, parse_shape(s)) for s in args.shapes.split(",")]
    envoy_bin = args.envoy_bin or find_envoy()
    if envoy_bin is None or shutil.which("redis-benchmark") is None:
        print("needs Envoy (benchmarks/setup.sh) and redis-benchmark (scripts/setup.sh)")
        return 2
    tree = tree_state()  # when the run starts (the native copy is taken then too)
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        bench = Bench(Path(tmp), envoy_bin, args.native, args.native_tree, args.floor)
        try:
            bench.start()
            samples: dict[str, dict[str, list[dict[str, float]]]] = {}
            with bench_lock():
                for _ in range(args.reps):
                    for shape, (clients, pipeline) in shapes:
                        for name, (host, port, pid) in bench.targets().items():
                            sample = run_shape(
                                host, port, pid, bench.backend.pid, clients, pipeline, args.requests
                            )
                            samples.setdefault(shape, {}).setdefault(name, []).append(sample)
                            print(f"{shape} {name}: {sample}", file=sys.stderr)
        finally:
            bench.stop()
    results = {s: {t: medians(v) for t, v in by.items()} for s, by in samples.items()}
    facts = {"tree": tree, **machine_facts(), **bench.info}
    text = (
        f"# Redis: direct vs metamesh vs Envoy redis_proxy\n\n"
        f"`{shlex.join([sys.executable, *sys.argv])}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {args.reps} round(s), "
        f"{args.requests} requests per test.\n\n"
        "Taken on a shared 2-core machine with other work running: smoke figures, not "
        "publishable. Proxy CPU is the proxy process's utime+stime per request (GET and SET); "
        "for direct, the redis-server's. The floor, when measured, is a uvloop forwarder that "
        "only copies bytes (an upstream connection per client).\n\n"
        + table(results)
        + "\n"
        + "\n".join(f"- {k}: {v}" for k, v in facts.items())
        + "\n"
    )
    print(text)
    if not args.no_save:
        saved = save(text, {"argv": sys.argv, "facts": facts, "results": results})
        print(f"saved {saved}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
