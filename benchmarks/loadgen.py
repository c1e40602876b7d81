"""Thrift / Dubbo load generator: requests in flight, per-request latency, proxy CPU per request.

Run as ``python benchmarks/loadgen.py --protocol thrift --port P --shape c4k32`` (see ``--help``);
it prints one JSON object on stdout.

Shapes:

- ``c<C>k<K>``: closed loop, C connections with K requests in flight on each (a reply is answered
  at once with the next request on the same connection), e.g. ``c4k32``, ``c16k1``.
- ``r<R>``: open loop at R requests/s spread round-robin over ``--rate-connections`` connections
  (default 4), sent from a 1 ms ticker whatever the replies do, e.g. ``r20000``, ``r5000``.

The run is a warm-up (``--warmup`` s, nothing recorded) and then a window (``--duration`` s). Only
replies that arrive inside the window count. At the window's edges the generator reads the CPU
time (utime+stime, all threads, from ``/proc/PID/stat``) of every ``--watch NAME=PID`` process and
its own (``getrusage``), so the CPU per request of a proxy is taken over exactly the requests it
completed in the window. It also reads each watched process's read and write system calls and
its sleeps and preemptions (:func:`process_counters`) at the same edges, per request.

Cheapness (~1 µs CPU per request) comes from: hand-encoded frames built as ``head + id + tail``;
one ``write`` per connection per batch; one clock read per ``data_received`` batch; latency counted
into a 1 µs-resolution histogram (a list of ints), not stored per request. Every reply's id must be
one this connection has outstanding: unknown or repeated ids are counted as ``id_mismatches``.
Request ids come from one counter shared by all connections, so they are distinct across them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.frames import (
    RequestTemplate,
    join_pending,
    keep_unused,
    reply_scanner,
    request_template,
)
from benchmarks.responder import install_event_loop

HIST_MAX_US = 200_000  # latencies at or above 200 ms go to a (sorted later) overflow list
TICK_S = 0.001  # open-loop ticker period
WARMUP, MEASURE, DONE = 0, 1, 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Shape:
    """A load shape: closed loop (``in_flight`` per connection) or open loop (``rate``)."""

    name: str
    connections: int
    in_flight: int = 0
    rate: float = 0.0

    @property
    def closed(self) -> bool:
        return self.rate == 0.0


def parse_shape(name: str, rate_connections: int = 4) -> Shape:
    m = re.fullmatch(r"c(\d+)k(\d+)", name)
    if m and int(m[1]) > 0 and int(m[2]) > 0:
        return Shape(name, connections=int(m[1]), in_flight=int(m[2]))
    m = re.fullmatch(r"r(\d+)", name)
    if m and int(m[1]) > 0:
        return Shape(name, connections=rate_connections, rate=float(m[1]))
    raise ValueError(f"bad shape {name!r}: use c<connections>k<in-flight> or r<requests/s>")


def process_user_sys_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a whole process (all its threads), in seconds, from /proc/PID/stat.

    stime is the kernel's share: for a proxy at low pipelining mostly socket reads and writes
    (the TCP stack over loopback runs in the writer's context), which no user-space change
    but fewer syscalls can reduce.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def process_counters(pid: int) -> tuple[int, int, int, int]:
    """(read syscalls, write syscalls, sleeps, preemptions) of a whole process so far.

    The syscall counts are ``syscr`` and ``syscw`` of ``/proc/PID/io``: the kernel counts
    ``read``/``readv``/``pread`` and ``write``/``writev``/``pwrite`` there, not socket calls
    (``recvmsg``, ``sendmsg``, ...) nor ``epoll_wait``. uvloop and the floors use the former;
    Envoy writes with ``sendmsg``, so its writes do not show.

    Sleeps and preemptions are the voluntary and involuntary context switches of
    ``/proc/PID/task/*/status``, summed over threads: a voluntary switch is the event loop
    blocking with nothing to do (one per wake-up), an involuntary one the scheduler taking the
    CPU away, mostly for a process the proxy's own write just woke on the same core. Together
    they say whether two proxies made the same system calls and woke as often, which splits a
    CPU difference into syscalls and work.
    """
    with open(f"/proc/{pid}/io", "rb") as f:
        io = dict(line.split(b": ") for line in f.read().splitlines())
    sleeps = preempts = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status", "rb") as f:
                status = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith(b"voluntary_ctxt_switches:"):
                sleeps += int(line.split()[1])
            elif line.startswith(b"nonvoluntary_ctxt_switches:"):
                preempts += int(line.split()[1])
    return int(io[b"syscr"]), int(io[b"syscw"]), sleeps, preempts


def cpu_snapshot(watch: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of this process ("loadgen") and of every watched one (NaN
    for one that is gone)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {"loadgen": (ru.ru_utime, ru.ru_stime)}
    for name, pid in watch.items():
        try:
            cpu[name] = process_user_sys_seconds(pid)
        except OSError:
            cpu[name] = (float("nan"), float("nan"))
    return cpu


@dataclass
class Stats:
    phase: int = WARMUP
    next_id: int = 0
    sent: int = 0
    not_sent: int = 0
    completed: int = 0
    errors: int = 0
    id_mismatches: int = 0
    connections_lost: int = 0
    frame_errors: list[str] = field(default_factory=list)
    hist: list[int] = field(default_factory=lambda: [0] * HIST_MAX_US)
    overflow: list[int] = field(default_factory=list)


class LoadConnection(asyncio.Protocol):
    """One client connection: sends batches of requests, matches replies by id."""

    def __init__(self, stats: Stats, template: RequestTemplate, protocol: str, refill: bool):
        self.stats = stats
        self.refill = refill  # closed loop: every reply triggers the next request
        self.outstanding: dict[int, float] = {}
        self.transport: asyncio.Transport | None = None
        self._head, self._tail = template.head, template.tail
        self._id_size, self._max_id = template.id_size, template.max_id
        self._scan = reply_scanner(protocol)
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.phase != DONE:
            self.stats.connections_lost += 1
        self.transport = None

    def send(self, n: int, now: float) -> None:
        transport = self.transport
        if transport is None or n <= 0:
            return
        stats, out = self.stats, self.outstanding
        head, tail, size, max_id = self._head, self._tail, self._id_size, self._max_id
        rid = stats.next_id
        frames = []
        for _ in range(n):
            rid = rid + 1 if rid < max_id else 1
            frames.append(head + rid.to_bytes(size, "big") + tail)
            out[rid] = now
        stats.next_id = rid
        stats.sent += n
        transport.write(b"".join(frames) if n > 1 else frames[0])

    def data_received(self, data: bytes) -> None:
        buf = join_pending(self._buf, data)
        ids: list[int] = []
        try:
            used, errors = self._scan(buf, ids)
        except ValueError as exc:
            self.stats.frame_errors.append(str(exc))
            assert self.transport is not None
            self.transport.close()
            return
        keep_unused(self._buf, buf, used)
        if not ids:
            return
        now = time.perf_counter()
        stats, pop = self.stats, self.outstanding.pop
        if stats.phase == MEASURE:
            hist = stats.hist
            done = 0
            for rid in ids:
                ts = pop(rid, None)
                if ts is None:
                    stats.id_mismatches += 1
                    continue
                us = int((now - ts) * 1e6)
                if us < HIST_MAX_US:
                    hist[us] += 1
                else:
                    stats.overflow.append(us)
                done += 1
            stats.completed += done
            stats.errors += errors
        else:
            for rid in ids:
                if pop(rid, None) is None:
                    stats.id_mismatches += 1
        if self.refill and stats.phase != DONE:
            self.send(len(ids), now)


def percentiles(hist: list[int], overflow: list[int], qs: tuple[float, ...]) -> dict[str, float]:
    total = sum(hist) + len(overflow)
    result: dict[str, float] = {}
    if total == 0:
        return {f"p{q:g}": float("nan") for q in qs} | {"mean": float("nan"), "max": float("nan")}
    targets = sorted((q, max(1, int(q / 100.0 * total + 0.999999))) for q in qs)
    overflow = sorted(overflow)
    seen, ti, weighted, top = 0, 0, 0, 0
    for us, count in enumerate(hist):
        if not count:
            continue
        seen += count
        weighted += us * count
        top = us
        while ti < len(targets) and seen >= targets[ti][1]:
            result[f"p{targets[ti][0]:g}"] = float(us)
            ti += 1
    for us in overflow:
        seen += 1
        weighted += us
        top = us
        while ti < len(targets) and seen >= targets[ti][1]:
            result[f"p{targets[ti][0]:g}"] = float(us)
            ti += 1
    result["mean"] = weighted / total
    result["max"] = float(top)
    return result


@dataclass
class Config:
    protocol: str
    host: str
    port: int
    shape: Shape
    warmup: float = 2.0
    duration: float = 10.0
    watch: dict[str, int] = field(default_factory=dict)
    max_outstanding: int = 100_000  # per connection, open loop only


async def run(cfg: Config) -> dict[str, Any]:
    """Run one warm-up + window against host:port and return the result as a JSON-able dict."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    template = request_template(cfg.protocol)
    shape = cfg.shape
    conns: list[LoadConnection] = []
    for _ in range(shape.connections):
        _, conn = await loop.create_connection(
            lambda: LoadConnection(stats, template, cfg.protocol, refill=shape.closed),
            cfg.host,
            cfg.port,
        )
        conns.append(conn)

    marks: dict[str, Any] = {}

    def snapshot() -> dict[str, tuple[float, float]]:
        return cpu_snapshot(cfg.watch)

    def counters() -> dict[str, tuple[int, int, int, int]]:
        found = {}
        for name, pid in cfg.watch.items():
            # a process that is gone or unreadable is left out, not reported as zero
            with contextlib.suppress(OSError, KeyError, ValueError):
                found[name] = process_counters(pid)
        return found

    def start_window() -> None:
        marks["counters0"] = counters()
        marks["cpu0"] = snapshot()
        marks["t0"] = time.perf_counter()
        stats.phase = MEASURE

    def end_window() -> None:
        stats.phase = DONE
        marks["t1"] = time.perf_counter()
        marks["cpu1"] = snapshot()
        marks["counters1"] = counters()
        finished.set()

    finished = asyncio.Event()
    start = time.perf_counter()
    if shape.closed:
        for conn in conns:
            conn.send(shape.in_flight, start)
    else:
        _start_ticker(loop, conns, stats, shape.rate, start, cfg.max_outstanding)
    loop.call_later(cfg.warmup, start_window)
    loop.call_later(cfg.warmup + cfg.duration, end_window)
    await finished.wait()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0)
    return _report(cfg, stats, marks, sum(len(c.outstanding) for c in conns))


def _start_ticker(
    loop: asyncio.AbstractEventLoop,
    conns: list[LoadConnection],
    stats: Stats,
    rate: float,
    start: float,
    max_outstanding: int,
    to: list[tuple[list[LoadConnection], Stats] | None] | None = None,
) -> None:
    """Open loop: every tick, send what is due since ``start``, spread round-robin.

    ``to`` (alternating runs) is a one-item box holding the connections and stats that get the
    load now, or ``None`` for a pause (nothing sent, nothing owed later); ``conns`` and ``stats``
    are then ignored, and emptying the box stops the ticker.
    """
    state = {"issued": 0, "next_conn": 0}

    def tick() -> None:
        if to is not None and not to:  # the alternating run is over
            return
        now = time.perf_counter()
        due = int((now - start) * rate) - state["issued"]
        current = (conns, stats) if to is None else to[0]
        if current is None:  # paused: what falls due now is skipped
            state["issued"] += max(due, 0)
            loop.call_later(TICK_S, tick)
            return
        targets, counts = current
        if counts.phase == DONE:
            return
        n = len(targets)
        if due > 0:
            state["issued"] += due
            first = state["next_conn"] % n
            for i in range(n):
                count = due // n + (1 if (i - first) % n < due % n else 0)
                conn = targets[i]
                if len(conn.outstanding) + count > max_outstanding:
                    counts.not_sent += count
                else:
                    conn.send(count, now)
            state["next_conn"] = (first + due) % n
        loop.call_later(TICK_S, tick)

    tick()


def _connection_factory(
    stats: Stats, template: RequestTemplate, protocol: str
) -> Callable[[], LoadConnection]:
    return lambda: LoadConnection(stats, template, protocol, refill=False)


@dataclass
class Side:
    """One target of an alternating run: its own connections, stats and active seconds."""

    name: str
    port: int
    pid: int | None
    stats: Stats = field(default_factory=Stats)
    conns: list[LoadConnection] = field(default_factory=list)
    active_s: float = 0.0


async def run_alternating(cfg: Config, sides: list[Side], slot: float) -> dict[str, dict[str, Any]]:
    """Measure several targets in one process, taking turns of ``slot`` seconds.

    Each target gets the same load shape on connections of its own, in turns: a closed loop's
    connections refill only while their target has the turn (at a turn's start it is topped up
    to ``in_flight`` per connection; the others' requests still out complete and count), an
    open loop's ticker sends to the target whose turn it is. Turns go round in an order that
    starts one target later each round, until every target has had ``cfg.duration`` seconds;
    the warm-up gives each ``cfg.warmup`` seconds in a row first.

    Targets measured this way share the machine's state minute by minute (another tenant's
    load, CPU frequency, a neighbour's cache traffic), which separate windows do not: on a
    noisy box a difference of a few percent between two builds shows in one run. A target's
    own process (``Side.pid``) is charged its CPU over the whole measured period, its idle
    turns included (a metamesh proxy's idle timers cost well under 0.1% of a busy second);
    the shared processes of ``cfg.watch`` (the responder) and the load generator itself are
    read at every turn's edges and charged to the target whose turn it was.
    """
    loop = asyncio.get_running_loop()
    template = request_template(cfg.protocol)
    shape = cfg.shape
    for side in sides:
        for _ in range(shape.connections):
            _, conn = await loop.create_connection(
                _connection_factory(side.stats, template, cfg.protocol), cfg.host, side.port
            )
            side.conns.append(conn)

    box: list[tuple[list[LoadConnection], Stats] | None] = [None]

    def give_turn(side: Side | None) -> None:
        now = time.perf_counter()
        for other in sides:
            for conn in other.conns:
                conn.refill = shape.closed and other is side
        if side is None:
            box[0] = None
            return
        if shape.closed:
            for conn in side.conns:
                conn.send(shape.in_flight - len(conn.outstanding), now)
        box[0] = (side.conns, side.stats)

    def side_marks() -> dict[str, tuple[Any, Any]]:
        marks: dict[str, tuple[Any, Any]] = {}
        for side in sides:
            if side.pid is None:
                continue
            cpu: Any = (float("nan"), float("nan"))
            counts: Any = None
            with contextlib.suppress(OSError):
                cpu = process_user_sys_seconds(side.pid)
            with contextlib.suppress(OSError, KeyError, ValueError):
                counts = process_counters(side.pid)
            marks[side.name] = (cpu, counts)
        return marks

    shared: dict[str, dict[str, list[float]]] = {
        side.name: {name: [0.0, 0.0] for name in ("loadgen", *cfg.watch)} for side in sides
    }
    start = time.perf_counter()
    if not shape.closed:
        _start_ticker(loop, [], Stats(), shape.rate, start, cfg.max_outstanding, to=box)
    for side in sides:  # warm-up: each in turn, nothing recorded
        give_turn(side)
        await asyncio.sleep(cfg.warmup)
    before = side_marks()
    for side in sides:
        side.stats.phase = MEASURE
    rounds = max(1, round(cfg.duration / slot))
    for r in range(rounds):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            edge0, t0 = cpu_snapshot(cfg.watch), time.perf_counter()
            give_turn(side)
            await asyncio.sleep(cfg.duration / rounds)
            t1, edge1 = time.perf_counter(), cpu_snapshot(cfg.watch)
            side.active_s += t1 - t0
            for name, (u1, s1) in edge1.items():
                u0, s0 = edge0[name]
                shared[side.name][name][0] += u1 - u0
                shared[side.name][name][1] += s1 - s0
    give_turn(None)
    for _ in range(100):  # the last turn's requests still out (and the others', if any)
        if not any(c.outstanding for side in sides for c in side.conns):
            break
        await asyncio.sleep(0.005)
    after = side_marks()
    box.clear()
    results: dict[str, dict[str, Any]] = {}
    for side in sides:
        side.stats.phase = DONE
        cpu0: dict[str, Any] = {name: (0.0, 0.0) for name in shared[side.name]}
        cpu1: dict[str, Any] = {k: (u, s) for k, (u, s) in shared[side.name].items()}
        counters0: dict[str, Any] = {}
        counters1: dict[str, Any] = {}
        if side.name in before and side.name in after:
            cpu0["proxy"], cpu1["proxy"] = before[side.name][0], after[side.name][0]
            if before[side.name][1] is not None and after[side.name][1] is not None:
                counters0["proxy"], counters1["proxy"] = before[side.name][1], after[side.name][1]
        marks = {
            "t0": 0.0,
            "t1": side.active_s,
            "cpu0": cpu0,
            "cpu1": cpu1,
            "counters0": counters0,
            "counters1": counters1,
        }
        left = sum(len(c.outstanding) for c in side.conns)
        result = _report(replace(cfg, port=side.port), side.stats, marks, left)
        result["alternating_slot_s"] = round(cfg.duration / rounds, 4)
        results[side.name] = result
    for side in sides:
        for conn in side.conns:
            if conn.transport is not None:
                conn.transport.close()
    await asyncio.sleep(0)
    return results


def _report(cfg: Config, stats: Stats, marks: dict[str, Any], left: int) -> dict[str, Any]:
    window = marks["t1"] - marks["t0"]
    lat = percentiles(stats.hist, stats.overflow, (50, 90, 99, 99.9))
    cpu: dict[str, dict[str, float]] = {}
    for name, (user0, sys0) in marks["cpu0"].items():
        user1, sys1 = marks["cpu1"][name]
        used, kernel = (user1 - user0) + (sys1 - sys0), sys1 - sys0
        per_req = 1e6 / stats.completed if stats.completed else float("nan")
        cpu[name] = {
            "cpu_s": round(used, 4),
            "us_per_req": round(used * per_req, 3),
            "sys_us_per_req": round(kernel * per_req, 3),
        }
    per_req = 1 / stats.completed if stats.completed else float("nan")
    calls: dict[str, dict[str, float]] = {}
    for name, before in marks["counters0"].items():
        after = marks["counters1"].get(name)
        if after is None:
            continue
        reads, writes, sleeps, preempts = (a - b for a, b in zip(after, before, strict=True))
        calls[name] = {
            "reads_per_req": round(reads * per_req, 3),
            "writes_per_req": round(writes * per_req, 3),
            "sleeps_per_req": round(sleeps * per_req, 3),
            "preempts_per_req": round(preempts * per_req, 3),
        }
    return {
        "protocol": cfg.protocol,
        "target": f"{cfg.host}:{cfg.port}",
        "shape": cfg.shape.name,
        "offered_rps": cfg.shape.rate or None,
        "warmup_s": cfg.warmup,
        "window_s": round(window, 4),
        "completed": stats.completed,
        "rps": round(stats.completed / window, 1) if window > 0 else 0.0,
        "latency_us": {k: round(v, 1) for k, v in lat.items()},
        "errors": stats.errors,
        "id_mismatches": stats.id_mismatches,
        "connections_lost": stats.connections_lost,
        "frame_errors": stats.frame_errors[:5],
        "sent": stats.sent,
        "not_sent": stats.not_sent,
        "outstanding_at_end": left,
        "cpu": cpu,
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Thrift/Dubbo load generator (prints one JSON object)."
    )
    parser.add_argument("--protocol", choices=["thrift", "dubbo"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--shape", default="c4k32", help="c<C>k<K> (closed) or r<rate> (open)")
    parser.add_argument("--rate-connections", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not recorded")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    parser.add_argument(
        "--watch", action="append", default=[], metavar="NAME=PID", help="report CPU of PID"
    )
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio instead of uvloop")
    parser.add_argument(
        "--side",
        action="append",
        default=[],
        metavar="NAME=PORT[:PID]",
        help="with --alternate: a target taking turns (its proxy's PID is charged its CPU);"
        " --port is then unused",
    )
    parser.add_argument(
        "--alternate",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="take turns of about SECONDS between the --side targets (see run_alternating);"
        ' prints {NAME: result} under "alternating"',
    )
    args = parser.parse_args(argv)
    if args.alternate <= 0 and args.port <= 0:
        parser.error("--port is required (or --alternate with --side targets)")
    watch = {}
    for item in args.watch:
        name, _, pid = item.partition("=")
        watch[name] = int(pid)
    cfg = Config(
        protocol=args.protocol,
        host=args.host,
        port=args.port,
        shape=parse_shape(args.shape, args.rate_connections),
        warmup=args.warmup,
        duration=args.duration,
        watch=watch,
    )
    loop_name = "asyncio" if args.asyncio else install_event_loop()
    if args.alternate > 0:
        return _main_alternating(cfg, args.side, args.alternate, loop_name)
    deadline = cfg.warmup + cfg.duration + 15.0

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(run(cfg), deadline)

    result = asyncio.run(bounded())
    result["loop"] = loop_name
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["completed"] and not result["id_mismatches"] else 1


def _main_alternating(cfg: Config, specs: list[str], slot: float, loop_name: str) -> int:
    sides = []
    for spec in specs:
        name, _, where = spec.partition("=")
        port, _, pid = where.partition(":")
        sides.append(Side(name, int(port), int(pid) if pid else None))
    if len(sides) < 2 or len({s.name for s in sides}) < len(sides):
        raise SystemExit(
            "loadgen: --alternate needs two or more --side NAME=PORT[:PID], names distinct"
        )
    deadline = len(sides) * (cfg.warmup + cfg.duration) + 15.0

    async def bounded() -> dict[str, dict[str, Any]]:
        return await asyncio.wait_for(run_alternating(cfg, sides, slot), deadline)

    results = asyncio.run(bounded())
    for result in results.values():
        result["loop"] = loop_name
    json.dump({"alternating": results}, sys.stdout)
    sys.stdout.write("\n")
    ok = all(r["completed"] and not r["id_mismatches"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
