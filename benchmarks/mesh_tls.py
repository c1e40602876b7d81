"""Two hops with mutual TLS: metamesh's outbound + inbound proxies against two Envoys (issue 16).

Usage (after ``benchmarks/setup.sh``; the measured part under the benchmark lock)::

    flock /tmp/metamesh-bench.lock .venv/bin/python benchmarks/mesh_tls.py --protocol thrift

The path is client -> client-side proxy -> mutual TLS -> server-side proxy -> responder for
every target (``benchmarks/mesh_tls_targets.py``): metamesh as deployed in a mesh (control
plane with its CA, two ``proxy --xds`` with workload certificates), two Envoys with Envoy's own
filter for the protocol on both hops (``envoy``) and two Envoys with tcp_proxy (``envoy-tcp``),
all with ECDSA P-256 certificates from one mesh root; ``direct`` (no proxy) gives the latency
baseline. Two measurements, each interleaved across the targets for ``--reps``:

- **requests**: ``loadgen.py`` at each shape, as ``compare.py`` runs it; the CPU of both proxy
  processes is read at the window's edges and summed per completed request ("two-hop CPU");
- **handshakes**: ``openssl s_time -new`` (a real TLS client, a fresh TCP connection and full
  handshake each time, with a mesh client certificate) against the server side's mTLS port for
  ``--handshake-seconds``: handshakes per second, and the server process's CPU per handshake,
  divided by the handshakes that server itself counted as completed (metamesh
  ``metamesh_tls_handshakes_total``, Envoy ``listener.*.ssl.handshake``).

A Markdown table is printed and, unless ``--no-save``, written with its JSON (every repetition)
to ``benchmarks/results/<date>-<time>-mesh-tls-<protocol>.{md,json}``. Every process binds to
127.0.0.1 (the server workload's inbound listeners to 127.0.31.9) on fresh ports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import median, run_loadgen, start_responder
from benchmarks.loadgen import process_user_sys_seconds
from benchmarks.mesh_tls_targets import KINDS, OPT_IN, MeshCa, TwoHop, start
from benchmarks.processes import Unavailable, stop_process
from benchmarks.targets import probe

HERE = Path(__file__).resolve().parent
NA = "\u2013"
SIDES = ("client", "server")


def counter(admin: int, kind: str) -> int:
    """Handshakes the server side counted as completed (its own stats)."""
    if kind == "metamesh":
        url = f"http://127.0.0.1:{admin}/stats/prometheus"
        pattern = r"^metamesh_tls_handshakes_total (\S+)$"
    else:
        url = f"http://127.0.0.1:{admin}/stats?filter=ssl.handshake$"
        pattern = r"^listener\.127\.0\.0\.1_\d+\.ssl\.handshake: (\d+)$"
    with urllib.request.urlopen(url, timeout=5) as r:
        found = re.search(pattern, r.read().decode(), re.M)
    return int(float(found[1])) if found else 0


def local_replies(target: TwoHop) -> dict[str, dict[str, int]]:
    """metamesh only: the requests each proxy answered itself so far, by reason (what an
    error reply in the table was)."""
    found: dict[str, dict[str, int]] = {}
    for side in SIDES:
        url = f"http://127.0.0.1:{target.admin[side]}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        pattern = r'^metamesh_local_replies_total\{reason="([^"]+)"\} (\S+)$'
        counts = {m[1]: int(float(m[2])) for m in re.finditer(pattern, text, re.M)}
        found[side] = {k: v for k, v in counts.items() if v}
    return found


def envoy_connections(target: TwoHop) -> int:
    """Envoy only: upstream connections the client Envoy opened so far (each one a TLS
    handshake on the mesh hop; Envoy's L7 filters hold one per request in flight)."""
    url = f"http://127.0.0.1:{target.admin['client']}/stats?filter=^cluster.upstream.upstream_cx_total$"
    with urllib.request.urlopen(url, timeout=5) as r:
        found = re.search(r": (\d+)", r.read().decode())
    return int(found[1]) if found else 0


def handshakes(target: TwoHop, ca: MeshCa, seconds: int) -> dict[str, Any]:
    """``openssl s_time -new`` against the server side for ``seconds``."""
    cert, key = ca.directory / "sleep.pem", ca.directory / "sleep.key"
    host, port = target.tls
    cmd = ["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-time", str(seconds)]
    cmd += ["-cert", str(cert), "-key", str(key), "-CAfile", str(ca.root)]
    server = target.procs["server"].pid
    before, done0 = process_user_sys_seconds(server), counter(target.admin["server"], target.kind)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.perf_counter() - t0
    after, done1 = process_user_sys_seconds(server), counter(target.admin["server"], target.kind)
    found = re.search(r"(\d+) connections in ([\d.]+) real seconds", run.stdout)
    if run.returncode != 0 or found is None:
        return {"failed": f"s_time exit {run.returncode}: {(run.stderr or run.stdout)[-300:]}"}
    connections, real = int(found[1]), float(found[2])
    completed = done1 - done0
    used = sum(after) - sum(before)
    return {
        "s_time_connections": connections,
        "s_time_real_s": real,
        "wall_s": round(wall, 3),
        "per_s": round(connections / real, 1) if real else 0.0,
        "server_completed": completed,
        "server_cpu_s": round(used, 4),
        "server_us_per_handshake": round(used * 1e6 / completed, 1) if completed else None,
    }


def two_hop(result: dict[str, Any]) -> None:
    """Add the summed client + server CPU per request to one loadgen result."""
    if "failed" in result or not all(s in result["cpu"] for s in SIDES):
        return
    cpu = result["cpu"]
    result["two_hop_us_per_req"] = round(sum(cpu[s]["us_per_req"] for s in SIDES), 3)
    result["two_hop_sys_us_per_req"] = round(sum(cpu[s]["sys_us_per_req"] for s in SIDES), 3)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    out: dict[str, Any] = {"reps": len(runs), "failed_reps": len(runs) - len(ok)}
    if not ok:
        out["failed"] = runs[0].get("failed", "no runs") if runs else "no runs"
        return out
    out["rps"] = median([r["rps"] for r in ok])
    out["p50_us"] = median([r["latency_us"]["p50"] for r in ok])
    out["p99_us"] = median([r["latency_us"]["p99"] for r in ok])
    for side in SIDES:
        if side in ok[0]["cpu"]:
            out[f"{side}_us"] = median([r["cpu"][side]["us_per_req"] for r in ok])
    if "two_hop_us_per_req" in ok[0]:
        out["two_hop_us"] = median([r["two_hop_us_per_req"] for r in ok])
        out["two_hop_sys_us"] = median([r["two_hop_sys_us_per_req"] for r in ok])
    for key in ("errors", "id_mismatches", "connections_lost", "not_sent"):
        out[key] = sum(r[key] for r in ok)
    if "new_upstream_conns" in ok[0]:
        out["new_upstream_conns"] = median([r["new_upstream_conns"] for r in ok])
    offered = ok[0].get("offered_rps")
    if offered and out["rps"] < 0.97 * offered:
        out["fell_behind"] = f"fell behind: {out['rps'] / offered:.0%} of {offered:,.0f}/s"
    return out


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return NA
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}"


