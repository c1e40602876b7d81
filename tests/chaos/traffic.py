"""Good traffic for the chaos scenarios: real clients that account for every call, and the
real servers (in processes of their own) they reach through a ``metamesh`` subprocess.

Every call a :class:`Caller` makes ends as exactly one :class:`Call`, classified:

* ``OK``: the right answer (``"<server>:<text>"`` for the text sent; ``served_by`` names the
  server, so a scenario can check which subset answered);
* ``NATIVE``: the protocol's own error reply (Thrift ``TApplicationException``, a Dubbo
  response whose status is not 20), what the proxy answers for a request it cannot serve;
* ``BAD``: anything else: a transport error, a timeout, a wrong answer. The caller stops at
  the first one (its connection cannot be trusted any more) and every scenario asserts none.

:class:`ThriftPeer` is an Apache framed/binary client, :class:`DubboPeer` a dubbo-py consumer
that honours Dubbo's read-only event as a Dubbo consumer does (dubbo-py itself skips it).
:class:`ServerProcess` runs ``thrift_server.py`` or ``dubbo_provider.py`` and can be killed
(SIGKILL) and restarted on the same port.
"""

from __future__ import annotations

import contextlib
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport

HERE = Path(__file__).resolve().parent
THRIFT_SERVER = HERE / "thrift_server.py"
DUBBO_PROVIDER = HERE / "dubbo_provider.py"
IFACE = "org.apache.dubbo.demo.DemoService"

OK, NATIVE, BAD = "ok", "native error", "bad"


@dataclass(frozen=True, slots=True)
class Call:
    """One call and how it ended (see the module docstring)."""

    caller: str
    text: str
    kind: str
    served_by: str  # the answering server's name (OK), else ""
    detail: str  # the error's text (NATIVE, BAD)
    started: float
    ended: float


class Peer(Protocol):
    def call(self, text: str) -> tuple[str, str, str]:
        """(kind, served_by, detail) of one ``echo(text)``."""

    def usable(self) -> bool:
        """Whether the server side has not said to stop sending here (FIN, read-only)."""

    def close(self) -> None: ...


def peer_closed(sock: socket.socket) -> bool:
    """The proxy sent FIN (or reset): what a connection pool checks before reusing one."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def parse_answer(text: str, answer: object) -> tuple[str, str, str]:
    server, sep, echoed = str(answer).partition(":")
    if not sep or echoed != text:
        return BAD, "", f"wrong answer {answer!r}"
    return OK, server, ""


class ThriftPeer:
    """An Apache Thrift framed/binary ``Calc`` client on one connection."""

    def __init__(self, gen: types.ModuleType, address: str, port: int) -> None:
        self.socket = TSocket.TSocket(address, port)
        self.socket.setTimeout(20_000)
        self.transport = TFramedTransport(self.socket)
        self.transport.open()
        self.client: Any = gen.Calc.Client(TBinaryProtocolAccelerated(self.transport))
        self.local = self.socket.handle.getsockname()

    def call(self, text: str) -> tuple[str, str, str]:
        try:
            answer = self.client.echo(text)
        except TApplicationException as e:
            return NATIVE, "", f"TApplicationException({e.type}): {e.message}"
        except Exception as e:  # transport errors, timeouts: the call is lost
            return BAD, "", f"{type(e).__name__}: {e}"
        return parse_answer(text, answer)

    def usable(self) -> bool:
        return not peer_closed(self.socket.handle)

    def same_connection(self) -> bool:
        return self.socket.handle is not None and self.socket.handle.getsockname() == self.local

    def close(self) -> None:
        self.transport.close()


def dubbo_client_class() -> type:
    """dubbo-py's consumer, taught Dubbo's read-only event: a one-way event request whose
    body is ``"R"`` marks the connection read-only (no more requests on it), as Apache Dubbo's
    consumers do when a provider shuts down. dubbo-py would log and skip it. Its heartbeat
    thread also ends with the connection (dubbo-py's would fail on the closed socket)."""
    from dubbo.client import DubboClient
    from dubbo.codec.hessian2 import Decoder, DubboHeartBeatRequest, DubboHeartBeatResponse

    class ReadOnlyAwareClient(DubboClient):  # type: ignore[misc]
        def __init__(self, host: str, port: int) -> None:
            self.readonly = threading.Event()
            self.eof = threading.Event()
            super().__init__(host, port, dubbo_version="2.0.2")

        def _recv_loop(self) -> None:
            while True:
                try:
                    msg = Decoder(self._sock).decode()
                except (EOFError, OSError):
                    self.eof.set()
                    return
                if isinstance(msg, DubboHeartBeatRequest):
                    if msg.is_twoway():
                        self.send_heartbeat_response(msg.id)
                    elif msg.data == "R":
                        self.readonly.set()
                    continue
                if isinstance(msg, DubboHeartBeatResponse):
                    continue
                self._msg_queue.put(msg)

        def _heartbeat_loop(self) -> None:  # dubbo-py's, ending once the connection is closed
            while not self.eof.wait(60):
                try:
                    self.send_heartbeat_request(next(self._request_id))
                except OSError:
                    return

    return ReadOnlyAwareClient


class DubboPeer:
    """A dubbo-py consumer of ``DemoService`` on one connection (see :func:`dubbo_client_class`)."""

    def __init__(self, address: str, port: int, timeout: float = 20.0) -> None:
        self.client: Any = dubbo_client_class()(address, port)
        self.client._timeout = timeout
        self.local = self.client._sock.getsockname()

    def call(self, text: str) -> tuple[str, str, str]:
        try:
            answer = self.client.send_request_and_return_response(
                service_name=IFACE,
                method_name="echo",
                args=[text],
                service_version="0.0.0",
                attachment={},
            )
        except queue.Empty:
            return BAD, "", "no answer (timeout)"
        except Exception as e:
            return BAD, "", f"{type(e).__name__}: {e}"
        if answer.status != 20:
            return NATIVE, "", f"status {answer.status}: {answer.error}"
        return parse_answer(text, answer.data)

    def usable(self) -> bool:
        return not self.client.readonly.is_set() and not self.client.eof.is_set()

    def same_connection(self) -> bool:
        sock = self.client._sock
        return bool(sock.fileno() != -1 and sock.getsockname() == self.local)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.client._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close()
        self.client._sock.close()
        self.client.eof.set()


class Caller(threading.Thread):
    """Calls ``echo`` on one peer until ``stop`` is set, ``max_calls`` are made, the peer says
    to stop sending (``check_usable``) or a call ends BAD; every call is in :attr:`calls`."""

    def __init__(
        self,
        name: str,
        peer: Peer,
        stop: threading.Event,
        *,
        pause: float = 0.005,
        text: Callable[[str, int], str] = lambda name, n: f"{name}-{n}",
        check_usable: bool = False,
        max_calls: int | None = None,
    ) -> None:
        super().__init__(daemon=True, name=name)
        self.peer = peer
        self.stop = stop
        self.pause = pause
        self.text = text
        self.check_usable = check_usable
        self.max_calls = max_calls
        self.calls: list[Call] = []
        self.started_calling = threading.Event()
        #: When the call in flight started (None between calls).
        self.calling_since: float | None = None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and (self.max_calls is None or n < self.max_calls):
            if self.check_usable and not self.peer.usable():
                break
            n += 1
            text = self.text(self.name, n)
            started = self.calling_since = time.monotonic()
            self.started_calling.set()
            kind, served_by, detail = self.peer.call(text)
            self.calls.append(
                Call(self.name, text, kind, served_by, detail, started, time.monotonic())
            )
            self.calling_since = None
            if kind == BAD:
                return
            if self.pause:
                time.sleep(self.pause)

    def finish(self, timeout: float = 30.0) -> list[Call]:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} hangs in a call"
        return self.calls


