"""One control plane, two data planes: a metamesh proxy and a real Envoy fed the same config.

:class:`TwoDataPlanes` runs ``metamesh control-plane --config-dir DIR`` (one process), a
``metamesh proxy --xds`` (the metamesh data plane, node ``e2e-proxy``) and a real Envoy
(:class:`~tests.control.envoy.envoy_node.EnvoyNode`, node ``e2e-envoy``) against its ADS port.
Both proxies get the services' listeners; Envoy is told to bind them on another loopback
address (node metadata ``METAMESH_LISTEN_ADDRESS``), since both run on this host without
network namespaces. A test drives the same clients through :attr:`metamesh` and :attr:`envoy`
(each an ``(address, port)``) and compares what each proxy counted with what the servers saw.
"""

from __future__ import annotations

import random
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from metamesh.demo.mesh import ProxyCounts, parse_prometheus
from tests.control.envoy.envoy_node import EnvoyNode
from tests.e2e.mesh import Metamesh, wait_until
from tests.support.ports import free_port

ROUTE_CHANGE_BUDGET = 2.0  # seconds from the file write to the new route in force on both


def envoy_address(port: int) -> str:
    """A 127.0.11.x address where ``port`` is free (Envoy's side of the side-by-side test)."""
    for _ in range(50):
        address = f"127.0.11.{random.randint(2, 250)}"
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return address
    raise AssertionError(f"no 127.0.11.x address with port {port} free")


class TwoDataPlanes:
    """The control plane, a metamesh proxy and an Envoy; see the module docstring."""

    def __init__(self, tmp: Path, config: Path, service: tuple[str, int]) -> None:
        xds = free_port()
        self.control = Metamesh(
            tmp, "control-plane", "control-plane", "--config-dir", str(config),
            "--xds-port", str(xds),
        )  # fmt: skip
        self.proxy = Metamesh(
            tmp, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
            "--node-id", "e2e-proxy",
        )  # fmt: skip
        self.xds_port = xds
        self.tmp = tmp
        self.metamesh = service
        self.envoy = (envoy_address(service[1]), service[1])
        self.envoy_node: EnvoyNode | None = None

    def __enter__(self) -> TwoDataPlanes:
        self.control.__enter__()
        self.control.wait_for("control plane (xDS) on")
        self.proxy.__enter__()
        self.envoy_node = EnvoyNode(
            self.xds_port, self.tmp, "e2e-envoy", {"METAMESH_LISTEN_ADDRESS": self.envoy[0]}
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.envoy_node is not None:
            self.envoy_node.close()
        self.proxy.stop()
        self.control.stop()

    @property
    def node(self) -> EnvoyNode:
        assert self.envoy_node is not None
        return self.envoy_node

    def wait_for_envoy(self, predicate: Callable[[str], bool], what: str) -> None:
        """Until ``predicate`` holds for Envoy's config dump (its text), and its listener
        accepts connections."""
        wait_until(lambda: predicate(self.node.get("/config_dump")), what, 20)
        wait_until(lambda: _accepts(self.envoy), "Envoy's listener", 10)

    def metamesh_counts(self) -> ProxyCounts:
        with urllib.request.urlopen(f"http://{self.proxy.admin()}/stats/prometheus") as reply:
            return parse_prometheus(reply.read().decode())


def _accepts(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def within_budget(polls: list[Callable[[], bool]], streak: int = 20) -> float:
    """Call each poll in turn until each has answered True ``streak`` times in a row; the
    seconds taken (asserted within :data:`ROUTE_CHANGE_BUDGET`)."""
    start = time.monotonic()
    runs = [0] * len(polls)
    while min(runs) < streak:
        assert time.monotonic() - start < ROUTE_CHANGE_BUDGET, f"route change not in force {runs}"
        for i, poll in enumerate(polls):
            if runs[i] < streak:
                runs[i] = runs[i] + 1 if poll() else 0
    return time.monotonic() - start
