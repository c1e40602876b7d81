"""Side-by-side benchmark: direct vs metamesh vs Envoy L7 vs Envoy tcp_proxy, in one run.

Usage (after ``benchmarks/setup.sh``)::

    .venv/bin/python benchmarks/compare.py --protocol thrift --shapes c4k32,c16k1,r20000,r5000

One responder (``benchmarks/responder.py``) is the upstream for every target; every target
(``benchmarks/targets.py``) is started once and checked with a few requests whose reply ids must
match. Then, for each load shape, the targets are measured interleaved (A B C D A B C D ...) for
``--reps`` repetitions, each measurement a fresh ``benchmarks/loadgen.py`` process (warm-up, then
a window) that also reads the proxy's and the responder's CPU time at the window's edges. Medians
over the repetitions go into a Markdown table (printed, and saved under ``benchmarks/results/``
with the command line, date and machine facts) and a JSON file next to it.

``--alternate SECONDS`` measures the targets together instead: each repetition is one load
generator (``loadgen.py --alternate``) whose load takes turns of SECONDS between the targets
until each has had its window, so that they share the machine's ups and downs. The column "CPU
vs first" is each target's proxy CPU per request over the first proxy target's in the same
repetition, median (lowest..highest): the number for "what does this change cost" when a
single run of this box swings a cell by 15 points (see benchmarks/README.md, "Paired runs").

metamesh is measured the ways it is deployed (``static-*``: ``proxy --config``; ``xds-*``:
``control-plane`` + ``proxy --xds``; ``up-*``: ``up DIR``), each on the pure or the native build
and each checked to serve the same config; the machine facts and the JSON's ``targets`` record
the build and event loop every metamesh proxy reported on its ``/server_info``.

Columns: req/s completed in the window; p50/p99 latency as the load generator saw it; the same
minus the direct path's (latency the proxy adds); the proxy process's CPU time (utime+stime, all
threads) per completed request -- the number to compare on a noisy shared box.

Everything binds to 127.0.0.1 on fresh ports; every child dies with this process (its own
session, PDEATHSIG) and is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import parse_shape
from benchmarks.targets import (
    DEFAULT_TARGETS,
    ROOT,
    TARGET_KINDS,
    Target,
    Unavailable,
    canonical_kind,
    die_with_parent,
    find_envoy,
    prepare_native,
    python_facts,
    spans_received,
    spawn,
    stop_process,
)

HERE = Path(__file__).resolve().parent
NA = "\u2013"  # en dash: "no value" in the table


T = TypeVar("T")


def start_responder(protocol: str, workdir: Path, lifetime: float) -> tuple[Any, int]:
    log = workdir / f"responder-{protocol}.log"
    script = str(HERE / "responder.py")
    proc = spawn(
        [sys.executable, script, "--protocol", protocol, "--max-seconds", str(lifetime)], log
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("PORT "):
                return proc, int(line.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"responder exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("responder did not report its port")


def run_loadgen(
    protocol: str, port: int, shape: str, args: argparse.Namespace, watch: dict[str, int]
) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--protocol", protocol, "--port", str(port)]
    cmd += ["--shape", shape, "--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--rate-connections", str(args.rate_connections)]
    return _loadgen_json(cmd, watch, args.warmup + args.duration + 60)


def _loadgen_json(cmd: list[str], watch: dict[str, int], timeout: float) -> dict[str, Any]:
    """Run ``loadgen.py`` (``cmd`` plus the ``--watch`` options): its JSON, with ``failed``
    set when it exited non-zero, or only ``failed`` when it printed none."""
    for name, pid in watch.items():
        cmd = [*cmd, "--watch", f"{name}={pid}"]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=die_with_parent
    )
    try:
        result: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError:
        return {"failed": f"loadgen exit {run.returncode}: {run.stderr.strip()[-500:]}"}
    if run.returncode != 0:
        result["failed"] = f"loadgen exit {run.returncode}"
    return result


def run_loadgen_alternating(
    protocol: str,
    targets: list[Target],
    shape: str,
    args: argparse.Namespace,
    watch: dict[str, int],
) -> dict[str, dict[str, Any]]:
    """One ``loadgen.py --alternate`` run over ``targets`` (in this order): {label: result}."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--protocol", protocol, "--shape", shape]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--rate-connections", str(args.rate_connections), "--alternate", str(args.alternate)]
    for t in targets:
        cmd += ["--side", f"{t.label}={t.port}" + (f":{t.pid}" if t.pid is not None else "")]
    out = _loadgen_json(cmd, watch, len(targets) * (args.warmup + args.duration) + 60)
    results: dict[str, dict[str, Any]] | None = out.get("alternating")
    if results is None:
        return {t.label: {"failed": out.get("failed", "no results")} for t in targets}
    if "failed" in out:
        for result in results.values():
            result["failed"] = out["failed"]
    return results


def paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each target's proxy CPU per request over the first proxy target's (``direct`` has no
    proxy), repetition by repetition (the two measured side by side: the same turns when
    alternating, neighbouring windows otherwise): median, lowest and highest ratio."""

    def cpu(r: dict[str, Any]) -> float | None:
        if "failed" in r or "proxy" not in r.get("cpu", {}):
            return None
        value = r["cpu"]["proxy"]["us_per_req"]
        return value if value == value and value > 0 else None

    labels = [label for label, rs in runs.items() if any(cpu(r) is not None for r in rs)]
    if len(labels) < 2:
        return {}
    base = labels[0]
    found: dict[str, dict[str, Any]] = {}
    for label in labels[1:]:
        ratios = []
        for mine, theirs in zip(runs[label], runs[base], strict=False):
            a, b = cpu(mine), cpu(theirs)
            if a is not None and b is not None:
                ratios.append(a / b)
        if ratios:
            found[label] = {
                "base": base,
                "median": round(statistics.median(ratios), 4),
                "low": round(min(ratios), 4),
                "high": round(max(ratios), 4),
                "reps": len(ratios),
            }
    return found


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    summary: dict[str, Any] = {"reps": len(runs), "failed_reps": len(runs) - len(ok)}
    if not ok:
        summary["failed"] = runs[0].get("failed", "no runs") if runs else "no runs"
        return summary
    summary["rps"] = median([r["rps"] for r in ok])
    summary["p50_us"] = median([r["latency_us"]["p50"] for r in ok])
    summary["p99_us"] = median([r["latency_us"]["p99"] for r in ok])
    for who in ("proxy", "responder", "loadgen"):
        if who in ok[0]["cpu"]:
            summary[f"{who}_cpu_us_per_req"] = median([r["cpu"][who]["us_per_req"] for r in ok])
            kernel = [r["cpu"][who].get("sys_us_per_req") for r in ok]
            if None not in kernel:
                summary[f"{who}_sys_us_per_req"] = median(kernel)
    calls = [r.get("calls", {}).get("proxy") for r in ok]
    if calls and None not in calls:
        for key in ("reads_per_req", "writes_per_req", "sleeps_per_req", "preempts_per_req"):
            summary[f"proxy_{key}"] = median([c[key] for c in calls])
    summary["errors"] = sum(r["errors"] for r in ok)
    summary["id_mismatches"] = sum(r["id_mismatches"] for r in ok)
    summary["connections_lost"] = sum(r["connections_lost"] for r in ok)
    summary["not_sent"] = sum(r["not_sent"] for r in ok)
    offered = ok[0].get("offered_rps")
    if offered and summary["rps"] < 0.97 * offered:
        summary["below_offered_rate"] = f"{summary['rps'] / offered:.0%} of {offered:,.0f}/s"
    cx = [r["upstream_cx_opened"] for r in ok if "upstream_cx_opened" in r]
    if cx:
        summary["upstream_cx_opened"] = max(cx)
    return summary


def machine_facts(targets: list[Target]) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    facts |= python_facts()
    for t in targets:
        if t.kind.startswith("envoy") and t.version:
            facts["envoy"] = t.version
        if (t.is_metamesh or t.kind.startswith("floor")) and t.version:
            facts[t.kind] = t.describe()
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    facts["git_commit"] = git.stdout.strip() or "unknown"
    built_from = ["src", "setup.py", "pyproject.toml"]
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", *built_from],
        capture_output=True,
        text=True,
    )
    if dirty.stdout.strip():  # the pure targets and the native build run the working tree
        facts["git_commit"] += " + uncommitted changes to src/setup.py/pyproject.toml"
    return facts


def target_facts(t: Target) -> dict[str, Any]:
    """What the JSON report keeps about a target: kind, version, measured pid, and what its
    start found (for metamesh: /server_info's build and loop, the config check)."""
    keep = ("server_info", "config_check", "control_plane_pid", "base_id", "spans_received")
    facts = {"kind": t.kind, "version": t.version, "pid": t.pid, "port": t.port}
    return facts | {k: t.extra[k] for k in keep if k in t.extra}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return NA
    return f"{value:,.{digits}f}"


def _vs_first(p: dict[str, Any] | None) -> str:
    if not p:
        return NA

    def pct(r: float) -> str:
        return f"{(r - 1) * 100:+.1f}%"

    return f"{pct(p['median'])} ({pct(p['low'])}..{pct(p['high'])})"


def _syscalls(s: dict[str, Any]) -> str:
    """Read + write system calls per request, as "total (reads + writes)"."""
    reads, writes = s.get("proxy_reads_per_req"), s.get("proxy_writes_per_req")
    if reads is None or writes is None:
        return NA
    return f"{reads + writes:.2f} ({reads:.2f} + {writes:.2f})"


def _switches(s: dict[str, Any]) -> str:
    sleeps, preempts = s.get("proxy_sleeps_per_req"), s.get("proxy_preempts_per_req")
    if sleeps is None or preempts is None:
        return NA
    return f"{sleeps:.2f} / {preempts:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    facts = report["machine"]
    lines = [
        f"# {report['protocol']}: direct vs metamesh vs Envoy ({report['date']})",
        "",
        f"Command: `{report['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()),
        "",
        f"Method: warm-up {report['warmup_s']} s, window {report['duration_s']} s, "
        f"{report['reps']} interleaved repetition(s), medians; one responder for all targets; "
        + (
            f"each repetition one load generator, the targets taking turns of "
            f"{report['alternate_s']:g} s (every target {report['duration_s']} s in all); "
            if report.get("alternate_s")
            else ""
        )
        + "CPU vs first = proxy CPU per request over the first proxy's in the same repetition, "
        "median (lowest..highest) over the repetitions; "
        "proxy CPU = utime+stime (all threads) over the window / requests completed in it; "
        "of which kernel = its stime share (socket syscalls, the TCP stack over loopback); "
        "proxy syscalls/req = its read + write system calls (/proc/PID/io) per request; "
        "sleeps / preempts per req = its voluntary / involuntary context switches.",
        "",
        "| load | target | req/s | p50 µs | p99 µs | +p50 µs | +p99 µs | proxy CPU µs/req "
        "| of which kernel | CPU vs first | proxy syscalls/req | sleeps / preempts per req "
        "| responder µs/req | loadgen µs/req | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, rows in report["results"].items():
        direct = rows.get("direct", {})
        paired = report.get("paired", {}).get(shape, {})
        for label, s in rows.items():
            if "failed" in s:
                lines.append(f"| {shape} | {label} |" + f" {NA} |" * 12 + f" {s['failed']} |")
                continue
            add50 = s["p50_us"] - direct["p50_us"] if "p50_us" in direct else None
            add99 = s["p99_us"] - direct["p99_us"] if "p99_us" in direct else None
            notes = []
            for key in ("errors", "id_mismatches", "connections_lost", "not_sent", "failed_reps"):
                if s.get(key):
                    notes.append(f"{key} {s[key]}")
            if "below_offered_rate" in s:
                notes.append(f"fell behind: {s['below_offered_rate']}")
            if "upstream_cx_opened" in s:
                notes.append(f"new upstream conns {s['upstream_cx_opened']}")
            lines.append(
                f"| {shape} | {label} | {_fmt(s['rps'])} | {_fmt(s['p50_us'])} "
                f"| {_fmt(s['p99_us'])} | {_fmt(add50) if label != 'direct' else NA} "
                f"| {_fmt(add99) if label != 'direct' else NA} "
                f"| {_fmt(s.get('proxy_cpu_us_per_req'), 2)} "
                f"| {_fmt(s.get('proxy_sys_us_per_req'), 2)} "
                f"| {_vs_first(paired.get(label))} "
                f"| {_syscalls(s)} | {_switches(s)} "
                f"| {_fmt(s.get('responder_cpu_us_per_req'), 2)} "
                f"| {_fmt(s.get('loadgen_cpu_us_per_req'), 2)} | {'; '.join(notes)} |"
            )
    if report["unavailable"]:
        lines += ["", "Unavailable targets:", ""]
        lines += [f"- {k}: {v}" for k, v in report["unavailable"].items()]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, workdir: Path, children: list[Any]) -> dict[str, Any]:
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        parse_shape(s)  # fail fast on a typo
    kinds = [canonical_kind(k.strip()) for k in args.targets.split(",") if k.strip()]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise SystemExit(f"compare.py: target(s) given twice (aliases count): {', '.join(twice)}")
    prepare_native(kinds, workdir)
    per_run = args.warmup + args.duration + 3
    lifetime = len(shapes) * len(kinds) * args.reps * per_run + 300
    responder, upstream_port = start_responder(args.protocol, workdir, lifetime)
    children.append(responder)

    options = {
        "envoy_bin": args.envoy_bin or find_envoy(),
        "metamesh_bin": args.metamesh_bin,
        "metamesh_config": args.metamesh_config,
        "metamesh_args": shlex.split(args.metamesh_args or ""),
    }
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    for kind in kinds:
        target = Target(kind, args.protocol, workdir)
        children.append(target)
        try:
            target.start(upstream_port, options)
        except Unavailable as exc:
            unavailable[target.label] = str(exc).strip().replace("\n", " ")[:500]
            target.stop()
            print(f"[bench] {target.label}: unavailable: {exc}", file=sys.stderr)
            continue
        print(f"[bench] {target.label}: ready on port {target.port}", file=sys.stderr)
        targets.append(target)

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for shape in shapes:
        raw[shape] = {t.label: [] for t in targets}
        for rep in range(args.reps):
            order = rotated(targets, rep)
            together = args.alternate > 0 and len(targets) > 1  # one loadgen for them all
            cx0 = {t.label: _upstream_cx(t) for t in order} if together else {}
            results = (
                run_loadgen_alternating(
                    args.protocol, order, shape, args, {"responder": responder.pid}
                )
                if together
                else {}
            )
            for t in order:
                if together:
                    result = results[t.label]
                else:
                    watch = {"responder": responder.pid}
                    if t.pid is not None:
                        watch["proxy"] = t.pid
                    cx0[t.label] = _upstream_cx(t)
                    result = run_loadgen(args.protocol, t.port, shape, args, watch)
                cx1 = _upstream_cx(t)
                if cx0[t.label] is not None and cx1 is not None:
                    result["upstream_cx_opened"] = cx1 - cx0[t.label]
                raw[shape][t.label].append(result)
                print(
                    f"[bench] {shape} rep {rep + 1}/{args.reps} {t.label}"
                    f"{' (alternating)' if together else ''}: {_brief(result)}",
                    file=sys.stderr,
                )
    if any(t.extra.get("span_counts") for t in targets):
        time.sleep(1.5)  # the sinks write their counts once a second
    for t in targets:
        spans = spans_received(t)
        if spans is not None:  # a traced target that exported nothing measured nothing
            t.extra["spans_received"] = spans
    return {
        "protocol": args.protocol,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "reps": args.reps,
        "machine": machine_facts(targets),
        "targets": {t.label: target_facts(t) for t in targets},
        "unavailable": unavailable,
        "alternate_s": args.alternate if len(targets) > 1 else 0.0,
        "results": {s: {label: summarize(rs) for label, rs in by.items()} for s, by in raw.items()},
        "paired": {s: paired_ratios(by) for s, by in raw.items()},
        "runs": raw,
    }


def rotated(targets: list[T], rep: int) -> list[T]:
    """The order of repetition ``rep``: each starts one target later (A B C, B C A, C A B...),
    so that no target always runs in the same slot (after the same neighbour, at the same
    point of the box's load cycle)."""
    turn = rep % len(targets) if targets else 0
    return targets[turn:] + targets[:turn]


def _upstream_cx(t: Target) -> int | None:
    if not t.kind.startswith("envoy"):
        return None
    try:
        return t.envoy_stats("cluster.upstream.upstream_cx_total").get(
            "cluster.upstream.upstream_cx_total"
        )
    except OSError:
        return None


def _brief(r: dict[str, Any]) -> str:
    if "failed" in r and "rps" not in r:
        return r["failed"]
    cpu = r["cpu"].get("proxy", {}).get("us_per_req")
    return (
        f"{r['rps']:,.0f} req/s p50 {r['latency_us']['p50']:.0f} p99 "
        f"{r['latency_us']['p99']:.0f} µs proxy {cpu} µs/req"
        + (f" [{r['failed']}]" if "failed" in r else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["thrift", "dubbo"], default="thrift")
    parser.add_argument("--shapes", default="c4k32,c16k1,r20000,r5000")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma list of {', '.join(TARGET_KINDS)}, <mode>-native@DIR (a native tree"
        " built elsewhere, for A/B runs); metamesh and metamesh-native[@DIR] are static-pure"
        " and static-native[@DIR]",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--alternate",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="measure the targets together: one load generator per repetition, the targets"
        " taking turns of SECONDS (1 is a good choice) until each has had --duration; for"
        " differences of a few percent on a noisy machine (default 0: one window per target)",
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate-connections", type=int, default=4)
    parser.add_argument("--envoy-bin", help="Envoy binary (default: from .venv-envoy)")
    parser.add_argument("--metamesh-bin", help="metamesh executable (default: .venv/bin/metamesh)")
    parser.add_argument(
        "--metamesh-config",
        help="string.Template YAML with ${listen_port} ${upstream_port} ${protocol}"
        " for the static-* targets (default: generated)",
    )
    parser.add_argument(
        "--metamesh-args", help="extra arguments for the measured metamesh process (proxy or up)"
    )
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    command = shlex.join(
        [
            Path(sys.executable).relative_to(ROOT).as_posix()
            if Path(sys.executable).is_relative_to(ROOT)
            else sys.executable,
            "benchmarks/compare.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="metamesh-bench-"))
    children: list[Any] = []
    started = datetime.datetime.now().astimezone()
    try:
        report = measure(args, workdir, children)
    except KeyboardInterrupt:
        print("[bench] interrupted", file=sys.stderr)
        return 130
    finally:
        for child in reversed(children):
            child.stop() if isinstance(child, Target) else stop_process(child)
        if args.keep_workdir:
            print(f"[bench] configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"command": command, "date": started.isoformat(timespec="seconds")} | report
    markdown = render_markdown(report)
    print(markdown)
    if not args.no_save:
        out = Path(args.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{started:%Y-%m-%d-%H%M%S}-{args.protocol}"
        (out / f"{stem}.md").write_text(markdown)
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"[bench] wrote {out / stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
