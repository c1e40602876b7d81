"""Smoke tests for the benchmark harness (benchmarks/), so CI notices when it rots.

They run the real scripts on 127.0.0.1 for about a second each at tiny shapes, with no Envoy and
no timing assertions: requests complete, every reply id matches, the JSON/Markdown come out, a
responder that answers with the wrong id is caught, and metamesh starts in each deployed mode
(static, xds, up; the native builds in the native pass) with the same config, on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import frames, loadgen
from benchmarks.compare import main as compare_main
from benchmarks.compare import start_responder
from benchmarks.mesh_configs import config_difference
from benchmarks.targets import Target, Unavailable, metamesh_kind, probe, stop_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["thrift", "dubbo"])
def responder(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    # long enough for a native build first (a minute or more when the sources changed)
    proc, port = start_responder(request.param, tmp_path, lifetime=600)
    yield request.param, proc, port
    stop_process(proc)


def _clean_load(protocol: str, port: int, shape: str, watch: str) -> dict[str, Any]:
    """Run loadgen.py for a second against ``port``; every reply must be a match."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--protocol", protocol,
         "--port", str(port), "--shape", shape, "--warmup", "0.2", "--duration", "0.8",
         "--watch", watch],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    assert result["completed"] > 0
    assert result["id_mismatches"] == 0
    assert result["errors"] == 0
    assert result["frame_errors"] == []
    return result


@pytest.mark.parametrize("shape", ["c2k8", "r500"])
def test_loadgen_against_responder(responder, shape: str) -> None:  # type: ignore[no-untyped-def]
    protocol, proc, port = responder
    probe(protocol, port)
    result = _clean_load(protocol, port, shape, f"responder={proc.pid}")
    assert result["connections_lost"] == 0
    assert result["latency_us"]["p50"] <= result["latency_us"]["p99"]
    assert set(result["cpu"]) == {"loadgen", "responder"}
    calls = result["calls"]["responder"]  # it reads requests and writes replies
    assert 0 < calls["reads_per_req"] <= 2 and 0 < calls["writes_per_req"] <= 2


def test_process_counters_count_this_process() -> None:
    """The syscall and context-switch counts move by at least what this test does."""
    before = loadgen.process_counters(os.getpid())
    fd = os.open(os.devnull, os.O_RDWR)
    try:
        for _ in range(1000):
            os.write(fd, b"x")
            os.read(fd, 1)
    finally:
        os.close(fd)
    for _ in range(5):
        time.sleep(0.002)  # each sleep blocks: a voluntary switch
    reads, writes, sleeps, preempts = (
        a - b for a, b in zip(loadgen.process_counters(os.getpid()), before, strict=True)
    )
    assert reads >= 1000 and writes >= 1000
    assert sleeps >= 5 and preempts >= 0


def test_scanners_keep_partial_frames() -> None:
    for protocol in ("thrift", "dubbo"):
        template = frames.request_template(protocol)
        if protocol == "thrift":
            replies = b"".join(frames.thrift_reply(b"add", i, 42) for i in (5, 6))
            scan = frames.scan_thrift
        else:
            replies = b"".join(
                frames.DUBBO_REPLY_HEAD + i.to_bytes(8, "big") + frames.DUBBO_REPLY_TAIL
                for i in (5, 6)
            )
            scan = frames.scan_dubbo
        assert template.build(1) != template.build(2)
        ids: list[int] = []
        used, errors = scan(replies[:-1], ids)
        assert (ids, errors) == ([5], 0)
        used2, _ = scan(replies[used:], ids)
        assert ids == [5, 6] and used + used2 == len(replies)


