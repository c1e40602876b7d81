"""``metamesh proxy --config FILE --workers 2`` as a process: a port-0 listener shared by both
workers (SO_REUSEPORT, or handed over by worker 0), requests in flight in both, SIGTERM drains
both with every reply delivered.

The upstream answers each KV-RPC call after 0.5 s, so when SIGTERM arrives every client has a
request in flight; ``/server_info`` shows them spread over the two workers first. Every client
gets its reply, the proxy exits 0, each request is in the shared access log once (the workers
append whole lines; JSON, or the ``--access-log-format`` line), and ``--workers 0`` is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from tests.runtime.test_cli_proxy import recv_message

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 16
DELAY = 0.5


def slow_echo_server() -> socket.socket:
    """A KV-RPC upstream answering every call with ``up:<body>`` after :data:`DELAY` s."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        codec, buf, lock = KvRpcCodec(), bytearray(), threading.Lock()

        def reply(frame: bytes) -> None:
            with lock, contextlib.suppress(OSError):  # the proxy may have gone
                conn.sendall(frame)

        with conn:
            while data := conn.recv(65536):
                buf += data
                while (msg := codec.decode(buf)) is not None:
                    body = b"up:" + msg.frame[msg.header_size :]
                    frame = build_frame(2, msg.request_id or 0, {}, body)
                    threading.Timer(DELAY, reply, (frame,)).start()
            time.sleep(2 * DELAY)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def server_info(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=5) as r:
        info: dict[str, Any] = json.loads(r.read())
        return info


def start(cfg: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg), *args],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("accept", ["reuseport", "handover"])
def test_two_workers_share_a_port_zero_listener_and_drain_on_sigterm(
    tmp_path: Path, accept: str
) -> None:
    upstream = slow_echo_server()
    text = (ROOT / "examples" / "proxy-static.yaml").read_text()
    text = text.replace("port_value: 19000", "port_value: 0")
    for p in ("20001", "20002", "20003"):
        text = text.replace(f"port_value: {p}", f"port_value: {upstream.getsockname()[1]}")
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(text)
    access = tmp_path / "access.log"
    proc = start(
        cfg, "--admin-port", "0", "--workers", "2", "--worker-accept", accept,
        "--access-log", str(access),
        *(["--access-log-format", "%REQUEST_ID% %ROUTE_NAME%"] if accept == "handover" else []),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        log, port, admin = "", 0, 0
        deadline = time.monotonic() + 60
        while not admin and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"proxy exited early: {log}"
            log += line
            if m := re.search(r"listener kv-19000 on port (\d+)", line):
                port = int(m.group(1))
            if m := re.search(r"admin on 127.0.0.1:(\d+)", line):
                admin = int(m.group(1))
        assert port and admin, log
        deadline = time.monotonic() + 20
        clients = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CLIENTS)
        ]
        for i, c in enumerate(clients):
            c.sendall(build_frame(1, 100 + i, {"method": "get", "user": f"beta-{i}"}, b"c%d" % i))
        workers = server_info(admin)["workers"]
        while sum(w["requests_in_flight"] for w in workers) < CLIENTS:  # all sent upstream
            assert time.monotonic() < deadline, workers
            workers = server_info(admin)["workers"]
        assert [w["state"] for w in workers] == ["LIVE", "LIVE"]
        assert all(w["clients"] > 0 for w in workers), workers  # spread over both workers
        if accept == "handover":  # dealt round robin
            assert [w["clients"] for w in workers] == [CLIENTS // 2, CLIENTS // 2], workers
        assert sum(w["requests_in_flight"] for w in workers) == CLIENTS
        proc.send_signal(signal.SIGTERM)
        for i, c in enumerate(clients):
            msg = recv_message(c)
            assert msg.request_id == 100 + i and msg.frame[msg.header_size :] == b"up:c%d" % i
            c.close()
        assert proc.wait(timeout=30) == 0
        lines = access.read_text().splitlines()
        if accept == "handover":  # with --access-log-format in every worker
            assert all(x.endswith(" canary-by-user") for x in lines), lines
            ids = [int(x.split()[0]) for x in lines]
        else:
            ids = [json.loads(x)["request_id"] for x in lines]
        assert sorted(ids) == list(range(100, 100 + CLIENTS))
        assert "worker 1 started" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()


def test_workers_option_is_checked() -> None:
    from metamesh.cli import _workers, build_parser
    from metamesh.runtime.workers import WorkerSpec

    def spec(*argv: str) -> WorkerSpec | None:
        return _workers(build_parser().parse_args(["proxy", "--config", "x.yaml", *argv]), "proxy")

    assert spec() is None and spec("--workers", "1") is None
    two = spec("--workers", "2", "--worker-accept", "handover", "--drain-timeout", "3")
    assert two is not None and (two.count, two.accept, two.drain_timeout) == (2, "handover", 3.0)
    with pytest.raises(SystemExit, match="--workers must be at least 1"):
        spec("--workers", "0")
    with pytest.raises(SystemExit, match="cannot be combined with --intercept"):
        spec("--workers", "2", "--intercept")
