"""A dubbo-py provider for the tracing test: ``python dubbopy_chain.py PORT NAME [HOST NEXT]``.

``sayHello(x)`` answers ``NAME:x|<traceparent it received>``; with ``HOST NEXT`` it first calls
``sayHello(x)`` at HOST:NEXT (through the mesh) with the trace context it received
(``traceparent``, ``tracestate``), as an instrumented service would, and answers
``NAME>`` + that reply. Prints ``READY <port>`` (tests/codecs/dubbo/peers.py's convention)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers" / "dubbo"))

import dubbopy_provider as base  # importing it patches dubbo-py to stay on loopback

_local = threading.local()


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    target = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 4 else None

    def say_hello(x: str) -> str:
        parent = base._get_attachment("traceparent") or ""
        if target is None:
            return f"{name}:{x}|{parent}"
        client: Any = getattr(_local, "client", None)
        if client is None:
            from dubbo.client import DubboClient

            client = _local.client = DubboClient(target[0], target[1], dubbo_version="2.0.2")
        context = {"traceparent": parent} if parent else {}
        reply = client.send_request_and_return_response(
            service_name=base.IFACE,
            method_name="sayHello",
            args=[x],
            service_version="0.0.0",
            attachment=context,
        )
        return f"{name}>{reply.data}"

    svc = base.ds.DubboService(port, f"chain-{name}", dubbo_version="2.0.2")
    svc.add_method(base.IFACE, "sayHello", say_hello)
    svc.start()
    print("READY", svc._server.server.server_address[1], flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
