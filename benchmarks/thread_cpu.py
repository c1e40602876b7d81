"""Per-thread CPU and wake-ups of a proxy under load: where a feature's cost lands.

``compare.py`` charges a target the CPU of its whole process; this tool splits it by thread,
to tell a feature's work on the proxy loop from the work of threads beside it (an exporter, a
library's pollers) and from the context switches they cause. It starts the targets as
``compare.py`` does (same kinds and ``+VARIANT`` suffixes, one responder), runs ``loadgen.py``
at one shape for each target in turn (each repetition starting one target later, as
``compare.py`` rotates them), and reads ``/proc/PID/task/*/stat`` (user and system ticks) and
``status`` (voluntary and involuntary context switches) of the proxy process around each
window. One line per repetition and target::

    rep 0 static-native@DIR+tracing 4.16 us/req, 12 threads: metamesh 462+160t 6603v/4585i ...

(``user+system ticks``, ``v``oluntary / ``i``nvoluntary switches, per thread that moved; a
tick is 10 ms). Example, issue 19's exporter (``docs/telemetry.md``)::

    flock /tmp/metamesh-bench.lock .venv/bin/python benchmarks/thread_cpu.py --protocol dubbo \\
      --shape c4k32 --duration 6 --reps 5 \\
      --targets static-native@OLD,static-native@OLD+tracing,static-native@NEW+tracing

Linux only (``/proc``); nothing is saved, the figures are for reading next to a ``compare.py``
run, not instead of one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import rotated, run_loadgen, start_responder
from benchmarks.processes import stop_process
from benchmarks.targets import Target

#: thread id -> (name, user ticks, system ticks, voluntary switches, involuntary switches)
Threads = dict[str, tuple[str, int, int, int, int]]


def threads(pid: int) -> Threads:
    """Every thread of ``pid`` now (threads that exit while being read are left out)."""
    out: Threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = {
            k: int(v)
            for k, _, v in (line.partition(":") for line in status.splitlines())
            if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
        }
        out[tid] = (
            name,
            int(fields[11]),  # utime (field 14 of stat)
            int(fields[12]),  # stime
            switches.get("voluntary_ctxt_switches", 0),
            switches.get("nonvoluntary_ctxt_switches", 0),
        )
    return out


def moved(before: Threads, after: Threads) -> list[str]:
    """``name user+systemt voluntaryv/involuntaryi`` for each thread that moved in between."""
    rows = []
    for tid, (name, user, system, vol, invol) in after.items():
        _, u0, s0, v0, i0 = before.get(tid, (name, 0, 0, 0, 0))
        delta = (user - u0, system - s0, vol - v0, invol - i0)
        if any(delta):
            rows.append(f"{name} {delta[0]}+{delta[1]}t {delta[2]}v/{delta[3]}i")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--protocol", choices=["dubbo", "thrift"], default="dubbo")
    p.add_argument("--shape", default="c4k32")
    p.add_argument("--targets", required=True, help="compare.py target kinds, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--rate-connections", type=int, default=4)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="thread-cpu-"))
    lifetime = 600 + args.reps * len(args.targets.split(",")) * (args.warmup + args.duration + 5)
    responder, upstream = start_responder(args.protocol, workdir, lifetime)
    targets: list[Target] = []
    options = {"envoy_bin": None, "metamesh_bin": None, "metamesh_config": None}
    try:
        for kind in (k.strip() for k in args.targets.split(",") if k.strip()):
            target = Target(kind, args.protocol, workdir)
            targets.append(target)
            target.start(upstream, {**options, "metamesh_args": []})
        load = types.SimpleNamespace(
            warmup=args.warmup, duration=args.duration, rate_connections=args.rate_connections
        )
        for rep in range(args.reps):
            for target in rotated(targets, rep):
                assert target.pid is not None, f"{target.label}: no proxy process to read"
                before = threads(target.pid)
                result = run_loadgen(args.protocol, target.port, args.shape, load,
                                     {"proxy": target.pid})  # fmt: skip
                after = threads(target.pid)
                if "failed" in result:
                    print(f"rep {rep} {target.label}: {result['failed']}", flush=True)
                    continue
                cpu = result["cpu"]["proxy"]["us_per_req"]
                print(
                    f"rep {rep} {target.label} {cpu:.2f} us/req, {len(after)} threads: "
                    + ", ".join(moved(before, after)),
                    flush=True,
                )
    finally:
        for target in targets:
            target.stop()
        stop_process(responder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
