"""``--workers``: metamesh 1 vs 2 workers beside Envoy ``--concurrency`` 1 vs 2 (issue 21).

metamesh with 2 workers runs twice: connections spread by ``SO_REUSEPORT`` (the default) and
handed over by worker 0 (``--worker-accept handover``).

Two measurements, each with every target started once on fresh loopback ports, the same
responder (``responder.py``) behind all of them and the ``static-native`` mode of
``compare.py`` (``metamesh proxy --config``, the mypyc build; ``--native DIR`` picks a built
tree, else ``build/native`` is built as ``compare.py`` does):

* **throughput** (``--shapes``, default ``c16k32``): ``loadgen.py`` against each target in
  turn, interleaved for ``--reps``; req/s, latency, and CPU per request summed over *every*
  process of the target (both workers of metamesh; Envoy is one process with worker threads);
* **memory** (``--idle N``, default 10,000): N client connections opened to the target, one
  request answered on each (so the proxy holds its full per-connection state), then left idle;
  the growth of the target's RSS (all its processes, ``/proc/PID/status`` ``VmRSS``) over its
  RSS before the connections, divided by N. The fd limit of this process and its children is
  raised to the hard limit first.

Run it under the benchmark lock on a shared machine:
``flock /tmp/metamesh-bench.lock .venv/bin/python benchmarks/workers.py --protocol thrift``.
It prints one Markdown table per measurement and, unless ``--no-save``, writes them with the
raw figures to ``benchmarks/results/<date>-<time>-workers-<protocol>.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import machine_facts, median, run_loadgen, start_responder
from benchmarks.frames import reply_scanner, request_template
from benchmarks.metamesh_target import admin_get, prepare_native
from benchmarks.processes import Unavailable, save_results, stop_process
from benchmarks.targets import Target, find_envoy

HERE = Path(__file__).resolve().parent


@dataclass
class Setup:
    """One measured configuration: a target kind and its process count."""

    name: str
    kind: str
    workers: int
    accept: str = "reuseport"
    target: Target | None = None
    pids: list[int] = field(default_factory=list)

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        extra = ["--workers", str(self.workers)] if self.workers > 1 else []
        extra += ["--worker-accept", self.accept] if self.workers > 1 else []
        return {
            "envoy_bin": args.envoy_bin or find_envoy(),
            "metamesh_args": [*extra, "--max-connections", "0"],
            "envoy_concurrency": self.workers,
        }


def target_pids(setup: Setup) -> list[int]:
    """Every process of the target: worker 0 and the others from ``/server_info``."""
    t = setup.target
    assert t is not None and t.pid is not None
    if not t.is_metamesh or setup.workers == 1:
        return [t.pid]
    _, body = admin_get(t.extra["admin_port"], "/server_info")
    workers = json.loads(body)["workers"]
    assert len(workers) == setup.workers and all(w["state"] == "LIVE" for w in workers), workers
    return [int(w["pid"]) for w in workers]


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total


def summed(run: dict[str, Any], pids: list[int]) -> dict[str, Any]:
    """A loadgen result with the CPU of the target's processes (``p0``, ``p1``...) added up."""
    if "failed" in run:
        return run
    names = [f"p{i}" for i in range(len(pids))]
    cpu = [run["cpu"][n] for n in names if n in run["cpu"]]
    run["target_cpu_us_per_req"] = sum(c["us_per_req"] for c in cpu)
    run["target_sys_us_per_req"] = sum(c["sys_us_per_req"] for c in cpu)
    return run


def throughput(
    args: argparse.Namespace, setups: list[Setup], upstream: tuple[Any, int]
) -> dict[str, Any]:
    responder, _ = upstream
    out: dict[str, Any] = {}
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in setups}
        for rep in range(args.reps):
            for s in setups:
                assert s.target is not None
                watch = {f"p{i}": pid for i, pid in enumerate(s.pids)}
                watch["responder"] = responder.pid
                run = summed(run_loadgen(args.protocol, s.target.port, shape, args, watch), s.pids)
                runs[s.name].append(run)
                print(
                    f"[workers] {shape} rep {rep + 1} {s.name}: {run.get('rps')}", file=sys.stderr
                )
        out[shape] = {name: _summary(rs) for name, rs in runs.items()}
        out[shape + ":raw"] = runs
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[0].get("failed") if runs else "no runs"}
    return {
        "rps": median([r["rps"] for r in ok]),
        "p50_us": median([r["latency_us"]["p50"] for r in ok]),
        "p99_us": median([r["latency_us"]["p99"] for r in ok]),
        "cpu_us_per_req": median([r["target_cpu_us_per_req"] for r in ok]),
        "sys_us_per_req": median([r["target_sys_us_per_req"] for r in ok]),
        "errors": sum(r["errors"] + r["id_mismatches"] + r["connections_lost"] for r in ok),
        "reps": len(ok),
    }


