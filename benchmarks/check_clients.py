"""Check that real client libraries work through every benchmark target before trusting numbers.

Usage: ``.venv/bin/python benchmarks/check_clients.py [--protocol thrift|dubbo|both]``.

The load generator's hand-encoded frames prove only that the proxy and the responder agree with
each other. This script starts the same responder and targets as ``compare.py`` and makes calls
with independent implementations: the Apache ``thrift`` library (TFramedTransport +
TBinaryProtocol, ``add(2, 40)`` must return 42 with the call's seqid) and ``dubbo-py``'s
``DubboClient`` (``sayHello("world")`` must return status 20 and "Hello world"). It prints one
line per target and exits non-zero if any available target fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import start_responder
from benchmarks.frames import DUBBO_INTERFACE, DUBBO_METHOD
from benchmarks.targets import (
    TARGET_KINDS,
    Target,
    Unavailable,
    find_envoy,
    prepare_native,
    stop_process,
)


def thrift_call(port: int, calls: int = 20) -> str:
    from thrift.protocol import TBinaryProtocol
    from thrift.Thrift import TMessageType, TType
    from thrift.transport import TSocket, TTransport

    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(5000)
    transport = TTransport.TFramedTransport(sock)
    proto = TBinaryProtocol.TBinaryProtocol(transport)
    transport.open()
    try:
        for seqid in range(1, calls + 1):
            proto.writeMessageBegin("add", TMessageType.CALL, seqid)
            proto.writeStructBegin("add_args")
            for fid, value in ((1, seqid), (2, 40)):
                proto.writeFieldBegin("ab"[fid - 1], TType.I32, fid)
                proto.writeI32(value)
                proto.writeFieldEnd()
            proto.writeFieldStop()
            proto.writeStructEnd()
            proto.writeMessageEnd()
            transport.flush()
            name, mtype, rseqid = proto.readMessageBegin()
            proto.readStructBegin()
            _, ftype, fid = proto.readFieldBegin()
            if (name, mtype, rseqid, ftype, fid) != (
                "add",
                TMessageType.REPLY,
                seqid,
                TType.I64,
                0,
            ):
                raise AssertionError(f"unexpected reply {name} type {mtype} seqid {rseqid}")
            result = proto.readI64()
            proto.readFieldEnd()
            proto.readFieldBegin()  # STOP
            proto.readStructEnd()
            proto.readMessageEnd()
            if result != seqid + 40:
                raise AssertionError(f"add({seqid}, 40) returned {result}")
    finally:
        transport.close()
    return f"Apache thrift: {calls} x add(n, 40) OK"


def dubbo_call(port: int, calls: int = 20) -> str:
    from dubbo.client import DubboClient

    client = DubboClient("127.0.0.1", port, dubbo_version="2.0.2")
    for _ in range(calls):
        r = client.send_request_and_return_response(
            service_name=DUBBO_INTERFACE,
            method_name=DUBBO_METHOD,
            args=["world"],
            service_version="0.0.0",
        )
        if r.status != 20 or r.data != "Hello world":
            raise AssertionError(f"status {r.status} data {r.data!r} error {r.error!r}")
    return f"dubbo-py: {calls} x sayHello('world') OK"


def check(protocol: str, kinds: list[str], workdir: Path) -> bool:
    prepare_native(kinds, workdir)
    responder, upstream = start_responder(protocol, workdir, 120)
    ok = True
    try:
        for kind in kinds:
            target = Target(kind, protocol, workdir)
            try:
                target.start(upstream, {"envoy_bin": find_envoy()})
                call = thrift_call if protocol == "thrift" else dubbo_call
                print(f"{protocol:6} {target.label:22} {call(target.port)}")
            except Unavailable as exc:
                print(f"{protocol:6} {target.label:22} unavailable: {str(exc).splitlines()[0]}")
            except Exception as exc:
                print(f"{protocol:6} {target.label:22} FAILED: {type(exc).__name__}: {exc}")
                ok = False
            finally:
                target.stop()
    finally:
        stop_process(responder)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["thrift", "dubbo", "both"], default="both")
    parser.add_argument("--targets", default=",".join(TARGET_KINDS))
    args = parser.parse_args(argv)
    protocols = ["thrift", "dubbo"] if args.protocol == "both" else [args.protocol]
    kinds = [k.strip() for k in args.targets.split(",") if k.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="metamesh-check-"))
    try:
        results = [check(p, kinds, workdir) for p in protocols]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
