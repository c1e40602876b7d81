"""``metamesh demo client thrift|dubbo [DIR]``: a few real calls through the mesh, one per line.

The client reads where to call from the mesh directory's ServiceEntry for that protocol
(:func:`metamesh.demo.backends.sample_services`: its address and port, and for Dubbo the
interface), opens ONE connection with the live demo's real client (:mod:`metamesh.demo.traffic`:
thriftpy2 for Thrift, dubbo-py for Dubbo), calls ``sayHello`` and ``echo`` in turn, and prints
each reply with the version that answered (every sample server's reply starts with it), then a
tally per version. A failed call is printed with the error the client received (a Thrift
``TApplicationException``, a Dubbo error status: for example the proxy's ``no route for ...``)
and makes the exit code 1; so does a connection that cannot be opened, with what to check.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

from metamesh.demo.backends import SampleService, sample_services
from metamesh.demo.mesh import DemoError


def pick_service(protocol: str, directory: str | Path) -> SampleService:
    """The first ``protocol`` service of ``directory``."""
    for service in sample_services(directory):
        if service.protocol == protocol:
            return service
    raise DemoError(f"{directory}: no ServiceEntry with a {protocol} MetaProtocol port")


def run_client(protocol: str, directory: str, count: int, out: TextIO = sys.stdout) -> int:
    """``metamesh demo client``: ``count`` calls; 0 when every one was answered."""
    from metamesh.demo import configure_demo_logging
    from metamesh.demo.services import METHODS
    from metamesh.demo.traffic import Client, DubboConsumer, ThriftHelloClient

    configure_demo_logging()
    try:
        service = pick_service(protocol, directory)
    except DemoError as e:
        print(f"metamesh demo client: {e}", file=sys.stderr)
        return 1
    where = f"{service.address}:{service.port}"
    try:
        client: Client = (
            ThriftHelloClient(service.address, service.port)
            if protocol == "thrift"
            else DubboConsumer(service.address, service.port, service.interface)
        )
    except Exception as e:  # the libraries' connect errors differ; all mean the same here
        print(
            f"metamesh demo client: cannot connect to {where} ({e}): is "
            f"`metamesh up {directory}` running?",
            file=sys.stderr,
        )
        return 1
    name = service.interface or service.host
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
