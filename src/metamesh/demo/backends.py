"""``metamesh demo backends DIR``: the sample servers a config directory's ServiceEntries name.

A mesh directory such as ``examples/mesh`` declares services (ServiceEntry) with endpoints per
version, but nothing serves them. This command reads the directory the way the control plane
does (:func:`metamesh.api.loader.load_paths`, :func:`metamesh.control.model.build_model`) and,
for every endpoint of a Thrift or Dubbo MetaProtocol port, starts the live demo's real sample
server for it (:mod:`metamesh.demo.services`: Apache thrift, or dubbo-py serving the interface
the ServiceEntry's ``interface`` annotation names) on the endpoint's address and port, labelled
with the endpoint's ``version``. It then serves until Ctrl-C or SIGTERM and says how many calls
each server handled.

:func:`sample_services` is the pure part (directory -> what to serve, and where clients call),
shared with ``metamesh demo client`` (:mod:`metamesh.demo.client`).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from metamesh.demo.mesh import DemoError

if TYPE_CHECKING:
    from metamesh.demo.services import SampleServer

#: The codecs the sample servers speak, and the library behind each.
SAMPLE_CODECS = {"thrift": "Apache thrift", "dubbo": "dubbo-py"}


@dataclass(frozen=True, slots=True)
class SampleEndpoint:
    address: str
    port: int
    version: str


@dataclass(frozen=True, slots=True)
class SampleService:
    """One Thrift or Dubbo service port of a mesh directory: where clients call it (the
    ServiceEntry's address and port) and the endpoints that serve it."""

    protocol: str  # "thrift" or "dubbo"
    host: str
    interface: str  # the Dubbo interface; "" for Thrift
    address: str
    port: int
    endpoints: tuple[SampleEndpoint, ...]


def sample_services(directory: str | Path) -> list[SampleService]:
    """The Thrift and Dubbo services ``directory`` declares; :class:`DemoError` if it holds
    errors or none."""
    from metamesh.api.base import fqdn
    from metamesh.api.istio import ServiceEntry
    from metamesh.api.loader import load_paths
    from metamesh.control.model import build_model

    if not Path(directory).is_dir():
        raise DemoError(f"{directory}: not a directory (give a mesh config directory)")
    resources = load_paths([directory])
    errors = [p for p in resources.problems if p.is_error]
    if errors:
        listed = "\n".join(f"  {p.format()}" for p in errors)
        raise DemoError(f"{directory} has errors (metamesh validate {directory}):\n{listed}")
    interfaces = {
        fqdn(host, se.namespace): se.metadata.annotations.get("interface", "")
        for se in resources.of_kind(ServiceEntry)
        for host in se.spec.hosts
    }
    found = []
    for service in build_model(resources).services.values():
        for port in service.ports:
            if port.codec not in SAMPLE_CODECS:
                continue
            endpoints = tuple(
                SampleEndpoint(e.address, e.port_for(port), dict(e.labels).get("version", ""))
                for e in service.endpoints
            )
            interface = interfaces.get(service.host) or service.host
            found.append(
                SampleService(
                    port.codec,
                    service.host,
                    interface if port.codec == "dubbo" else "",
                    service.addresses[0],
                    port.number,
                    endpoints,
                )
            )
    if not found:
        raise DemoError(f"{directory}: no ServiceEntry with a Thrift or Dubbo MetaProtocol port")
    return found


def _start(service: SampleService, endpoint: SampleEndpoint) -> SampleServer:
    from metamesh.demo.services import DubboDemoProvider, ThriftHelloServer

    version, address, port = endpoint.version, endpoint.address, endpoint.port
    try:
        if service.protocol == "thrift":
            return ThriftHelloServer(version, address, port)
        return DubboDemoProvider(version, address, port, service.interface)
    except OSError as e:
        raise DemoError(
            f"cannot serve {service.host} {version} on {address}:{port}: {e.strerror or e} "
            "(is another `metamesh demo backends` running?)"
        ) from None


@contextmanager
def serving(services: list[SampleService]) -> Iterator[list[tuple[SampleService, SampleServer]]]:
    """Every endpoint's server bound and started; all stopped when the block ends."""
    started: list[tuple[SampleService, SampleServer]] = []
    try:
        for service in services:
            for endpoint in service.endpoints:
                server = _start(service, endpoint)
                started.append((service, server))
                server.start()
        yield started
    finally:
        for _, server in reversed(started):
            server.stop()


def describe(services: list[SampleService]) -> list[str]:
    """What serves where, and where clients call, as lines for a person."""
    lines = []
    for s in services:
        what = f"{SAMPLE_CODECS[s.protocol]}" + (f", {s.interface}" if s.interface else "")
        lines.append(f"  {s.protocol:<7} {s.host}  ({what})")
        lines += [f"    {e.version or '(no version)':<4} {e.address}:{e.port}" for e in s.endpoints]
    calls = ", ".join(f"{s.address}:{s.port} ({s.protocol})" for s in services)
    return [*lines, f"Clients call the ServiceEntry addresses, through the mesh: {calls}"]


def run_backends(directory: str, out: TextIO = sys.stdout) -> int:
    """``metamesh demo backends DIR``: serve until Ctrl-C or SIGTERM; the exit code."""
    from metamesh.demo import configure_demo_logging

    configure_demo_logging()
    try:
        services = sample_services(directory)
        with serving(services) as started:
            out.write(f"metamesh demo backends: sample servers for {directory}\n")
            out.write("\n".join(describe(services)) + "\n")
            out.write("Serving; Ctrl-C to stop.\n")
            out.flush()
            _wait_for_stop()
            handled = ", ".join(
                f"{s.protocol} {server.version} {sum(server.counters.snapshot().values())}"
                for s, server in started
            )
            out.write(f"metamesh demo backends: stopping (calls handled: {handled})\n")
    except DemoError as e:
        print(f"metamesh demo backends: {e}", file=sys.stderr)
        return 1
    return 0


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
