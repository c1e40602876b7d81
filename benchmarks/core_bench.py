"""Sans-IO core benchmark: µs of proxy CPU per request, without sockets or an event loop.

Drives one :class:`~metamesh.proxy.connection.ConnectionManager` with the same frames, config
and load shape as ``compare.py``'s ``c<C>k<K>`` runs (default ``c4k32``: 4 clients, each sending
32 pipelined requests per turn), playing the runtime and the upstream itself: per turn every
client's batch arrives as one read, the one shared upstream connection's output is answered
(one response per request, same id, as ``responder.py`` does) and delivered back as one read,
and every dirty peer's output is taken, as the runtime's end-of-turn flush does. The config is
``targets.metamesh_config`` (one route matching like the Envoy L7 config: Thrift ``method``,
Dubbo ``interface`` + ``method``), so the route match, LB pick, pool, stats and both codecs run
exactly as in ``metamesh proxy``.

The figure is the minimum over ``--repeat`` runs of ``--turns`` turns, in µs per request
(the responder's work included, about 0.2 µs/req; building requests and the runtime's
socket calls excluded), with the
collector tuned as ``metamesh proxy`` tunes it. It moves much less than the live numbers, so use
it to confirm a change, and ``compare.py`` to report one.

Run: ``.venv/bin/python -m benchmarks.core_bench --protocol dubbo`` (``--profile`` prints a
cProfile of one run; ``--evict-mb 32`` starts every turn with cold caches, which is what a
proxy at a low rate meets on each wake-up: compare with and without to see what a turn's cache
misses cost).
"""

from __future__ import annotations

import argparse
import gc
import io
import random
import time
from collections.abc import Callable
from typing import Any

import yaml

from benchmarks.frames import request_template
from benchmarks.responder import _ThriftReplies, answer_dubbo, answer_thrift
from benchmarks.targets import metamesh_config
from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config_yaml import parse_snapshot
from metamesh.proxy.connection import ACCESS_LOG, CONNECT, ConnectionManager
from metamesh.proxy.tracing import Tracer, TracingConfig


def build(
    protocol: str, clients: int, tracing: float | None = None, access_log: bool = False
) -> tuple[ConnectionManager, list[Any], Any]:
    """A core with ``clients`` connected clients and its (connected) upstream; ``tracing``: a
    tracer sampling that share of the requests (they carry no trace context), as
    ``--tracing-sample-rate`` sets it; ``access_log``: the core makes access log records."""
    snap = parse_snapshot(yaml.safe_dump(metamesh_config(protocol, 1, 2)))
    core = ConnectionManager(snap, resolve_codec, random.Random(1), access_log=access_log)
    if tracing is not None:
        core.tracer = Tracer(TracingConfig(tracing), core.rng)
    listener = next(iter(snap.listeners))
    downs = [core.downstream_connected(listener, f"c{i}") for i in range(clients)]
    return core, downs, None


def run(
    protocol: str,
    clients: int,
    depth: int,
    turns: int,
    evict: int = 0,
    tracing: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    access_log: bool = False,
) -> float:
    """Seconds per request over ``turns`` turns (after one warm-up turn).

    With ``evict`` > 0, ``evict`` bytes are written (one byte per 64-byte line) before every
    turn, outside the timed part, so that each turn starts with the core's code and data out of
    the CPU caches, as after a proxy wakes from a sleep during which other processes ran.
    """
    core, downs, _ = build(protocol, clients, tracing, access_log)
    log = io.StringIO()
    if access_log:  # imported here: an older tree (native@DIR) may not have it
        from metamesh.runtime.access_log import json_line
    template = request_template(protocol)
    answer = answer_dubbo if protocol == "dubbo" else _thrift_answerer()
    # Distinct ids across clients, as loadgen.py sends them; every turn is fully answered, so
    # the same batches serve every turn (built once: the client's work is not measured).
    batches = [
        b"".join(template.build(1 + c * depth + i) for i in range(depth)) for c in range(clients)
    ]
    work = list(zip(downs, batches, strict=True))
    upstream = None

    def turn() -> int:
        nonlocal upstream
        for d, batch in work:
            core.downstream_data(d, batch, 0.0)
        core.spans.clear()  # finished spans are dropped: exporting is not the core's work
        for action in core.take_actions():
            if action[0] == CONNECT:
                upstream = action[1]
                core.upstream_connected(upstream, 0.0)
        replies = 0
        for peer in core.dirty:
            peer.dirty = False
            if peer is upstream:
                out: list[bytes] = []
                answer(bytearray(b"".join(peer.out)), out)
                data = b"".join(out)
                replies = len(out)
            peer.out.clear()
        core.dirty.clear()
        if replies:
            core.upstream_data(upstream, data, 0.0)
        for action in core.take_actions():  # the records written as the runtime writes them
            if action[0] == ACCESS_LOG:
                log.write(json_line(action[1], action[2], 0.0))
        log.seek(0)
        log.truncate()
        for peer in core.dirty:
            peer.dirty = False
            peer.out.clear()
        core.dirty.clear()
        return replies

    turn()
    turn()
    done = 0
    if evict:
        junk = bytearray(evict)
        zeros = bytes(len(range(0, evict, 64)))
        elapsed = 0.0
        for _ in range(turns):
            junk[::64] = zeros  # a write to every line: the caches now hold junk
            start = clock()
            done += turn()
            elapsed += clock() - start
    else:
        start = clock()
        for _ in range(turns):
            done += turn()
        elapsed = clock() - start
    assert done == turns * clients * depth, (done, turns * clients * depth)
    return elapsed / done


def _thrift_answerer() -> Any:
    replies = _ThriftReplies()

    def answer(buf: bytearray, out: list[bytes]) -> int:
        return answer_thrift(buf, out, replies)

    return answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--protocol", choices=("dubbo", "thrift"), default="dubbo")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--turns", type=int, default=400)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--evict-mb",
        type=float,
        default=0,
        help="write this many MB before every turn (untimed): cold caches, as after a sleep",
    )
    p.add_argument(
        "--tracing-rate",
        type=float,
        default=None,
        help="trace with this sample rate (0..1; requests carry no context); default: off",
    )
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU clock instead of the wall clock: steadier on a "
        "machine where other processes compete for the cores",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="the core makes access log records and they are written as JSON lines (to memory)",
    )
    args = p.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    shape = (args.protocol, args.clients, args.depth, args.turns)
    evict = int(args.evict_mb * 1e6)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10000, 20, 20)  # as metamesh.runtime.server tunes it
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run(*shape, evict, args.tracing_rate, clock, args.access_log)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    results = [
        run(*shape, evict, args.tracing_rate, clock, args.access_log) * 1e6
        for _ in range(args.repeat)
    ]
    print(
        f"{args.protocol} c{args.clients}k{args.depth}"
        + ("" if args.tracing_rate is None else f" tracing {args.tracing_rate:g}")
        + (" json-access-log" if args.access_log else "")
        + f": min {min(results):.3f} µs{' CPU' if args.cpu_time else ''}/req "
        f"(median {sorted(results)[len(results) // 2]:.3f}, {args.repeat} x {args.turns} turns"
        + (f", {args.evict_mb:g} MB evicted before each turn)" if evict else ")")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
