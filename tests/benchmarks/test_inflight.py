"""The in-flight memory benchmark (benchmarks/inflight.py) and the responder's hold mode.

Real processes on 127.0.0.1 at a tiny shape, no Envoy, no timing or memory assertions: the
responder keeps replies while holding and writes them all on release, and a metamesh proxy
(pure build, circuit breakers raised by the benchmark's config) holds every request, reports
them in its gauge and answers them all once released.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from benchmarks.frames import reply_scanner, request_template
from benchmarks.inflight import (
    Control,
    measure,
    metamesh_template,
    sans_io_breakdown,
    start_hold_responder,
)
from benchmarks.processes import stop_process
from benchmarks.targets import Target
from benchmarks.workers import Setup
from metamesh.proxy import request_path


@pytest.mark.parametrize("protocol", ["thrift", "dubbo"])
def test_hold_mode_keeps_replies_until_released(protocol: str, tmp_path: Path) -> None:
    proc, port, control_port = start_hold_responder(protocol, tmp_path)
    control = Control(control_port)
    template, scan = request_template(protocol), reply_scanner(protocol)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert control.ask("hold") == "holding"
            s.sendall(b"".join(template.build(i) for i in (5, 6, 7)))
            while control.ask("count") != "3":
                pass
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(1)  # nothing is answered while holding
            assert control.ask("release") == "3"
            s.settimeout(10)
            buf = b""
            ids: list[int] = []
            while len(ids) < 3:
                buf += s.recv(65536)
                used, errors = scan(buf, ids)
                buf = buf[used:]
                assert errors == 0
            assert ids == [5, 6, 7]
            assert control.ask("count") == "0"
            s.sendall(template.build(8))  # released: answered at once again
            ids = []
            while not ids:
                scan(s.recv(65536), ids)
            assert ids == [8]
    finally:
        control.close()
        stop_process(proc)


def test_measure_holds_every_request_in_metamesh(tmp_path: Path) -> None:
    protocol = "dubbo"
    proc, port, control_port = start_hold_responder(protocol, tmp_path)
    control = Control(control_port)
    setup = Setup("metamesh", "static-pure", 1)
    setup.target = Target(setup.kind, protocol, tmp_path)
    args = argparse.Namespace(protocol=protocol, connections=3, per_connection=600, settle=0.1)
    try:  # 1,800 in flight: above the default circuit breaker of 1,024
        setup.target.start(port, {"metamesh_config": str(metamesh_template(protocol, tmp_path))})
        assert setup.target.pid is not None
        setup.pids = [setup.target.pid]
        result = measure(setup, args, control, [proc.pid])
    finally:
        setup.target.stop()
        control.close()
        stop_process(proc)
    assert "failed" not in result, result
    assert result["held_by_responder"] == result["proxy_in_flight_gauge"] == 1_800
    assert result["answered"] == 1_800 and result["error_replies"] == 0
    assert result["upstream_connections_in_flight"] == 1
    assert result["proxy_in_flight_after_release"] == 0


@pytest.mark.parametrize("protocol", ["thrift", "dubbo"])
def test_sans_io_breakdown_charges_the_held_requests(protocol: str) -> None:
    found = sans_io_breakdown(protocol, connections=4, per_connection=300)  # 1,200 > 1,024 held
    assert found["bytes_per_request"] >= found["getsizeof"]["ActiveRequest"]
    sources = [line for line, _size, _count in found["by_line"]]
    if request_path.__file__.endswith(".py"):  # compiled, it charges its callers instead
        assert any("proxy/request_path.py" in line for line in sources), sources
