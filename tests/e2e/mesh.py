"""Helpers for the end-to-end tests: ``metamesh`` subprocesses, config files, Thrift clients.

:class:`Metamesh` runs one ``metamesh`` command with stdout/stderr in files, waits for a line,
and always ends the process (SIGTERM, then SIGKILL) when its ``with`` block ends.
``service_with_subsets`` is the ServiceEntry + DestinationRule every e2e mesh starts from;
``thrift_mesh`` writes it for the Thrift service (on a 127.0.10.x address and a free port, v1/v2
subsets over two real servers on 127.0.0.1), and ``router`` a MetaRouter whose routes the test
passes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport

from metamesh import build_info
from tests.support.ports import free_port

HOST = "thrift-e2e.demo.svc.cluster.local"
THRIFT_META = "{name: thrift-e2e, namespace: demo}"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def free_address() -> tuple[str, int]:
    """A 127.0.10.x address and a port free on it (lo holds all of 127/8 on Linux)."""
    address = f"127.0.10.{random.randint(100, 250)}"
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return address, port


class Metamesh:
    """One ``metamesh`` subprocess; see the module docstring."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self.args = [sys.executable, "-m", "metamesh", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Metamesh:
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=err, env=env)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.stderr()
            return text in self.stdout()

        wait_until(seen, repr(text), timeout)

    def admin(self) -> str:
        self.wait_for("admin on 127.0.0.1:")
        line = next(x for x in self.stdout().splitlines() if "admin on 127.0.0.1:" in x)
        return "127.0.0.1:" + line.rsplit("127.0.0.1:", 1)[1].split()[0].strip(",")


#: The deployed modes a live-edit test runs in: ``metamesh up DIR``, and ``metamesh
#: control-plane`` + ``metamesh proxy --xds`` as two processes.
MODES = ("up", "xds")


class DeployedMesh:
    """One proxy fed from a config directory over xDS, in one of :data:`MODES`.

    It reads like :class:`Metamesh`: ``wait_for`` and ``stdout`` are the proxy's (it prints
    what it serves), ``stderr`` is where config errors go (the control plane's), ``admin`` is
    the proxy's admin address, ``stop`` ends both and returns the proxy's exit code.
    ``proxy_args`` go to the process that runs the proxy (``--access-log PATH``...).
    """

    def __init__(self, tmp: Path, mode: str, directory: Path, *proxy_args: str) -> None:
        self.mode = mode
        if mode == "up":
            self.proxy = Metamesh(tmp, "up", "up", str(directory), "--admin-port", "0", *proxy_args)
            self.control = self.proxy
            return
        assert mode == "xds", mode
        xds = str(free_port())
        self.control = Metamesh(
            tmp, "control-plane", "control-plane", "--config-dir", str(directory), "--xds-port", xds
        )
        self.proxy = Metamesh(
            tmp, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
            "--node-id", "e2e-proxy", *proxy_args,
        )  # fmt: skip

    def __enter__(self) -> DeployedMesh:
        if self.control is not self.proxy:
            self.control.__enter__()
            self.control.wait_for("control plane (xDS) on")
        self.proxy.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        code = self.proxy.stop()
        self.control.stop()
        return code

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        self.proxy.wait_for(text, timeout)

    def stdout(self) -> str:
        return self.proxy.stdout()

    def stderr(self) -> str:
        return self.control.stderr()

    def admin(self) -> str:
        return self.proxy.admin()


ACCESS_FIELDS = {
    "protocol", "listener", "downstream", "interface", "method", "route", "cluster", "endpoint",
    "response_code", "duration_ms", "request_id", "oneway",
}  # fmt: skip


def access_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of an access log, each checked to carry every field of the static mode."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        assert set(record) == ACCESS_FIELDS, record
    return records


def check_server_info(admin: str) -> dict[str, Any]:
    """The proxy's ``/server_info``: served on uvloop, by the build this test run imports."""
    with urllib.request.urlopen(f"http://{admin}/server_info", timeout=5) as reply:
        info: dict[str, Any] = json.loads(reply.read())
    assert info["loop"] == "uvloop", info
    assert info["build"] == build_info.describe(), info
    return info


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, as an editor's save does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def service_with_subsets(
    meta: str,
    host: str,
    address: tuple[str, int],
    port_name: str,
    subsets: dict[str, int],
    app: str | None = None,
) -> str:
    """A ServiceEntry on ``address`` and a DestinationRule, one subset per 127.0.0.1 endpoint.

    ``meta`` is the YAML metadata mapping (``{name: x, namespace: y}``); ``subsets`` maps each
    subset name to its endpoint's port, and the endpoint is labelled ``version: <subset>`` (and,
    with ``app``, Istio's ``app: <app>`` too).
    """
    extra = f"app: {app}, " if app else ""
    endpoints = "".join(
        f"  - {{address: 127.0.0.1, ports: {{{port_name}: {p}}}, "
        f"labels: {{{extra}version: {v}}}}}\n"
        for v, p in subsets.items()
    )
    names = "".join(f"  - {{name: {v}, labels: {{version: {v}}}}}\n" for v in subsets)
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {meta}
spec:
  hosts: [{host}]
  addresses: [{address[0]}]
  ports: [{{number: {address[1]}, name: {port_name}}}]
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {meta}
spec:
  host: {host}
  subsets:
{names}"""


def thrift_mesh(directory: Path, address: str, port: int, v1: int, v2: int) -> None:
    text = service_with_subsets(
        THRIFT_META,
        HOST,
        (address, port),
        "tcp-metaprotocol-thrift-e2e",
        {"v1": v1, "v2": v2},
    )
    write(directory / "service.yaml", text)


def router(routes: str, host: str = HOST, meta: str = THRIFT_META) -> str:
    """A MetaRouter for ``host`` (the Thrift e2e service unless told); ``routes``: its YAML list."""
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {meta}
spec:
  hosts: [{host}]
  routes:
{routes}
"""


def to(subset: str, weight: int | None = None, host: str = HOST) -> str:
    w = f", weight: {weight}" if weight is not None else ""
    return f"{{destination: {{host: {host}, subset: {subset}}}{w}}}"


class ThriftClient:
    """An Apache framed/binary Calc client on one TCP connection to ``address:port``."""

    def __init__(self, gen: types.ModuleType, address: str, port: int) -> None:
        self.socket = TSocket.TSocket(address, port)
        self.socket.setTimeout(10_000)
        self.transport = TFramedTransport(self.socket)
        self.transport.open()
        self.client: Any = gen.Calc.Client(TBinaryProtocolAccelerated(self.transport))
        self.local = self.socket.handle.getsockname()

    def echo(self, text: str) -> str:
        answer: str = self.client.echo(text)
        return answer

    def same_connection(self) -> bool:
        return self.socket.handle is not None and self.socket.handle.getsockname() == self.local

    def close(self) -> None:
        self.transport.close()