def idle_connections(protocol: str, port: int, count: int, pids: list[int]) -> dict[str, Any]:
    """Open ``count`` connections, one request answered on each, and weigh them (see above)."""
    template, scan = request_template(protocol), reply_scanner(protocol)
    before = rss_kib(pids)
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(template.build(i + 1))
            socks.append(s)
        for i, s in enumerate(socks):
            buf = bytearray()
            while True:
                data = s.recv(65536)
                if not data:
                    raise RuntimeError(f"connection {i} closed before its reply")
                buf += data
                ids: list[int] = []
                scan(buf, ids)
                if ids:
                    break
        time.sleep(2.0)  # let the proxies settle (freed buffers, lazy work)
        after = rss_kib(pids)
    finally:
        for s in socks:
            s.close()
    return {
        "connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round((after - before) * 1024 / count),
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# workers: metamesh 1 vs 2 workers, Envoy concurrency 1 vs 2 ({report['protocol']})",
        "",
    ]
    m = report["machine"]
    lines += [
        f"Machine: {m['nproc']} cores ({m['cpu']}), load average at start {m['loadavg_at_start']}"
        f", commit {m['git_commit']}. A shared 2-core box: figures are indicative only.",
        "",
    ]
    for shape, by in report["throughput"].items():
        if shape.endswith(":raw"):
            continue
        lines += [
            f"## {shape}",
            "",
            "| target | req/s | p50 µs | p99 µs | CPU µs/req (all processes) | of which kernel "
            "| errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in by.items():
            if "failed" in s:
                lines.append(f"| {name} | failed: {s['failed']} | | | | | |")
                continue
            lines.append(
                f"| {name} | {s['rps']:,.0f} | {s['p50_us']:,.0f} | {s['p99_us']:,.0f} | "
                f"{s['cpu_us_per_req']:.2f} | {s['sys_us_per_req']:.2f} | {s['errors']} |"
            )
        lines.append("")
    if report.get("idle"):
        n = next(iter(report["idle"].values()))["connections"]
        lines += [
            f"## RSS per idle client connection ({n:,} connections)",
            "",
            "| target | RSS before MiB | RSS after MiB | bytes per connection |",
            "|---|---|---|---|",
        ]
        for name, m in report["idle"].items():
            if "failed" in m:
                lines.append(f"| {name} | failed: {m['failed']} | | |")
                continue
            lines.append(
                f"| {name} | {m['rss_before_kib'] / 1024:.1f} | {m['rss_after_kib'] / 1024:.1f} | "
                f"{m['bytes_per_connection']:,} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["thrift", "dubbo"], default="thrift")
    parser.add_argument("--shapes", default="c16k32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate-connections", type=int, default=4)
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections (0: skip)")
    parser.add_argument("--native", metavar="DIR", help="a native tree (default: build/native)")
    parser.add_argument("--envoy-bin")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every target
    kind = f"static-native@{args.native}" if args.native else "static-native"
    setups = [
        Setup("metamesh 1 worker", kind, 1),
        Setup("metamesh 2 workers (SO_REUSEPORT)", kind, 2),
        Setup("metamesh 2 workers (hand-over)", kind, 2, "handover"),
        Setup("Envoy L7 --concurrency 1", "envoy", 1),
        Setup("Envoy L7 --concurrency 2", "envoy", 2),
    ]
    with tempfile.TemporaryDirectory(prefix="metamesh-workers-bench-") as tmp:
        workdir = Path(tmp)
        prepare_native([kind], workdir)
        lifetime = 3600.0
        upstream = start_responder(args.protocol, workdir, lifetime)
        try:
            for s in setups:
                s.target = Target(s.kind, args.protocol, workdir)
                try:
                    s.target.start(upstream[1], s.options(args))
                except Unavailable as exc:
                    raise SystemExit(f"workers.py: {s.name} unavailable: {exc}") from exc
                s.pids = target_pids(s)
            report: dict[str, Any] = {
                "protocol": args.protocol,
                "argv": sys.argv,
                "machine": machine_facts([s.target for s in setups if s.target is not None]),
                "throughput": throughput(args, setups, upstream),
                "idle": {},
            }
            if args.idle:
                for s in setups:
                    assert s.target is not None
                    try:
                        report["idle"][s.name] = idle_connections(
                            args.protocol, s.target.port, args.idle, s.pids
                        )
                    except (OSError, RuntimeError) as exc:
                        report["idle"][s.name] = {"failed": str(exc), "connections": args.idle}
                    print(f"[workers] idle {s.name}: {report['idle'][s.name]}", file=sys.stderr)
        finally:
            for s in setups:
                if s.target is not None:
                    s.target.stop()
            stop_process(upstream[0])
    text = render(report)
    print(text)
    if not args.no_save:
        save_results(f"workers-{args.protocol}", text, report)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
