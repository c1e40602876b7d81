"""Dubbo route timeout end to end: a real dubbo-py consumer gets Dubbo status 31.

The MetaRouter sends ``sayHello`` to the real dubbo-py provider and everything else to a
provider address that accepts connections and never answers (a hung server), with metamesh's
route ``timeout: 300ms``. The consumer sees ``SERVER_TIMEOUT`` (31) with the proxy's reason,
and its next call on the same connection is answered normally.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.codecs.dubbo import peers
from tests.e2e.mesh import Metamesh, free_address, router, service_with_subsets, to, write

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
IFACE = "org.apache.dubbo.demo.DemoService"
HOST = IFACE.lower()
META = "{name: demo, namespace: dubbo}"


class HungServer:
    """Accepts TCP connections on 127.0.0.1 and reads, but never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        for conn in self.accepted:
            conn.close()
        self.accepted.clear()
        self.thread.join(5)


def manifests(address: tuple[str, int], provider: int, hung: int) -> str:
    subsets = {"live": provider, "hung": hung}
    port_name = "tcp-metaprotocol-dubbo-demo"
    routes = f"""  - name: hello
    match: {{attributes: {{method: {{exact: sayHello}}}}}}
    route: [{to("live", host=HOST)}]
  - name: rest
    route: [{to("hung", host=HOST)}]
    timeout: 300ms"""
    service = service_with_subsets(META, HOST, address, port_name, subsets)
    return service + "---" + router(routes, host=HOST, meta=META)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[str, int]]:
    provider = peers.start_dubbopy_provider()
    hung = HungServer()
    try:
        config = tmp_path / "mesh"
        config.mkdir()
        address = free_address()
        write(config / "mesh.yaml", manifests(address, provider.port, hung.port))
        with Metamesh(tmp_path, "up", "up", str(config), "--admin-port", "0") as up:
            up.wait_for(f"{address[0]}:{address[1]}")
            yield address
            hung.close()  # first, so the proxy's drain has no upstream left to wait for
    finally:
        hung.close()
        provider.stop()


def test_dubbo_route_timeout_is_status_31(mesh: tuple[str, int]) -> None:
    from dubbo.client import DubboClient

    client = DubboClient(mesh[0], mesh[1], dubbo_version="2.0.2")

    def call(method: str, *args: Any) -> Any:
        return client.send_request_and_return_response(
            service_name=IFACE, method_name=method, args=list(args), service_version="0.0.0"
        )

    slow = call("echo", "x")
    assert (slow.ok, slow.status) == (False, 31)
    assert "route timeout" in str(slow.error)
    hello = call("sayHello", "mesh")
    assert (hello.ok, hello.status) == (True, 20), hello.error
    client._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close()
