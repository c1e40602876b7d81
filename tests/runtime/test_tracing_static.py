"""``metamesh proxy --config FILE --tracing-*``: the static mode traces as ``up`` and
``proxy --xds`` do (it used to accept the options and ignore them).

A real process on a static config, a real Apache THeader client calling a real Apache THeader
server through it with its own ``traceparent``, and a real OTLP receiver (the official
``opentelemetry-proto`` TraceService over gRPC): the proxy's span arrives (flushed when the
proxy stops on SIGTERM) in the client's trace as the child of the client's span, and the server
received that span as its parent. A second call without context, at sample rate 0, is not
traced (and the server receives no ``traceparent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from tests.codecs.thrift.apache_peer import ApacheServer, connect
from tests.runtime import mesh_config as mc
from tests.runtime.thrift_servers import NamedCalc
from tests.support.otlp import OtlpReceiver
from tests.support.ports import free_port

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ROOT = Path(__file__).resolve().parents[2]
TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def static_config(path: Path, port: int, upstream: int, **match: str) -> None:
    """One Thrift listener on ``port``, one route (matching ``match``, else every call) to
    ``upstream``."""
    listener = mc.listener("calc", "thrift", "calc.test_1")
    listener["address"]["socket_address"]["port_value"] = port
    doc = {
        "static_resources": {
            "listeners": [listener],
            "clusters": [mc.cluster("outbound|1||calc.test", upstream)],
            "route_configs": [
                {
                    "name": "calc.test_1",
                    "routes": [mc.route("calc", "outbound|1||calc.test", **match)],
                }
            ],
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def start_proxy(cfg: Path, admin: int, receiver: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metamesh", "proxy", "--config", str(cfg),
         "--admin-port", str(admin), "--tracing-endpoint", receiver,
         "--tracing-protocol", "grpc", "--tracing-sample-rate", "0"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line, deadline = "", time.monotonic() + 30
    while "admin on" not in line:
        assert time.monotonic() < deadline, "the proxy did not start"
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"proxy exited early: {proc.stderr.read()}"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_static_proxy_exports_spans_of_thrift_theader_calls(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    port, admin = free_port(), free_port()
    with ExitStack() as stack:
        stack.callback(receiver.stop)
        server = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "B")), "header", "binary")
        )
        static_config(tmp_path / "proxy.yaml", port, server.port)
        proc = start_proxy(tmp_path / "proxy.yaml", admin, receiver.grpc_address)
        stack.callback(stop, proc)
        with connect(calc_gen.Calc, "header", "binary", port) as peer:
            peer.protocol.set_header(b"traceparent", f"00-{TRACE}-{CLIENT_SPAN}-01".encode())
            assert peer.client.echo("traced") == "B:traced"
        with connect(calc_gen.Calc, "header", "binary", port) as peer:
            assert peer.client.echo("plain") == "B:plain"  # no context, rate 0: not traced
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # the exporter is flushed on the way out
        [(service, span)] = receiver.wait_for(1)
        time.sleep(0.2)  # a second span would have been in the same flush
        assert len(receiver.spans) == 1
        assert service == "metamesh"  # a static proxy has no workload of its own
        assert span.trace_id.hex() == TRACE and span.parent_span_id.hex() == CLIENT_SPAN
        assert span.kind == span.SPAN_KIND_CLIENT
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["rpc.system"].string_value == "thrift"
        assert attributes["metamesh.route"].string_value == "calc"
        assert attributes["metamesh.cluster"].string_value == "outbound|1||calc.test"
        assert attributes["server.port"].int_value == server.port
        traced, plain = server.headers
        assert traced[b"traceparent"].decode() == f"00-{TRACE}-{span.span_id.hex()}-01"
        assert b"traceparent" not in plain
