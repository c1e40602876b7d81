"""``metamesh proxy`` as a real process: serves the static config, admin answers, SIGTERM drains."""

from __future__ import annotations

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

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from metamesh.codecs import Message
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def echo_server() -> tuple[socket.socket, threading.Thread]:
    """A blocking KV-RPC upstream that answers every call with ``up:<body>``."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        codec, buf = KvRpcCodec(), bytearray()
        with conn:
            while data := conn.recv(65536):
                buf += data
                while (msg := codec.decode(buf)) is not None:
                    body = b"up:" + msg.frame[msg.header_size :]
                    conn.sendall(build_frame(2, msg.request_id or 0, {}, body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def recv_message(sock: socket.socket) -> Message:
    codec, buf = KvRpcCodec(), bytearray()
    while (msg := codec.decode(buf)) is None:
        data = sock.recv(65536)
        assert data, "connection closed"
        buf += data
    return msg


def test_proxy_command_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    upstream, _ = echo_server()
    port, admin = free_port(), free_port()
    text = (ROOT / "examples" / "proxy-static.yaml").read_text()
    text = text.replace("port_value: 19000", f"port_value: {port}")
    for p in ("20001", "20002", "20003"):
        text = text.replace(f"port_value: {p}", f"port_value: {upstream.getsockname()[1]}")
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(text)
    access = tmp_path / "access.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg),
         "--admin-port", str(admin), "--access-log", str(access)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 20
        while "admin on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "proxy exited early"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as r:
            assert r.read() == b"LIVE\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=5) as r:
            assert json.loads(r.read())["loop"] == "uvloop"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(build_frame(1, 77, {"method": "get", "user": "beta-1"}, b"hi"))
            msg = recv_message(c)
            assert msg.request_id == 77 and msg.frame[msg.header_size :] == b"up:hi"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        records = access.read_text().splitlines()
        assert len(records) == 1 and '"route":"canary-by-user"' in records[0]
        rest = proc.stderr.read()
        assert re.search(r"draining", rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()


def test_proxy_command_rejects_invalid_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("static_resources: {clusters: [{name: c, lb_policy: NOPE}]}\n")
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"{cfg}: clusters[0] (name 'c'): field 'lb_policy'" in out.stderr


def test_installed_script_finds_the_example_codec_from_the_repo_root(tmp_path: Path) -> None:
    # The console script's sys.path starts with its bin directory, not the current one (as
    # `python -m` does): the codec named examples.kvrpc.kvrpc_codec:KvRpcCodec is found in
    # the current directory all the same.
    script = Path(sys.executable).with_name("metamesh")
    assert script.is_file(), script
    upstream, _ = echo_server()
    port, admin = free_port(), free_port()
    text = (ROOT / "examples" / "proxy-static.yaml").read_text()
    text = text.replace("port_value: 19000", f"port_value: {port}")
    for p in ("20001", "20002", "20003"):
        text = text.replace(f"port_value: {p}", f"port_value: {upstream.getsockname()[1]}")
    cfg = tmp_path / "proxy.yaml"  # outside the repo: only the current directory holds examples
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if "PYTHONPATH" in os.environ:  # keep a native build's path, never the repo root
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        kept = [p for p in paths if p and Path(ROOT, p).resolve() != ROOT]
        env["PYTHONPATH"] = os.pathsep.join(kept)
    proc = subprocess.Popen(
        [str(script), "proxy", "--config", str(cfg), "--admin-port", str(admin)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 20
        while "admin on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "proxy exited early"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(build_frame(1, 5, {"method": "put"}, b"x"))
            msg = recv_message(c)
            assert msg.request_id == 5 and msg.frame[msg.header_size :] == b"up:x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.close()


def test_installed_script_says_where_it_looked_for_a_codec(tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text((ROOT / "examples" / "proxy-static.yaml").read_text())
    script = Path(sys.executable).with_name("metamesh")
    out = subprocess.run(
        [str(script), "proxy", "--config", "proxy.yaml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "cannot import codec 'examples.kvrpc.kvrpc_codec:KvRpcCodec': no module named " in (
        out.stderr
    )
    assert f"(searched {tmp_path})" in out.stderr
