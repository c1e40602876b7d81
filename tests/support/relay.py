"""A codec-driven TCP relay for interop tests (test support, not the proxy).

It sits between a real client and a real server on 127.0.0.1 and pushes every frame through the
codec under test: requests are decoded by a downstream codec instance and either forwarded
(``codec.encode(message, mutation)``) or answered locally (``codec.error_reply``); responses are
decoded by an upstream codec instance and forwarded with an optional response mutation. Every
decoded message is recorded, so tests can assert on the metadata the codec extracted from frames
written by real third-party libraries, and on what those libraries make of frames the codec wrote.

One thread per direction per connection, blocking sockets: simple and deterministic enough for
tests. The real proxy lives in ``metamesh.proxy``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from metamesh.codecs import Codec, LocalError, Message, MessageType, Mutation
from tests.support.thread_group import ThreadGroup

#: Decides what to do with a request: ``None`` forwards unchanged, a mapping forwards with that
#: mutation, a :class:`LocalError` answers locally with the codec's error reply.
RequestPolicy = Callable[[Message], "Mutation | LocalError | None"]


@dataclass
class Relay:
    """Relay 127.0.0.1:<port> -> ``upstream``; use as a context manager."""

    codec_factory: Callable[[], Codec]
    upstream: tuple[str, int]
    on_request: RequestPolicy = lambda _m: None
    response_mutation: Mutation | None = None
    answer_heartbeats: bool = True
    requests: list[Message] = field(default_factory=list)
    responses: list[Message] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads = ThreadGroup()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Relay:
        self._threads.spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in list(self._socks):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._threads.join()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self._socks += [down, up]
            self._threads.spawn(self._pump_requests, down, up)
            self._threads.spawn(self._pump_responses, up, down)

    def _pump_requests(self, down: socket.socket, up: socket.socket) -> None:
        codec = self.codec_factory()
        self._pump(down, up, codec, lambda m: self._handle_request(codec, m, down, up))

    def _pump_responses(self, up: socket.socket, down: socket.socket) -> None:
        codec = self.codec_factory()

        def handle(m: Message) -> None:
            with self._lock:
                self.responses.append(m)
            down.sendall(codec.encode(m, self.response_mutation))

        self._pump(up, down, codec, handle)

    def _handle_request(
        self, codec: Codec, m: Message, down: socket.socket, up: socket.socket
    ) -> None:
        with self._lock:
            self.requests.append(m)
        if m.type is MessageType.HEARTBEAT and self.answer_heartbeats:
            reply = codec.heartbeat_reply(m)
            if reply is not None:
                down.sendall(reply)
                return
        decision = self.on_request(m)
        if isinstance(decision, LocalError):
            down.sendall(codec.error_reply(m, decision))
        else:
            up.sendall(codec.encode(m, decision))

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        codec: Codec,
        handle: Callable[[Message], None],
    ) -> None:
        buf = bytearray()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                while (m := codec.decode(buf)) is not None:
                    handle(m)
        except OSError:
            pass
        except Exception as e:  # recorded for the test to assert on; the relay just stops
            with self._lock:
                self.errors.append(e)
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
