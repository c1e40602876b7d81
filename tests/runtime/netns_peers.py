"""Unmodified Thrift and Dubbo peers for the sidecar tests, run inside a network namespace.

``python netns_peers.py servers GEN_DIR VERSION``: an Apache Thrift server (framed, binary) on
9090 and a dubbo-py provider on 20880, both on 0.0.0.0; ``echo(s)`` answers
``<VERSION>:<s>``. Prints ``READY`` when both listen.

``python netns_peers.py thrift-client HOST PORT GEN_DIR`` / ``dubbo-client HOST PORT``: one
client connection to HOST (a name, resolved by the system resolver as any application does)
and PORT; then, per stdin line ``N``, N ``echo`` calls, printed as one JSON line
``{"answers": [...], "local": [ip, port], "peer": [ip, port]}`` (``local`` tells whether the
connection is still the same). A failed call prints ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

IFACE = "org.apache.dubbo.demo.DemoService"


def _calc(gen_dir: str) -> Any:
    sys.path.insert(0, gen_dir)
    from metamesh_calc import Calc

    return Calc


def servers(gen_dir: str, version: str) -> None:
    from thrift.protocol.TBinaryProtocol import TBinaryProtocolAcceleratedFactory
    from thrift.server.TServer import TThreadedServer
    from thrift.transport import TSocket
    from thrift.transport.TTransport import TFramedTransportFactory

    calc = _calc(gen_dir)

    class Handler:
        def __init__(self, version: str) -> None:
            self.version = version

        def echo(self, s: str) -> str:
            return f"{self.version}:{s}"

    server = TThreadedServer(
        calc.Processor(Handler(version)),
        TSocket.TServerSocket(host="0.0.0.0", port=9090),
        TFramedTransportFactory(),
        TBinaryProtocolAcceleratedFactory(),
        daemon=True,
    )
    threading.Thread(target=server.serve, daemon=True).start()

    import dubbo.server as ds

    ds.get_pub_ip = lambda: "127.0.0.1"  # it would probe 8.8.8.8's route for its address
    svc = ds.DubboService(20880, f"demo-{version}", dubbo_version="2.0.2")
    svc.add_method(IFACE, "echo", lambda x: f"{version}:{x}")
    svc.start()
    for port in (9090, 20880):
        _wait_listening(port)
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on {port}")
        time.sleep(0.05)


def thrift_client(host: str, port: int, gen_dir: str) -> None:
    from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
    from thrift.transport import TSocket
    from thrift.transport.TTransport import TFramedTransport

    calc = _calc(gen_dir)
    sock = TSocket.TSocket(host, port)
    sock.setTimeout(10_000)
    transport = TFramedTransport(sock)
    transport.open()
    client = calc.Client(TBinaryProtocolAccelerated(transport))
    _serve_stdin(lambda i: client.echo(str(i)), lambda: sock.handle)


def dubbo_client(host: str, port: int) -> None:
    from dubbo.client import DubboClient

    client = DubboClient(host, port, dubbo_version="2.0.2")

    def echo(i: int) -> str:
        answer = client.send_request_and_return_response(
            service_name=IFACE, method_name="echo", args=[str(i)], service_version="0.0.0"
        )
        if answer.status != 20:
            raise RuntimeError(f"status {answer.status}: {answer.error}")
        return str(answer.data)

    _serve_stdin(echo, lambda: client._sock)


def _serve_stdin(call: Any, handle: Any) -> None:
    for line in sys.stdin:
        try:
            answers = [call(i) for i in range(int(line))]
        except Exception as exc:  # the test reads what went wrong
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        sock = handle()
        record = {"answers": answers, "local": sock.getsockname(), "peer": sock.getpeername()}
        print(json.dumps(record), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "servers":
        servers(args[0], args[1])
    elif mode == "thrift-client":
        thrift_client(args[0], int(args[1]), args[2])
    elif mode == "dubbo-client":
        dubbo_client(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
