"""Control plane at scale: 10,000 services x 10 routes, 200 connected proxies (issue 21).

What runs (all on 127.0.0.1):

- the real ``metamesh control-plane --config-dir DIR`` in its own process, on a generated
  directory: ``--services`` services (ServiceEntry with two endpoints, DestinationRule with two
  subsets, MetaRouter with ``--routes`` routes; one file per service) spread over
  ``--namespaces`` namespaces ``ns00``, ``ns01``, ...; with ``--scoped``, a root-namespace
  Sidecar ``egress: [{hosts: [./*, ns00/*]}]`` (every proxy imports its own namespace and the
  shared ``ns00``), without it every proxy gets every service;
- ``--proxies`` real xDS clients (:mod:`benchmarks.xds_load_client`: grpcio, one channel and
  connection each, wildcard CDS/LDS then EDS/RDS by name, every response parsed and ACKed),
  ``--processes`` processes of them; proxy ``k`` is in namespace ``ns{k % namespaces}``.

Phases, each timed from its trigger to the last ACK it caused (a phase ends after
``--quiet`` seconds without any response; ``t`` is ``time.monotonic()``, shared by the
processes of one Linux host):

1. **connect**: the client processes start (interpreter start included) until every proxy has
   ACKed its complete config;
2. **one service**: one service of ``ns05`` (seen only by that namespace's proxies when scoped)
   gets a different default subset (its MetaRouter file is rewritten);
3. **one shared service**: the same in ``ns00`` (seen by every proxy);
4. **every scope** (``--scoped`` only): the root Sidecar imports ``ns01`` too, so every proxy
   but ``ns01``'s gets 500 more services.

For each: time to the last ACK, proxies that received something, bytes sent (wire size of the
responses, summed over proxies; per proxy), and the control plane's CPU time (user+system,
from ``/proc``) and RSS (current and peak) around it.

Run (it takes ``/tmp/metamesh-bench.lock`` itself once the directory is loaded):
``.venv/bin/python -m benchmarks.control_plane_scale
[--services 10000 --routes 10 --proxies 200 --processes 8 --namespaces 20] [--scoped]
[--delta]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TYPES = ("CDS", "EDS", "LDS", "RDS")
#: Taken (flock) for the measured part only: generating and loading 10,000 services takes
#: minutes and measures nothing.
LOCK = "/tmp/metamesh-bench.lock"


def service_yaml(name: str, namespace: str, routes: int, default_subset: str) -> str:
    host = f"{name}.{namespace}.svc.cluster.local"
    items = [
        f"  - name: r{i}\n    match: {{attributes: {{method: {{exact: m{i}}}}}}}\n"
        f"    route: [{{destination: {{host: {host}, subset: v{1 + i % 2}}}}}]"
        for i in range(routes - 1)
    ]
    items.append(
        f"  - name: rest\n    route: [{{destination: {{host: {host}, subset: {default_subset}}}}}]"
    )
    return (
        f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  ports: [{{number: 9090, name: tcp-metaprotocol-thrift-x}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-x: 19001}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-x: 19002}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {host}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  routes:
"""
        + "\n".join(items)
        + "\n"
    )