def test_wrong_reply_ids_are_counted() -> None:
    """A 'responder' that answers every Thrift call with seqid + 1 must show up as mismatches."""

    class OffByOne(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            ids: list[int] = []
            frames.scan_thrift(data, ids)  # a CALL is shaped like a REPLY up to its seqid
            out = b"".join(frames.thrift_reply(b"add", i + 1, 0) for i in ids)
            self.transport.write(out)  # type: ignore[attr-defined]

    async def scenario() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(OffByOne, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        shape = loadgen.parse_shape("c1k1")
        cfg = loadgen.Config("thrift", "127.0.0.1", port, shape, warmup=0.1, duration=0.3)
        try:
            return await loadgen.run(cfg)
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result["id_mismatches"] > 0  # type: ignore[operator]
    assert result["completed"] == 0


def test_compare_direct_only(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--protocol", "dubbo",
         "--targets", "direct", "--shapes", "c2k2", "--warmup", "0.2", "--duration", "0.5",
         "--reps", "1", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "| c2k2 | direct |" in run.stdout
    (md,) = tmp_path.glob("*-dubbo.md")
    (js,) = tmp_path.glob("*-dubbo.json")
    assert "Command: `" in md.read_text()
    report = json.loads(js.read_text())
    assert report["results"]["c2k2"]["direct"]["id_mismatches"] == 0


def test_native_tree_target_refuses_what_is_not_a_native_build(tmp_path: Path) -> None:
    missing = Target(f"metamesh-native@{tmp_path / 'nope'}", "thrift", tmp_path)
    with pytest.raises(Unavailable, match="not a directory"):
        missing.start(1, {})
    pure = Target(f"metamesh-native@{ROOT / 'src'}", "thrift", tmp_path)  # the pure sources
    with pytest.raises(Unavailable, match="does not load compiled"):
        pure.start(1, {})
    assert pure.proc is None


@pytest.mark.skipif(
    not os.environ.get("METAMESH_EXPECT_NATIVE"), reason="the native pass has build/native"
)
def test_native_tree_target_runs_that_tree(responder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    protocol, _proc, port = responder
    target = Target(f"metamesh-native@{ROOT / 'build' / 'native'}", protocol, tmp_path)
    try:
        target.start(port, {})  # probes a request through it: ids must match
        assert "native (mypyc" in target.version
        assert target.pid is not None
    finally:
        target.stop()


@pytest.mark.parametrize("kind", ["floor-c", "floor-py", "floor-epoll"])
def test_floor_targets_multiplex(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The floors are real forwarders: many clients' pipelined requests share one upstream
    connection under fresh ids, and every reply reaches its caller with the caller's id."""
    protocol, _proc, port = responder
    target = Target(kind, protocol, tmp_path)
    try:
        target.start(port, {})  # probes a request through it first
        assert target.pid is not None
        calls = _clean_load(protocol, target.port, "c8k16", f"proxy={target.pid}")["calls"]
        assert 0 < calls["proxy"]["reads_per_req"] <= 2  # both sides' reads, batched
        assert 0 < calls["proxy"]["writes_per_req"] <= 2
        upstream = subprocess.run(
            ["ss", "-Htn", "state", "established", f"dst 127.0.0.1:{port}"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert len(upstream.splitlines()) == 1  # one shared upstream connection
    finally:
        target.stop()


@pytest.mark.parametrize("kind", ["floor-c", "floor-py", "floor-epoll"])
def test_floor_targets_finish_short_writes(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A client that sends 200,000 requests before reading a reply: their replies (6-8 MB) do
    not fit the kernel's socket buffers (4 MB at most here), so the floor's writes come up
    short and the rest must still arrive once the client reads."""
    protocol, _proc, port = responder
    target = Target(kind, protocol, tmp_path)
    template = frames.request_template(protocol)
    want = list(range(1, 200_001))
    try:
        target.start(port, {})
        with socket.create_connection(("127.0.0.1", target.port), 10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            sock.sendall(b"".join(template.build(i) for i in want))
            time.sleep(0.5)  # let the floor run into full buffers with no event left to wake it
            got, _ = read_replies(sock, protocol, len(want))
        assert sorted(got) == want
    finally:
        target.stop()


def read_replies(sock: socket.socket, protocol: str, count: int) -> tuple[list[int], bytes]:
    """Read until ``count`` replies have come (each checked by the protocol's reply scanner):
    their ids and whatever bytes follow them."""
    scan = frames.reply_scanner(protocol)
    buf, got = b"", []
    while len(got) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(got)} replies"
        buf += chunk
        used, errors = scan(buf, got)
        assert errors == 0
        buf = buf[used:]
    return got, buf


@pytest.mark.parametrize("kind", ["floor-c", "floor-py", "floor-epoll"])
def test_floor_targets_map_colliding_ids_back(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two clients with the same ids in flight at once: the Python floors keep a caller's id
    only while it is free upstream, so the second client's requests take fresh ids and their
    replies must come back rewritten to the ids that client sent."""
    protocol, _proc, port = responder
    target = Target(kind, protocol, tmp_path)
    template = frames.request_template(protocol)
    ids = list(range(1, 51))
    batch = b"".join(template.build(i) for i in ids)
    try:
        target.start(port, {})
        a = socket.create_connection(("127.0.0.1", target.port), 10)
        b = socket.create_connection(("127.0.0.1", target.port), 10)
        with a, b:
            a.sendall(batch)
            b.sendall(batch)  # the same 50 ids, while a's are (mostly) still in flight
            for sock in (a, b):
                got, rest = read_replies(sock, protocol, len(ids))
                assert sorted(got) == ids and not rest
    finally:
        target.stop()


NATIVE = bool(os.environ.get("METAMESH_EXPECT_NATIVE"))


def _deployed_mode(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Start ``kind``, check what its start recorded, push a second of load through it."""
    protocol, _proc, port = responder
    target = Target(kind, protocol, tmp_path)
    try:
        target.start(port, {})  # ready, /server_info, /config_dump and a probe checked
        assert target.extra["server_info"]["loop"] == "uvloop"
        build = target.extra["server_info"]["build"]
        assert ("native (mypyc" in build) == kind.endswith("-native"), build
        assert target.extra["config_check"].startswith("/config_dump = the static config's")
        assert target.pid is not None
        result = _clean_load(protocol, target.port, "c4k8", f"proxy={target.pid}")
        assert result["cpu"]["proxy"]["us_per_req"] > 0
        if kind.startswith("xds-"):  # the proxy is measured, the control plane runs beside it
            (control,) = target.helpers
            assert control.poll() is None and control.pid != target.pid
    finally:
        target.stop()
    assert all(p.poll() is not None for p in [target.proc, *target.helpers])


@pytest.mark.parametrize("kind", ["static-pure", "xds-pure", "up-pure"])
def test_deployed_modes_serve_the_static_config(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _deployed_mode(responder, kind, tmp_path)


@pytest.mark.skipif(not NATIVE, reason="the native pass has build/native")
@pytest.mark.parametrize("kind", ["static-native", "xds-native", "up-native"])
def test_deployed_modes_on_the_native_build(responder, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _deployed_mode(responder, kind, tmp_path)


def test_old_target_names_are_the_static_mode(tmp_path: Path) -> None:
    assert Target("metamesh", "thrift", tmp_path).kind == "static-pure"
    assert Target("metamesh-native", "thrift", tmp_path).kind == "static-native"
    assert Target("metamesh-native@/x", "thrift", tmp_path).kind == "static-native@/x"
    assert metamesh_kind("xds-native@/x") == ("xds", True, Path("/x"))
    assert metamesh_kind("up-pure") == ("up", False, None)
    assert metamesh_kind("xds-pure@/x") is None  # a tree is a native build
    assert metamesh_kind("envoy") is None
    with pytest.raises(SystemExit, match="given twice"):
        compare_main(["--targets", "metamesh-native,static-native", "--no-save"])


def test_config_difference_shows_what_differs() -> None:
    route = {"name": "bench", "match": [{"name": "method", "value": "add"}]}
    reference = {"version": "bench", "route_configs": [{"routes": [route]}]}
    same = {"version": "7", "route_configs": [{"routes": [dict(route)]}]}
    assert config_difference(same, reference) == ""  # the version aside
    other = {"name": "bench", "match": [{"name": "method", "value": "sub"}]}
    diff = config_difference({"version": "7", "route_configs": [{"routes": [other]}]}, reference)
    changed = [line.replace(" ", "") for line in diff.splitlines()[2:] if line[0] in "+-"]
    assert changed == ['-"value":"add"', '+"value":"sub"']


def test_a_mode_serving_other_routes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start compares the live /config_dump with the static config's: a MetaRouter that
    matches another method must keep the target from being measured."""
    from benchmarks import mesh_configs, metamesh_target

    def other_method(directory: Path, protocol: str, listen: int, upstream: int) -> Path:
        mesh_configs.write_mesh_dir(directory, protocol, listen, upstream)
        manifest = directory / "bench.yaml"
        manifest.write_text(manifest.read_text().replace("exact: add", "exact: sub"))
        return directory

    monkeypatch.setattr(metamesh_target, "write_mesh_dir", other_method)
    target = Target("up-pure", "thrift", tmp_path)
    try:
        with pytest.raises(Unavailable, match="differs from the static config") as caught:
            target.start(1, {})
        assert '+"value":"sub"' in str(caught.value).replace(" ", "")
    finally:
        target.stop()


def test_tls_reads_prints_each_cost() -> None:
    """benchmarks/tls_reads.py runs and names each measured operation with a figure."""
    run = subprocess.run(
        [sys.executable, "-c", "import benchmarks.tls_reads as t; t.N = 200; t.main()"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "read raising SSLWantReadError",
        "pending check instead",
        "200 B record written and read back (1 enc + 1 dec)",
        "the same, read into a preallocated buffer",
        "200 B request + reply (2 enc + 2 dec)",
    ]
    assert all(line.endswith(" ns") for line in lines)


def test_each_repetition_starts_one_target_later() -> None:
    from benchmarks.compare import rotated

    orders = ["".join(rotated(list("ABC"), rep)) for rep in range(4)]
    assert orders == ["ABC", "BCA", "CAB", "ABC"]
    assert rotated([], 3) == []


@pytest.mark.parametrize("shape", ["c2k4", "r400"])
def test_loadgen_alternating_gives_each_target_its_turns(shape: str, tmp_path: Path) -> None:
    """Two responders as two targets taking 0.2 s turns: each gets its own window of the
    duration, clean replies, its process's CPU and counters; an open loop's rate goes to one
    target at a time (each sent about its share, not the whole rate all along)."""
    protocol = "dubbo"
    first, first_port = start_responder(protocol, tmp_path, lifetime=60)
    second, second_port = start_responder(protocol, tmp_path, lifetime=60)
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--protocol", protocol,
             "--shape", shape, "--warmup", "0.2", "--duration", "0.8", "--alternate", "0.2",
             "--side", f"a={first_port}:{first.pid}", "--side", f"b={second_port}:{second.pid}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        stop_process(first)
        stop_process(second)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["alternating"]
    assert set(results) == {"a", "b"}
    for result in results.values():
        assert result["completed"] > 0
        assert result["id_mismatches"] == result["errors"] == result["connections_lost"] == 0
        assert result["outstanding_at_end"] == 0
        assert 0.7 <= result["window_s"] <= 1.2  # its four turns of 0.2 s
        assert result["alternating_slot_s"] == 0.2
        assert set(result["cpu"]) == {"loadgen", "proxy"}
        assert result["calls"]["proxy"]["reads_per_req"] > 0
        if shape == "r400":  # its warm-up and its turns: 1 s of the 2 s at 400/s, not 2 s
            assert result["sent"] <= 400 * 1.0 * 1.25 + 10


def test_paired_ratios_compare_each_proxy_to_the_first_in_the_same_repetition() -> None:
    from benchmarks.compare import paired_ratios

    def run(us: float | None) -> dict[str, Any]:
        return {"cpu": {} if us is None else {"proxy": {"us_per_req": us}}}

    runs = {
        "direct": [run(None), run(None), run(None)],
        "before": [run(10.0), run(20.0), run(10.0)],
        "after": [run(11.0), run(21.0), run(12.0)],
        "broken": [{"failed": "loadgen exit 1"}, run(30.0), run(10.0)],
    }
    found = paired_ratios(runs)
    assert set(found) == {"after", "broken"}  # direct has no proxy, before is the base
    assert found["after"] == {"base": "before", "median": 1.1, "low": 1.05, "high": 1.2, "reps": 3}
    assert found["broken"]["reps"] == 2 and found["broken"]["median"] == 1.25
    assert paired_ratios({"direct": [run(None)], "before": [run(10.0)]}) == {}


def _alternating_compare(
    tmp_path: Path, protocol: str, targets: str, reps: int, slot: float
) -> tuple[str, dict[str, Any]]:
    """A tiny ``compare.py --alternate`` run at c2k2: its Markdown output and JSON report."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--protocol", protocol,
         "--targets", targets, "--shapes", "c2k2", "--warmup", "0.2", "--duration", "0.6",
         "--reps", str(reps), "--alternate", str(slot), "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (js,) = tmp_path.glob(f"*-{protocol}.json")
    report: dict[str, Any] = json.loads(js.read_text())
    return run.stdout, report


def test_compare_alternating_reports_paired_ratios(tmp_path: Path) -> None:
    stdout, report = _alternating_compare(
        tmp_path, "thrift", "direct,metamesh,static-pure+jsonlog", reps=2, slot=0.2
    )
    assert "taking turns of 0.2 s" in stdout
    assert report["alternate_s"] == 0.2
    for label in ("direct", "static-pure", "static-pure+jsonlog"):
        runs = report["runs"]["c2k2"][label]
        assert len(runs) == 2 and all(r["completed"] > 0 and not r["id_mismatches"] for r in runs)
    paired = report["paired"]["c2k2"]
    assert set(paired) == {"static-pure+jsonlog"}
    assert paired["static-pure+jsonlog"]["base"] == "static-pure"
    assert paired["static-pure+jsonlog"]["reps"] == 2
    row = next(line for line in stdout.splitlines() if "| static-pure+jsonlog |" in line)
    assert re.search(r"\| [+-]\d+\.\d% \([+-]\d+\.\d%\.\.[+-]\d+\.\d%\) \|", row), row


def test_traced_variants_export_over_grpc_and_http(tmp_path: Path) -> None:
    """``+tracing100`` and ``+tracinghttp100``: every request traced, exported to the OTLP sink
    over gRPC and over OTLP/HTTP; the sink counted them (spans_received in the report)."""
    _, report = _alternating_compare(
        tmp_path, "dubbo", "metamesh+tracing100,metamesh+tracinghttp100", reps=1, slot=0.3
    )
    for label in ("static-pure+tracing100", "static-pure+tracinghttp100"):
        completed = report["runs"]["c2k2"][label][0]["completed"]
        assert completed > 0
        # every request of the warm-up and the window, each a span (the checks' requests too)
        assert report["targets"][label]["spans_received"] >= completed, report["targets"][label]