def request_table(shapes: list[str], labels: dict[str, str], results: dict[str, Any]) -> str:
    lines = [
        "| load | target | req/s | p50 µs | p99 µs | client-side CPU µs/req | server-side CPU "
        "µs/req | two-hop CPU µs/req (kernel) | vs Envoy L7 | vs Envoy L4 | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in shapes:
        envoy = results[shape].get("envoy", {}).get("two_hop_us")
        tcp = results[shape].get("envoy-tcp", {}).get("two_hop_us")
        for kind, label in labels.items():
            s = results[shape].get(kind)
            if s is None:
                continue
            if "failed" in s:
                lines.append(f"| {shape} | {label} | {NA} | | | | | | | | failed: {s['failed']} |")
                continue
            ratio = l4 = NA
            if envoy and s.get("two_hop_us") and kind != "envoy":
                ratio = f"{s['two_hop_us'] / envoy:.2f}x"
            if tcp and s.get("two_hop_us") and kind not in ("envoy-tcp", "direct"):
                l4 = f"{s['two_hop_us'] / tcp:.2f}x"
            counted = ("errors", "id_mismatches", "connections_lost", "not_sent")
            notes = [f"{k.replace('_', ' ')} {s[k]}" for k in counted if s.get(k)]
            notes += [s["fell_behind"]] if "fell_behind" in s else []
            if s.get("new_upstream_conns") is not None:
                notes.append(f"new upstream conns {s['new_upstream_conns']:,.0f}")
            if s.get("failed_reps"):
                notes.append(f"{s['failed_reps']} failed reps")
            two = s.get("two_hop_us")
            hop = f"{fmt(two)} ({fmt(s.get('two_hop_sys_us'))})" if two is not None else NA
            lines.append(
                f"| {shape} | {label} | {fmt(s['rps'], 0)} | {fmt(s['p50_us'], 0)} | "
                f"{fmt(s['p99_us'], 0)} | {fmt(s.get('client_us'))} | {fmt(s.get('server_us'))} "
                f"| {hop} | {ratio} | {l4} | {'; '.join(notes)} |"
            )
    return "\n".join(lines)


def handshake_table(labels: dict[str, str], results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| target (server side) | handshakes/s (s_time) | completed by the server | "
        "server CPU µs/handshake | vs Envoy L7 |",
        "|---|---|---|---|---|",
    ]
    envoy = median([r["server_us_per_handshake"] for r in results.get("envoy", [])
                    if r.get("server_us_per_handshake")])  # fmt: skip
    for kind, label in labels.items():
        runs = [r for r in results.get(kind, []) if "failed" not in r]
        if kind not in results:
            continue
        if not runs:
            failed = results[kind][0].get("failed") if results[kind] else "no runs"
            lines.append(f"| {label} | {NA} | | | failed: {failed} |")
            continue
        cpu = median([r["server_us_per_handshake"] for r in runs if r["server_us_per_handshake"]])
        ratio = f"{cpu / envoy:.2f}x" if envoy == envoy and kind != "envoy" else NA
        lines.append(
            f"| {label} | {fmt(median([r['per_s'] for r in runs]), 0)} | "
            f"{sum(r['server_completed'] for r in runs):,} of "
            f"{sum(r['s_time_connections'] for r in runs):,} | {fmt(cpu, 0)} | {ratio} |"
        )
    return "\n".join(lines)


def machine(targets: list[TwoHop]) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE.parent).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True,
                           text=True, cwd=HERE.parent).stdout.strip()  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "?")  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "openssl": subprocess.run(
            ["openssl", "version"], capture_output=True, text=True
        ).stdout.strip(),
        "git_commit": commit + (" (src/ has uncommitted changes)" if dirty else ""),
        "targets": {t.kind: t.version for t in targets},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=["thrift", "dubbo"], required=True)
    p.add_argument("--shapes", default="c4k32,c16k1,r20000,r5000")
    p.add_argument("--targets", default="direct," + ",".join(KINDS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate-connections", type=int, default=4)
    p.add_argument("--handshake-seconds", type=int, default=5, help="0: skip handshakes")
    p.add_argument(
        "--build",
        default="native",
        help="native (build/native, rebuilt if stale), pure, or native@DIR (built elsewhere)",
    )
    p.add_argument("--envoy-bin")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    if args.build not in ("native", "pure") and not args.build.startswith("native@"):
        p.error(f"--build {args.build}: native, pure or native@DIR")
    shapes = [s for s in args.shapes.split(",") if s]
    kinds = [k for k in args.targets.split(",") if k]
    for k in kinds:
        if k != "direct" and k not in KINDS + OPT_IN:
            p.error(f"unknown target {k!r}; known: direct, {', '.join(KINDS + OPT_IN)}")
    workdir = Path(tempfile.mkdtemp(prefix="mesh-tls-bench-"))
    ca = MeshCa(workdir / "ca")
    ca.issue("client-ns", "sleep")  # s_time's client certificate
    per = args.warmup + args.duration + 2
    lifetime = len(shapes) * len(kinds) * args.reps * per + 4 * args.handshake_seconds * 10 + 600
    responder, upstream = start_responder(args.protocol, workdir, lifetime)
    targets: list[TwoHop] = []
    unavailable: dict[str, str] = {}
    try:
        for kind in kinds:
            if kind == "direct":
                continue
            target = TwoHop(kind, args.protocol, workdir)
            try:
                start(target, ca, upstream, {"build": args.build, "envoy_bin": args.envoy_bin})
                probe(args.protocol, target.port)
                targets.append(target)
            except (Unavailable, OSError) as exc:
                target.stop()
                unavailable[kind] = str(exc)
                print(f"{kind}: unavailable: {exc}", file=sys.stderr)
        labels = {"direct": "direct"} if "direct" in kinds else {}
        labels |= {t.kind: t.label for t in targets}
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for shape in shapes:
            raw[shape] = {k: [] for k in labels}
            for rep in range(args.reps):
                for kind in labels:
                    target = next((t for t in targets if t.kind == kind), None)
                    watch = {"responder": responder.pid}
                    if target is not None:
                        target.check_alive()
                        watch |= target.pids()
                    port = target.port if target is not None else upstream
                    envoy = target is not None and target.kind.startswith("envoy")
                    conns = envoy_connections(target) if envoy else 0
                    result = run_loadgen(args.protocol, port, shape, args, watch)
                    two_hop(result)
                    if envoy:
                        result["new_upstream_conns"] = envoy_connections(target) - conns
                    if target is not None and target.kind.startswith("metamesh"):
                        result["local_replies"] = local_replies(target)
                    raw[shape][kind].append(result)
                    cpu = result.get("two_hop_us_per_req", "-")
                    line = f"{shape} rep {rep + 1} {kind}: {result.get('rps')} req/s, {cpu} µs/req"
                    print(line, file=sys.stderr)
        summary = {shape: {k: summarize(v) for k, v in raw[shape].items()} for shape in shapes}
        shakes: dict[str, list[dict[str, Any]]] = {}
        if args.handshake_seconds > 0:
            for _ in range(args.reps):
                for target in targets:
                    if not target.tls[1]:  # a plaintext floor
                        continue
                    result = handshakes(target, ca, args.handshake_seconds)
                    shakes.setdefault(target.kind, []).append(result)
                    print(f"handshakes {target.kind}: {result}", file=sys.stderr)
        facts = machine(targets)
    finally:
        for target in targets:
            target.stop()
        stop_process(responder)
    command = "flock /tmp/metamesh-bench.lock .venv/bin/python benchmarks/mesh_tls.py " + (
        shlex.join(argv if argv is not None else sys.argv[1:])
    )
    now = datetime.datetime.now(datetime.UTC)
    text = [
        f"# Two hops with mutual TLS, {args.protocol}: {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"`{command}`",
        "",
        "Figures from a shared 2-core machine with other work running beside the benchmark: "
        "compare targets within this run, not across runs.",
        "",
        request_table(shapes, labels, summary),
        "",
    ]
    replies = {
        shape: runs[-1]["local_replies"]
        for shape, kinds in raw.items()
        for runs in [kinds.get("metamesh", [])]
        if runs and runs[-1].get("local_replies")
    }
    if any(any(sides.values()) for sides in replies.values()):
        text += ["metamesh's local replies (cumulative, by proxy and reason) after each shape: "
                 + json.dumps(replies), ""]  # fmt: skip
    if shakes:
        text += [handshake_table({t.kind: t.label for t in targets}, shakes), ""]
    if unavailable:
        text += ["Unavailable targets:", ""] + [f"- {k}: {v}" for k, v in unavailable.items()]
        text.append("")
    text += ["Machine: " + json.dumps(facts), ""]
    markdown = "\n".join(text)
    print(markdown)
    if not args.no_save:
        out = HERE / "results" / f"{now:%Y-%m-%d-%H%M%S}-mesh-tls-{args.protocol}"
        out.with_suffix(".md").write_text(markdown)
        data = {"command": command, "machine": facts, "requests": raw, "summary": summary,
                "handshakes": shakes, "unavailable": unavailable}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
        print(f"saved {out}.md and .json", file=sys.stderr)
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