def sidecar_yaml(hosts: list[str]) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        "metadata: {name: default, namespace: istio-system}\n"
        f"spec:\n  egress: [{{hosts: {json.dumps(hosts)}}}]\n"
    )


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate(directory: Path, args: argparse.Namespace) -> None:
    header = "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: ApplicationProtocol\n"
    header += "metadata: {name: thrift}\nspec: {protocol: thrift, codec: thrift}\n"
    (directory / "protocol.yaml").write_text(header)
    for i in range(args.services):
        namespace = f"ns{i % args.namespaces:02d}"
        name = f"svc{i // args.namespaces}"
        sub = directory / namespace
        sub.mkdir(exist_ok=True)
        (sub / f"{name}.yaml").write_text(service_yaml(name, namespace, args.routes, "v1"))
    if args.scoped:
        (directory / "sidecar.yaml").write_text(sidecar_yaml(["./*", "ns00/*"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Events:
    """ACKs reported by the client processes."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)

    def since(self, t0: float) -> list[dict[str, Any]]:
        return [e for e in self.lines if e["t"] >= t0]


async def read_events(stream: asyncio.StreamReader, events: Events) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            events.lines.append(json.loads(line))
            events.last = time.monotonic()


async def read_pushes(stream: asyncio.StreamReader, pushes: list[float]) -> None:
    """When the control plane applies each model (its ``ADS: version N pushed`` log line)."""
    while line := await stream.readline():
        if b"ADS: version" in line:
            pushes.append(time.monotonic())
        elif b"WARNING" in line or b"ERROR" in line:
            sys.stderr.write(line.decode(errors="replace"))


async def quiet(events: Events, seconds: float, *, timeout: float = 600.0) -> None:
    """Until a response has come after now and then none for ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.1)
        if events.last > start and time.monotonic() - events.last >= seconds:
            return
    raise TimeoutError("no response to the change")


def phase_report(
    name: str, t0: float, events: Events, pid: int, cpu0: float, pushes: list[float]
) -> dict[str, Any]:
    got = events.since(t0)
    applied = [t for t in pushes if t >= t0]
    nodes = {e["node"] for e in got}
    total = sum(e["bytes"] for e in got)
    rss, peak = memory_mib(pid)
    out = {
        "phase": name,
        "last_ack_s": round(max((e["t"] for e in got), default=t0) - t0, 3),
        "model_applied_s": round(applied[0] - t0, 3) if applied else None,
        "proxies_updated": len(nodes),
        "responses": len(got),
        "bytes_total": total,
        "bytes_per_proxy": round(total / len(nodes)) if nodes else 0,
        "control_plane_cpu_s": round(cpu_seconds(pid) - cpu0, 2),
        "control_plane_rss_mib": round(rss),
        "control_plane_peak_rss_mib": round(peak),
    }
    print(json.dumps(out), flush=True)
    return out


async def wait_loaded(target: str, expected_clusters: int, timeout: float) -> None:
    """A probe client until the control plane serves the whole directory."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "benchmarks.xds_load_client", "--target", target, "--nodes", "probe:ns01",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            event = json.loads(line)
            if event["type"] == "CDS" and event["resources"] >= expected_clusters:
                return
        raise TimeoutError("the control plane did not load the directory")
    finally:
        proc.kill()
        await proc.wait()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mm-cp-scale-") as tmp:
        directory = Path(tmp)
        start = time.monotonic()
        generate(directory, args)
        print(f"generated {args.services} services in {time.monotonic() - start:.1f} s")
        port = free_port()
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        cp = await asyncio.create_subprocess_exec(
            PYTHON, *profile, "-m", "metamesh", "control-plane", "--config-dir", str(directory),
            "--xds-port", str(port), "--log-level", "INFO",
            cwd=ROOT, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert cp.stderr is not None
        pushes: list[float] = []
        log_reader = asyncio.create_task(read_pushes(cp.stderr, pushes))
        target = f"127.0.0.1:{port}"
        clients: list[asyncio.subprocess.Process] = []
        try:
            start = time.monotonic()
            per_ns = args.services // args.namespaces
            visible = per_ns * (2 if args.scoped else args.namespaces)
            await wait_loaded(target, visible * 3 if args.scoped else args.services * 3, 900)
            print(f"control plane loaded in {time.monotonic() - start:.1f} s", flush=True)
            lock = open(LOCK, "w")  # noqa: SIM115 (held until the process ends)
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            print("benchmark lock taken", flush=True)
            events = Events()
            cpu0, t0 = cpu_seconds(cp.pid), time.monotonic()
            nodes = [(f"proxy-{k}", f"ns{k % args.namespaces:02d}") for k in range(args.proxies)]
            readers = []
            for p in range(args.processes):
                mine = nodes[p :: args.processes]
                cmd = [PYTHON, "-m", "benchmarks.xds_load_client", "--target", target]
                cmd += ["--nodes", ",".join(f"{a}:{b}" for a, b in mine)]
                cmd += ["--delta"] if args.delta else []
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdout=asyncio.subprocess.PIPE, cwd=ROOT
                )
                clients.append(proc)
                assert proc.stdout is not None
                readers.append(asyncio.create_task(read_events(proc.stdout, events)))
            await quiet(events, args.quiet)
            acked = {(e["node"], e["type"]) for e in events.lines}
            missing = len(nodes) * 4 - len(acked)
            results.append(phase_report("connect", t0, events, cp.pid, cpu0, pushes))
            if missing:
                print(f"warning: {missing} (proxy, type) pairs never ACKed", flush=True)
            for phase, namespace in (("one service", "ns05"), ("one shared service", "ns00")):
                cpu0, t0 = cpu_seconds(cp.pid), time.monotonic()
                write(directory / namespace / "svc0.yaml",
                      service_yaml("svc0", namespace, args.routes, "v2"))  # fmt: skip
                await quiet(events, args.quiet)
                results.append(phase_report(phase, t0, events, cp.pid, cpu0, pushes))
            if args.scoped:
                cpu0, t0 = cpu_seconds(cp.pid), time.monotonic()
                write(directory / "sidecar.yaml", sidecar_yaml(["./*", "ns00/*", "ns01/*"]))
                await quiet(events, args.quiet)
                results.append(phase_report("every scope", t0, events, cp.pid, cpu0, pushes))
        finally:
            for proc in clients:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            cp.terminate()
            await cp.wait()
            log_reader.cancel()
            for proc in clients:
                await proc.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--proxies", type=int, default=200)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--scoped", action="store_true", help="root-namespace Sidecar")
    parser.add_argument("--delta", action="store_true", help="delta xDS clients")
    parser.add_argument("--quiet", type=float, default=3.0, help="s without a response: done")
    parser.add_argument("--profile", help="run the control plane under cProfile, to this file")
    args = parser.parse_args()
    mode = f"{'delta' if args.delta else 'SotW'}, {'scoped' if args.scoped else 'unscoped'}"
    print(
        f"{args.services} services x {args.routes} routes, {args.proxies} proxies in "
        f"{args.processes} processes, {args.namespaces} namespaces, {mode}",
        flush=True,
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
