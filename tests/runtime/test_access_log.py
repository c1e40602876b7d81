"""Access log lines in Envoy-style format strings (``--access-log-format``) and JSON.

The formatter on records as the core makes them; then ``metamesh proxy --config`` as a process
with a real Apache THeader client and server: one line per call in the format asked, the
method and a THeader header read through ``%META(...)%``, a call no route matches with its
``NR`` flag; and a format naming an unknown operator refused at start with exit code 2."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import types
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from thrift.Thrift import TApplicationException

from metamesh.runtime.access_log import FormatError, compile_format, json_line
from tests.chaos.traffic import IFACE, OK, DubboPeer, ServerProcess, ThriftPeer
from tests.chaos.traffic import static_config as two_listeners
from tests.codecs.thrift.apache_peer import ApacheServer, connect
from tests.e2e.mesh import Metamesh, access_records, wait_until
from tests.runtime.test_tracing_static import ROOT, static_config, stop
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port

RECORD = {
    "protocol": "dubbo",
    "listener": "calc",
    "downstream": "127.0.0.1:50000",
    "interface": "svc.Api",
    "method": "get",
    "route": "to-v1",
    "cluster": "outbound|20880|v1|svc",
    "endpoint": "127.0.0.1:20881",
    "response_code": "0",
    "duration_ms": 12.75,
    "request_id": 7,
    "oneway": False,
}
NOW = datetime.datetime(2026, 12, 5, 19, 42, 8, 500000, datetime.UTC).timestamp()


def test_operators() -> None:
    line = compile_format(
        "%START_TIME% %PROTOCOL% %META(method)% %META(user)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
        "%DURATION%ms %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% "
        "%DOWNSTREAM_REMOTE_ADDRESS% #%REQUEST_ID% 100%%"
    )
    md = {"method": "get", "interface": "svc.Api"}
    assert line(RECORD, md, NOW) == (
        "2026-12-05T19:42:08.487Z dubbo get - 0 - 12ms 127.0.0.1:20881 outbound|20880|v1|svc "
        "to-v1 127.0.0.1:50000 #7 100%\n"
    )
    local = {**RECORD, "response_code": "no_healthy_upstream", "endpoint": None, "route": None}
    assert compile_format("%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %ROUTE_NAME%")(
        local, md, NOW
    ) == ("1 UH - -\n")
    assert json_line(RECORD, md, NOW).startswith('{"protocol":"dubbo","listener":"calc"')


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("%DURATION% %BYTES_SENT%", "unknown operator %BYTES_SENT%"),
        ("%META()%", "unknown operator %META()%"),
        ("%DURATION(3)%", "unknown operator %DURATION(3)%"),
        ("took %DURATION", "unterminated '%'"),
        ("50% %DURATION%", "unterminated '%'"),
    ],
)
def test_bad_formats_are_refused(text: str, says: str) -> None:
    with pytest.raises(FormatError, match=says.replace("(", r"\(").replace(")", r"\)")):
        compile_format(text)


FORMAT = "%META(method)% %META(tenant)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DURATION%"


def test_proxy_writes_the_format_asked(calc_gen: types.ModuleType, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with ExitStack() as stack:
        server = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "B")), "header", "binary")
        )
        cfg = tmp_path / "proxy.yaml"
        static_config(cfg, port, server.port, method="echo")
        proc = subprocess.Popen(
            [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg),
             "--admin-port", "-1", "--access-log", str(log), "--access-log-format", FORMAT],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stack.callback(stop, proc)
        assert proc.stderr is not None
        while "listener calc" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, "proxy exited early"
        with connect(calc_gen.Calc, "header", "binary", port) as peer:
            peer.protocol.set_header(b"tenant", b"acme")
            assert peer.client.echo("x") == "B:x"
            peer.protocol.set_header(b"tenant", b"acme")
            with pytest.raises(TApplicationException):  # no route for ping
                peer.client.ping()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    echo, ping = log.read_text().splitlines()
    method, tenant, code, flags, host, duration = echo.split(" ")
    assert (method, tenant, code, flags, host) == (
        "echo",
        "acme",
        "0",
        "-",
        f"127.0.0.1:{server.port}",
    )
    assert duration.isdigit()
    assert ping.split(" ")[:5] == ["ping", "acme", "1", "NR", "-"]


def test_an_unknown_operator_is_refused_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "proxy.yaml"
    static_config(cfg, free_port(), free_port())
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg), "--admin-port", "-1",
         "--access-log", "-", "--access-log-format", "%DURATION% %NOPE%"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "metamesh proxy: access log format: unknown operator %NOPE%" in out.stderr


def test_json_lines_from_real_thrift_and_dubbo_clients_in_static_mode(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """``proxy --config --access-log``: one JSON line per call of an Apache Thrift client and a
    dubbo-py consumer, with the fields every mode writes (``tests/e2e`` checks ``up`` and
    ``proxy --xds`` with the same :func:`~tests.e2e.mesh.access_records`)."""
    thrift_port, dubbo_port = free_port(), free_port()
    log = tmp_path / "access.log"
    with ExitStack() as stack:
        thrift = stack.enter_context(ServerProcess.thrift(calc_gen, "t"))
        dubbo = stack.enter_context(ServerProcess.dubbo("d"))
        cfg = tmp_path / "proxy.yaml"
        cfg.write_text(
            two_listeners(
                {
                    "calc": ("thrift", thrift_port, thrift.port),
                    "demo": ("dubbo", dubbo_port, dubbo.port),
                }
            )
        )
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--config", str(cfg), "--admin-port", "-1",
                     "--access-log", str(log))
        )  # fmt: skip
        wait_until(lambda: "listener demo on" in proxy.stderr(), "the proxy to start", 20)
        peers = [ThriftPeer(calc_gen, "127.0.0.1", thrift_port), DubboPeer("127.0.0.1", dubbo_port)]
        for peer in peers:
            for i in range(3):
                assert peer.call(f"call-{i}")[0] == OK
            peer.close()
        assert proxy.stop() == 0
    records = access_records(log)
    assert Counter((r["protocol"], r["listener"], r["method"]) for r in records) == {
        ("thrift", "calc", "echo"): 3,
        ("dubbo", "demo", "echo"): 3,
    }
    assert {r["interface"] for r in records if r["protocol"] == "dubbo"} == {IFACE}
    assert {(r["route"], r["response_code"]) for r in records} == {("all", "0")}
