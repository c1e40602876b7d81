"""``metamesh demo client thrift|dubbo [DIR]``: a few real calls through the mesh, one per line.

The client reads where to call from the mesh directory's ServiceEntry for that protocol
(:func:`metamesh.demo.backends.sample_services`: its address and port, and for Dubbo the
interface), opens ONE connection with the live demo's real client (:mod:`metamesh.demo.traffic`:
thriftpy2 for Thrift, dubbo-py for Dubbo), calls ``sayHello`` and ``echo`` in turn, and prints
each reply with the version that answered (every sample server's reply starts with it), then a
tally per version. A failed call is printed with the error the client received (a Thrift
``TApplicationException``, a Dubbo error status: for example the proxy's ``no route for ...``)
and makes the exit code 1; so does a connection that cannot be opened within ``--wait`` seconds
(the mesh may still be starting), with what to check.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from metamesh.demo.backends import SampleService, sample_services
from metamesh.demo.mesh import DemoError

if TYPE_CHECKING:
    from metamesh.demo.traffic import Client


def pick_service(protocol: str, directory: str | Path) -> SampleService:
    """The first ``protocol`` service of ``directory``."""
    for service in sample_services(directory):
        if service.protocol == protocol:
            return service
    raise DemoError(f"{directory}: no ServiceEntry with a {protocol} MetaProtocol port")


def run_client(
    protocol: str, directory: str, count: int, wait: float = 10.0, out: TextIO = sys.stdout
) -> int:
    """``metamesh demo client``: ``count`` calls; 0 when every one was answered."""
    from metamesh.demo import configure_demo_logging
    from metamesh.demo.services import METHODS

    configure_demo_logging()
    try:
        service = pick_service(protocol, directory)
        client = connect(service, wait, directory)
    except DemoError as e:
        print(f"metamesh demo client: {e}", file=sys.stderr)
        return 1
    name = service.interface or service.host
    where = f"{service.address}:{service.port}"
    out.write(f"{protocol} {name} at {where}, {count} calls on one connection:\n")
    versions: Counter[str] = Counter()
    failed = 0
    try:
        for n in range(1, count + 1):
            method = METHODS[(n - 1) % len(METHODS)]
            arg = f"call-{n}"
            try:
                reply = client.call(method, arg)
            except Exception as e:  # what the client raised is the point: show it
                failed += 1
                out.write(f"  {n:>3} {method}({arg!r}) failed: {type(e).__name__}: {e}\n")
                continue
            version = reply.partition(":")[0]
            versions[version] += 1
            out.write(f"  {n:>3} {method}({arg!r}) -> {version}  {reply!r}\n")
    finally:
        client.close()
    tally = ", ".join(f"{v} {versions[v]}" for v in sorted(versions)) or "none"
    out.write(f"answered by: {tally}; failed: {failed}\n")
    return 1 if failed else 0


def connect(service: SampleService, wait: float, directory: str) -> Client:
    """The client for ``service`` on a new connection, trying for up to ``wait`` seconds (the
    mesh may still be starting: ``metamesh up DIR &`` and then this, pasted together)."""
    from thriftpy2.transport import TTransportException

    from metamesh.demo.traffic import DubboConsumer, ThriftHelloClient

    where = f"{service.address}:{service.port}"
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            if service.protocol == "thrift":
                return ThriftHelloClient(service.address, service.port)
            return DubboConsumer(service.address, service.port, service.interface)
        except (OSError, TTransportException) as e:
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"cannot connect to {where} ({e}): is `metamesh up {directory}` running?"
                ) from None
        if not said:
            print(
                f"metamesh demo client: waiting for {where} to accept connections", file=sys.stderr
            )
            said = True
        time.sleep(0.2)
