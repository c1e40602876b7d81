"""Memory per request in flight: 10,000 requests held inside the proxy at once (issue 21).

Beside ``benchmarks/workers.py`` (which weighs an idle client connection) and sharing its
targets: metamesh ``proxy --config`` (the native build, 1 and 2 workers) and Envoy's L7 filter
(``thrift_proxy`` / ``dubbo_proxy``, the configs of ``benchmarks/envoy_configs/``) at
``--concurrency`` 1 and 2, each started fresh, measured alone, and stopped before the next.

"In flight" means the proxy holds the request: the upstream is ``responder.py --hold``, which
reads and parses every request but keeps the reply until it is told to let go. For each
target:

1. ``--connections`` client connections (default 100) are opened and one request is answered
   on each, one connection at a time (so at most one request is ever in flight before the
   measurement), then they are left idle for ``--settle`` seconds: RSS *idle*;
2. the responder holds; every connection sends ``--per-connection`` pipelined requests
   (default 100: 10,000 in all, distinct ids per connection); the run waits until the
   responder counts every one of them held *and* the proxy's own gauge says so (metamesh
   ``metamesh_active_requests``, Envoy ``cluster.upstream.upstream_rq_active``), settles,
   and reads RSS *in flight*;
3. the responder releases every reply; every request must be answered with its own id and
   no error, else the target's row says failed.

Per request = (RSS in flight - RSS idle) / requests: the connections are open and have
carried a request in both readings, so what a connection costs is not counted. RSS is
``VmRSS`` summed over every process of the target (both metamesh workers). 100 connections x
100 requests, rather than 10,000 connections x 1: multiplexed RPC clients (Dubbo's shared
connection per provider, Thrift's async clients) keep many requests in flight per connection;
and Envoy's L7 filters open one upstream connection per request in flight, so 10,000 x 1
would need 20,000 descriptors in Envoy alone, above this machine's hard limit of 20,000.

Envoy's circuit breakers and metamesh's default the same: 1,024 requests, 1,024 pending
requests, 1,024 connections per cluster, which would refuse most of the 10,000. Both are
raised to 1,000,000 for this run only (the configs written here; the shared configs are
untouched), and the connect timeout from 1 s to 30 s: Envoy opens its 10,000 upstream
connections in one burst, more than the responder's accept backlog (4,096) takes at once, and
the SYNs retried after a second would time out.

Run under the benchmark lock:
``flock /tmp/metamesh-bench.lock .venv/bin/python -m benchmarks.inflight --protocol dubbo``.
Prints a Markdown table and, unless ``--no-save``, writes it with the raw figures to
``benchmarks/results/<date>-<time>-inflight-<protocol>.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import socket
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import machine_facts
from benchmarks.frames import reply_scanner, request_template
from benchmarks.mesh_configs import metamesh_config
from benchmarks.metamesh_target import admin_get, prepare_native
from benchmarks.processes import Unavailable, save_results, spawn, stop_process
from benchmarks.targets import ENVOY_CONFIGS, Target
from benchmarks.workers import Setup, rss_kib, target_pids

HERE = Path(__file__).resolve().parent
#: Circuit-breaker thresholds for this run (Envoy's and metamesh's defaults are 1,024).
UNLIMITED = 1_000_000
#: Connect timeout for this run (the configs say 1 s): Envoy opens an upstream connection per
#: request, 10,000 at once, more than the responder's accept backlog takes in a second.
CONNECT_TIMEOUT = 30


class Control:
    """The hold responder's control connection (``responder.py --hold``)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._file = self._sock.makefile("rb")

    def ask(self, command: str) -> str:
        self._sock.sendall(command.encode() + b"\n")
        return self._file.readline().decode().strip()

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def start_hold_responder(protocol: str, workdir: Path) -> tuple[Any, int, int]:
    """(process, port, control port) of ``responder.py --hold``."""
    log = workdir / f"hold-responder-{protocol}.log"
    cmd = [sys.executable, str(HERE / "responder.py"), "--protocol", protocol, "--hold"]
    proc = spawn([*cmd, "--max-seconds", "3600"], log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = dict(line.split() for line in log.read_text().splitlines() if " " in line)
        if "PORT" in found and "CONTROL" in found:
            return proc, int(found["PORT"]), int(found["CONTROL"])
        if proc.poll() is not None:
            raise RuntimeError(f"responder exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("responder did not report its ports")


def envoy_template(protocol: str, workdir: Path) -> Path:
    """The workers benchmark's Envoy config with the cluster's circuit breakers raised."""
    text = (ENVOY_CONFIGS / f"{protocol}_proxy.yaml").read_text()
    anchor = "    connect_timeout: 1s\n"
    assert text.count(anchor) == 1, "the Envoy config's cluster has moved"
    breakers = (
        "    circuit_breakers:\n      thresholds:\n"
        f"      - {{max_connections: {UNLIMITED}, max_pending_requests: {UNLIMITED}, "
        f"max_requests: {UNLIMITED}}}\n"
    )
    path = workdir / f"envoy-{protocol}-inflight.yaml"
    path.write_text(text.replace(anchor, f"    connect_timeout: {CONNECT_TIMEOUT}s\n" + breakers))
    return path


def metamesh_template(protocol: str, workdir: Path) -> Path:
    """The static config of the other benchmarks with the cluster's circuit breakers raised,
    as a ``string.Template`` of the ports (``metamesh_config`` option of the targets)."""
    config = metamesh_config(protocol, 1, 2)
    for cluster in config["static_resources"]["clusters"]:
        cluster["connect_timeout"] = f"{CONNECT_TIMEOUT}s"
        cluster["circuit_breakers"] = {
            "thresholds": [
                {k: UNLIMITED for k in ("max_connections", "max_pending_requests", "max_requests")}
            ]
        }
    text = yaml.safe_dump(config, sort_keys=False)
    text = text.replace("port_value: 1\n", "port_value: ${listen_port}\n")
    text = text.replace("port_value: 2\n", "port_value: ${upstream_port}\n")
    text = text.replace("_1\n", "_${listen_port}\n").replace("|1||", "|${listen_port}||")
    path = workdir / f"metamesh-{protocol}-inflight.yaml"
    path.write_text(text)
    return path


def prometheus_value(admin: int, name: str) -> int:
    """A metamesh gauge from ``/stats/prometheus`` (summed over the workers by the admin)."""
    _, body = admin_get(admin, "/stats/prometheus")
    found = re.search(rb"^" + name.encode() + rb"(?:\{[^}]*\})? (\S+)$", body, re.M)
    return int(float(found.group(1))) if found else -1


def in_flight_gauge(target: Target) -> Callable[[], int]:
    """The proxy's own count of requests in flight upstream."""
    if target.is_metamesh:
        admin = target.extra["admin_port"]
        return lambda: prometheus_value(admin, "metamesh_active_requests")
    name = "cluster.upstream.upstream_rq_active"
    return lambda: target.envoy_stats(name).get(name, -1)


def upstream_connections(target: Target) -> int:
    """Upstream connections the proxy has open now."""
    if target.is_metamesh:
        return prometheus_value(target.extra["admin_port"], "metamesh_active_upstream_connections")
    name = "cluster.upstream.upstream_cx_active"
    return target.envoy_stats(name).get(name, -1)


def _read_replies(sock: socket.socket, scan: Any, count: int) -> tuple[list[int], int]:
    """The ids of ``count`` replies read from ``sock``, and how many were error replies."""
    buf = bytearray()
    ids: list[int] = []
    errors = 0
    while len(ids) < count:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed after {len(ids)} of {count} replies")
        buf += data
        used, errs = scan(buf, ids)
        errors += errs
        del buf[:used]
    return ids, errors


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def measure(
    setup: Setup, args: argparse.Namespace, control: Control, watch: list[int]
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring against one started target."""
    target = setup.target
    assert target is not None
    template, scan = request_template(args.protocol), reply_scanner(args.protocol)
    gauge = in_flight_gauge(target)
    total = args.connections * args.per_connection
    socks: list[socket.socket] = []
    out: dict[str, Any] = {"requests": total, "connections": args.connections}
    try:
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", target.port), timeout=60)
            socks.append(s)
            s.sendall(template.build(1))
            _read_replies(s, scan, 1)
        time.sleep(args.settle)
        out["rss_idle_kib"] = rss_kib(setup.pids)
        out["upstream_connections_idle"] = upstream_connections(target)
        assert control.ask("hold") == "holding"
        for s in socks:
            s.sendall(b"".join(template.build(i) for i in range(1, args.per_connection + 1)))
        try:
            _wait(
                "the responder to hold every request",
                lambda: int(control.ask("count")) >= total,
                60,
            )
            _wait("the proxy's in-flight gauge", lambda: gauge() >= total, 30)
        except RuntimeError as exc:
            seen = f"responder holds {control.ask('count')}, proxy gauge {gauge()}"
            if not target.is_metamesh:
                seen += f"; {target.envoy_stats('cluster.upstream.upstream_')}"
            raise RuntimeError(f"{exc}: {seen}") from exc
        time.sleep(args.settle)
        out["rss_in_flight_kib"] = rss_kib(setup.pids)
        out["held_by_responder"] = int(control.ask("count"))
        out["proxy_in_flight_gauge"] = gauge()
        out["upstream_connections_in_flight"] = upstream_connections(target)
        out["responder_rss_kib"] = rss_kib(watch)
        out["released"] = int(control.ask("release"))
        answered, errors, wrong = 0, 0, 0
        want = list(range(1, args.per_connection + 1))
        for s in socks:
            ids, errs = _read_replies(s, scan, args.per_connection)
            answered += len(ids)
            errors += errs
            wrong += sorted(ids) != want
        out.update(answered=answered, error_replies=errors, connections_with_wrong_ids=wrong)
        time.sleep(args.settle)
        out["rss_after_release_kib"] = rss_kib(setup.pids)
        out["proxy_in_flight_after_release"] = gauge()
    finally:
        with contextlib.suppress(OSError, ValueError):
            control.ask("release")
        for s in socks:
            s.close()
    grown = out["rss_in_flight_kib"] - out["rss_idle_kib"]
    out["bytes_per_request"] = round(grown * 1024 / total)
    ok = out["held_by_responder"] == total == out["released"] == out["answered"]
    if not ok or errors or wrong or out["proxy_in_flight_gauge"] != total:
        out["failed"] = "not every request was held, then answered with its id and no error"
    return out


def sans_io_breakdown(protocol: str, connections: int, per_connection: int) -> dict[str, Any]:
    """Where a held request's bytes go in the core alone (no runtime, no allocator slack):
    the same config and shape played into a :class:`ConnectionManager`, the upstream never
    answering; ``tracemalloc``'s growth per request, with the source lines that allocated it
    (pure build; a native build's allocations are all charged to the caller), and the
    ``sys.getsizeof`` of the objects one held request keeps."""
    import gc
    import random
    import tracemalloc

    from metamesh.proxy.codec_ref import resolve_codec
    from metamesh.proxy.config_yaml import parse_snapshot
    from metamesh.proxy.connection import CONNECT, ConnectionManager

    config = yaml.safe_load(
        string.Template(
            metamesh_template(protocol, Path(tempfile.mkdtemp())).read_text()
        ).substitute(listen_port=1, upstream_port=2)
    )
    snapshot = parse_snapshot(yaml.safe_dump(config))
    core = ConnectionManager(snapshot, resolve_codec, random.Random(1))
    listener = next(iter(snapshot.listeners))
    downs = [core.downstream_connected(listener, f"c{i}") for i in range(connections)]
    template = request_template(protocol)
    batch = b"".join(template.build(i) for i in range(1, per_connection + 1))

    def flush() -> Any:  # the runtime's part: connect, write out (the upstream keeps it all)
        for action in core.take_actions():
            if action[0] == CONNECT:
                core.upstream_connected(action[1], 0.0)
                flush.up = action[1]  # type: ignore[attr-defined]
        for peer in core.dirty:
            peer.dirty = False
            peer.out.clear()
        core.dirty.clear()

    total = connections * per_connection
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for d in downs:
        core.downstream_data(d, batch, 0.0)
        flush()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert core.stats.active_requests == total, core.stats.active_requests
    lines = after.compare_to(before, "lineno")
    held = next(iter(flush.up.pending.values()))  # type: ignore[attr-defined]
    msg = held.request
    return {
        "bytes_per_request": round(sum(x.size_diff for x in lines) / total),
        "objects_per_request": round(sum(x.count_diff for x in lines) / total, 1),
        "by_line": [
            (str(x.traceback[0]), round(x.size_diff / total, 1), round(x.count_diff / total, 2))
            for x in lines
            if abs(x.size_diff) >= total
        ],
        "getsizeof": {
            "ActiveRequest": sys.getsizeof(held),
            "Message": sys.getsizeof(msg),
            "frame": sys.getsizeof(msg.frame),
            "metadata": sys.getsizeof(msg.metadata),
            "codec_state": sys.getsizeof(msg.codec_state),
        },
    }


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    any_row = next(iter(report["targets"].values()))
    lines = [
        f"# Memory per request in flight ({report['protocol']}, "
        f"{any_row['connections']} connections x {report['per_connection']} requests)",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), load average at start {m['loadavg_at_start']}"
        f", commit {m['git_commit']}. A shared 2-core box: figures are indicative only.",
        "",
        "| target | RSS idle MiB | RSS in flight MiB | bytes per request | held (responder / "
        "proxy gauge) | upstream connections | answered, errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["targets"].items():
        if "rss_in_flight_kib" not in r:
            lines.append(f"| {name} | failed: {r.get('failed')} | | | | | |")
            continue
        status = f"{r['answered']:,}, {r['error_replies']}" + (" (FAILED)" if "failed" in r else "")
        lines.append(
            f"| {name} | {r['rss_idle_kib'] / 1024:.1f} | {r['rss_in_flight_kib'] / 1024:.1f} | "
            f"{r['bytes_per_request']:,} | {r['held_by_responder']:,} / "
            f"{r['proxy_in_flight_gauge']:,} | {r['upstream_connections_in_flight']:,} | "
            f"{status} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["thrift", "dubbo"], default="thrift")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--per-connection", type=int, default=100)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each reading")
    parser.add_argument("--setups", default="m1,m2,e1,e2", help="of m1, m2, e1, e2")
    parser.add_argument("--native", metavar="DIR", help="a native tree (default: build/native)")
    parser.add_argument("--envoy-bin")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--sans-io", action="store_true", help="print the core's breakdown (no processes)"
    )
    args = parser.parse_args(argv)
    if args.sans_io:
        found = sans_io_breakdown(args.protocol, args.connections, args.per_connection)
        print(json.dumps(found, indent=1))
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every target
    kind = f"static-native@{args.native}" if args.native else "static-native"
    known = {
        "m1": Setup("metamesh 1 worker", kind, 1),
        "m2": Setup("metamesh 2 workers", kind, 2),
        "e1": Setup("Envoy L7 --concurrency 1", "envoy", 1),
        "e2": Setup("Envoy L7 --concurrency 2", "envoy", 2),
    }
    setups = [known[k.strip()] for k in args.setups.split(",") if k.strip()]
    report: dict[str, Any] = {
        "protocol": args.protocol,
        "argv": sys.argv,
        "per_connection": args.per_connection,
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="metamesh-inflight-bench-") as tmp:
        workdir = Path(tmp)
        if any(s.kind != "envoy" for s in setups):
            prepare_native([kind], workdir)
        responder, port, control_port = start_hold_responder(args.protocol, workdir)
        control = Control(control_port)
        templates = {
            "envoy_config": envoy_template(args.protocol, workdir),
            "metamesh_config": str(metamesh_template(args.protocol, workdir)),
        }
        try:
            for s in setups:
                s.target = Target(s.kind, args.protocol, workdir)
                try:
                    s.target.start(port, {**s.options(args), **templates})
                    s.pids = target_pids(s)
                    if "machine" not in report:
                        report["machine"] = machine_facts([s.target])
                    result = measure(s, args, control, [responder.pid])
                except (OSError, RuntimeError, Unavailable) as exc:
                    result = {"failed": str(exc), "connections": args.connections}
                finally:
                    s.target.stop()
                report["targets"][s.name] = result
                print(f"[inflight] {s.name}: {result}", file=sys.stderr)
        finally:
            control.close()
            stop_process(responder)
    text = render(report)
    print(text)
    if not args.no_save:
        save_results(f"inflight-{args.protocol}", text, report)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
