"""The demo's traffic: real clients calling the services through the mesh addresses.

* :class:`ThriftHelloClient`: thriftpy2 (an implementation independent of the Apache servers)
  loads ``hello.thrift`` at run time and calls over one framed/binary TCP connection.
* :class:`DubboConsumer`: dubbo-py's ``DubboClient`` over one TCP connection.

A :class:`TrafficLoop` drives one client from its own thread at a steady rate, calling
``sayHello`` and ``echo`` in turn and tallying each reply by method and by the version that
answered (every reply starts with ``<version>:``); a failed call is counted as an error with
its message. ``pause()`` returns once no call is in flight, so the demo can read the proxy's and
the servers' counters at a moment when they must agree exactly; ``resume()`` goes on, on the
same connection. The connection is opened once and kept: the demo checks at the end that each
client still uses the connection it opened.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import thriftpy2
import thriftpy2.protocol
import thriftpy2.thrift
import thriftpy2.transport
from dubbo.client import DubboClient

from metamesh.demo.services import DUBBO_INTERFACE, METHODS

HELLO_IDL = Path(__file__).with_name("hello.thrift")
CALL_TIMEOUT_MS = 5000


class DemoCallError(Exception):
    """A call answered with an error status."""


class ThriftHelloClient:
    """A thriftpy2 ``Hello`` client on one framed/binary connection."""

    def __init__(self, host: str, port: int) -> None:
        hello: Any = thriftpy2.load(str(HELLO_IDL), module_name="metamesh_demo_hello_thrift")
        transports: Any = thriftpy2.transport  # partly typed: used as untyped
        protocols: Any = thriftpy2.protocol
        self._socket = transports.TSocket(host, port, socket_timeout=CALL_TIMEOUT_MS)
        self._transport = transports.TFramedTransportFactory().get_transport(self._socket)
        self._transport.open()
        protocol = protocols.TBinaryProtocolFactory().get_protocol(self._transport)
        self._client: Any = thriftpy2.thrift.TClient(hello.Hello, protocol)
        self.local: tuple[str, int] = self._socket.sock.getsockname()

    def call(self, method: str, arg: str) -> str:
        reply: str = getattr(self._client, method)(arg)
        return reply

    def same_connection(self) -> bool:
        sock = self._socket.sock
        return sock is not None and sock.getsockname() == self.local

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._transport.close()


class DubboConsumer:
    """A dubbo-py consumer of ``interface`` (``DemoService`` unless told) on one connection."""

    def __init__(self, host: str, port: int, interface: str = DUBBO_INTERFACE) -> None:
        self.interface = interface
        self._client: Any = DubboClient(host, port, dubbo_version="2.0.2")
        self._sock: socket.socket = self._client._sock
        self.local: tuple[str, int] = self._sock.getsockname()

    def call(self, method: str, arg: str, attachments: dict[str, str] | None = None) -> str:
        answer = self._client.send_request_and_return_response(
            service_name=self.interface,
            method_name=method,
            args=[arg],
            service_version="0.0.0",
            attachment=dict(attachments or {}),
        )
        if answer.status != 20:
            raise DemoCallError(f"dubbo status {answer.status}: {answer.error}")
        data: str = answer.data
        return data

    def same_connection(self) -> bool:
        return self._sock.fileno() != -1 and self._sock.getsockname() == self.local

    def close(self) -> None:
        """Shut the socket down first: dubbo-py's reader thread then ends on EOF."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


Client = ThriftHelloClient | DubboConsumer


class ReplyTally:
    """Replies per (method, version) and failed calls, safe to read from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.replies: dict[tuple[str, str], int] = {}
        self.errors = 0
        self.last_error = ""

    def reply(self, method: str, version: str) -> None:
        with self._lock:
            self.replies[method, version] = self.replies.get((method, version), 0) + 1

    def error(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = text

    def snapshot(self) -> tuple[dict[tuple[str, str], int], int]:
        with self._lock:
            return dict(self.replies), self.errors


class TrafficLoop:
    """Calls one client at ``rate`` calls per second from a thread; see the module docstring."""

    def __init__(self, name: str, client: Client, rate: float) -> None:
        self.name = name
        self.client = client
        self.tally = ReplyTally()
        self._interval = 1.0 / rate
        self._running = threading.Event()
        self._running.set()
        self._calling = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"traffic-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _call_once(self, method: str, n: int) -> None:
        call: Callable[[str, str], str] = self.client.call
        try:
            reply = call(method, f"{self.name}-{n}")
        except Exception as exc:  # every failed call is counted and shown, never fatal
            self.tally.error(f"{method}: {type(exc).__name__}: {exc}")
        else:
            self.tally.reply(method, reply.partition(":")[0])

    def _loop(self) -> None:
        due = time.monotonic()
        for n in itertools.count():
            if self._stopped:
                return
            if not self._running.wait(0.1):
                due = time.monotonic()
                continue
            with self._calling:
                if self._running.is_set() and not self._stopped:
                    self._call_once(METHODS[n % len(METHODS)], n)
            due += self._interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.monotonic()

    def pause(self) -> None:
        """Stop calling; returns once no call is in flight."""
        self._running.clear()
        with self._calling:
            pass

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stopped = True
        self._running.set()
        self._thread.join(CALL_TIMEOUT_MS / 1000 + 1)
        self.client.close()