def kinds(calls: list[Call]) -> dict[str, int]:
    out = {OK: 0, NATIVE: 0, BAD: 0}
    for c in calls:
        out[c.kind] += 1
    return out


def bad_calls(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.kind == BAD]


class ServerProcess:
    """``thrift_server.py`` or ``dubbo_provider.py`` (``PORT NAME [ARGS]``) in a subprocess;
    :meth:`kill` is SIGKILL, :meth:`start` again binds the same port, under :attr:`name`
    (which a test may change in between). ``lines`` gets every line it prints after READY."""

    def __init__(self, script: Path, name: str, *args: str) -> None:
        self.script = script
        self.name = name
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    @classmethod
    def thrift(cls, gen: types.ModuleType, name: str) -> ServerProcess:
        return cls(THRIFT_SERVER, name, str(Path(gen.__file__ or "").resolve().parents[1]))

    @classmethod
    def dubbo(cls, name: str) -> ServerProcess:
        return cls(DUBBO_PROVIDER, name)

    def start(self) -> ServerProcess:
        argv = [sys.executable, str(self.script), str(self.port), self.name, *self.args]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        ready: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        line = ready.get(timeout=30)
        assert line.startswith("READY"), f"{argv} did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    def _read(self, proc: subprocess.Popen[str], ready: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        first = True
        for line in proc.stdout:
            if first:
                ready.put(line.strip())
                first = False
            else:
                self.lines.put(line.strip())
        if first:
            ready.put("exited")

    def wait_line(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def drain_lines(self) -> list[str]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.lines.get_nowait())
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- the proxy's admin ----------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(admin: str) -> str:
    """``/stats/prometheus`` of the proxy whose admin is ``host:port``."""
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def metric(text: str, name: str, **labels: str) -> int:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return int(total)


# -- a static config --------------------------------------------------------------------------


def listener_yaml(name: str, codec: str, port: int) -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    meta_protocol_proxy:
      stat_prefix: {name}
      codec: {{name: {codec}}}
      route_config_name: {name}
      meta_protocol_filters: [{{name: aeraki.meta_protocol.filters.router}}]"""


def cluster_yaml(name: str, upstream: int) -> str:
    address = f"{{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}"
    return f"""
  - name: {name}
    connect_timeout: 1s
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {address}}}"""


def static_config(services: dict[str, tuple[str, int, int]]) -> str:
    """One listener, cluster and catch-all route per service: name -> (codec, port, upstream)."""
    listeners = "".join(listener_yaml(n, codec, port) for n, (codec, port, _) in services.items())
    clusters = "".join(cluster_yaml(n, up) for n, (_, _, up) in services.items())
    routes = "".join(
        f"\n  - name: {n}\n    routes:\n    - {{name: all, route: {{cluster: {n}}}}}"
        for n in services
    )
    return (
        f"static_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n"
        f"  route_configs:{routes}\n"
    )
