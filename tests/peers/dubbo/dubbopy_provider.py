"""A dubbo-py 0.2.2 provider on 127.0.0.1 for the Dubbo codec's interop tests.

Run: ``python dubbopy_provider.py [PORT]`` (0 or nothing = ephemeral). Prints ``READY <port>``
once listening. Service ``org.apache.dubbo.demo.DemoService``: ``sayHello(name)``,
``add(a, b)``, ``echo(x)``, ``fail()`` (raises ``boom``), and ``getAttachment(key)`` which
returns the request attachment ``key`` as the provider received it (dubbo-py does not hand
attachments to handlers, so the decoder is wrapped to remember them per thread).

dubbo-py binds 0.0.0.0 and probes 8.8.8.8 for its address; both are patched to stay on loopback.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import dubbo.server as ds
from dubbo.codec import hessian2

IFACE = "org.apache.dubbo.demo.DemoService"
_local = threading.local()

ds.get_pub_ip = lambda: "127.0.0.1"  # type: ignore[attr-defined]
_orig_init = ds._DubboServer.__init__


def _bind_loopback(self: Any, addr: tuple[str, int], handler: Any) -> None:
    _orig_init(self, ("127.0.0.1", addr[1]), handler)


ds._DubboServer.__init__ = _bind_loopback  # type: ignore[method-assign]
_orig_decode_request = hessian2.Decoder._decode_request_body


def _remember_attachments(self: Any, id_: int) -> Any:
    request = _orig_decode_request(self, id_)
    _local.attachment = request.attachment
    return request


hessian2.Decoder._decode_request_body = _remember_attachments  # type: ignore[method-assign]


def _get_attachment(key: str) -> str | None:
    value = getattr(_local, "attachment", {}).get(key)
    return value.decode() if isinstance(value, bytes) else value


def _fail(*_args: object) -> None:
    raise ValueError("boom")


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    svc = ds.DubboService(port, "demo-provider", dubbo_version="2.0.2")
    svc.add_method(IFACE, "sayHello", lambda name: "Hello " + name)
    svc.add_method(IFACE, "add", lambda a, b: a + b)
    svc.add_method(IFACE, "echo", lambda x: x)
    svc.add_method(IFACE, "fail", _fail)
    svc.add_method(IFACE, "getAttachment", _get_attachment)
    svc.start()
    print("READY", svc._server.server.server_address[1], flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
