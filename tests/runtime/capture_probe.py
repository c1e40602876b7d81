"""Run inside a fresh network namespace by ``test_capture.py``: one proxy with interception
(a static snapshot, no control plane) and plain TCP peers, printing what each case saw.

The namespace gets a veth pair of its own (198.18.0.1/24 and fd00::1/64 on one end) and
default routes through it, so addresses that exist nowhere are still routable and the rules
can redirect them. Cases:

* ``matched`` / ``matched6``: Thrift listeners on VIPs 198.18.9.9:9090 and [fd00:9::9]:9090
  route to a real Apache Thrift server on 127.0.0.1 (the client dials a VIP);
* ``matched_tls``: a STRICT (mutual TLS) listener on 198.18.9.10:9090, dialled by Apache
  Thrift's TSSLSocket with a certificate of the same mesh CA (the capture hands the
  connection to the listener's TLS layer);
* ``passthrough`` / ``passthrough6``: a TCP echo server on [::]:7007 (dual stack) dialled at
  198.18.0.1:7007 and [fd00::1]:7007 (no listener);
* ``refused``: the same with ``REGISTRY_ONLY`` (a second run of this script);
* ``direct``: a client dialling the capture port 127.0.0.1:15001 itself.

Prints one JSON object: each case's outcome and the interceptor's counters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from metamesh.runtime.intercept import InterceptSettings
from metamesh.runtime.server import ProxyServer
from metamesh.runtime.sidecar import Sidecar, SidecarSettings
from metamesh.runtime.tls import TlsCredentials
from metamesh.security.ca import CertificateAuthority
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId


def setup_namespace() -> None:
    for args in (
        ["link", "set", "lo", "up"],
        ["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
        ["addr", "add", "198.18.0.1/24", "dev", "d0"],
        ["link", "set", "d0", "up"],
        ["link", "set", "d1", "up"],
        ["route", "add", "default", "dev", "d0"],
        ["addr", "add", "fd00::1/64", "dev", "d0", "nodad"],
        ["-6", "route", "add", "default", "dev", "d0"],
    ):
        subprocess.run(["ip", *args], check=True)


def echo_server() -> None:
    srv = socket.create_server(("::", 7007), family=socket.AF_INET6, dualstack_ipv6=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def echo_through(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=5) as c:
            c.sendall(b"x" * 100_000)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while data := c.recv(65536):
                got += data
        return "echoed" if got == b"x" * 100_000 else f"short: {len(got)}"
    except OSError as exc:  # the proxy's reset, seen in whichever call came next
        reset = exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)
        return "reset" if reset else f"{type(exc).__name__}: {exc}"


def issue(ca: CertificateAuthority, account: str) -> tuple[bytes, bytes]:
    """A workload certificate chain and key from ``ca`` for ``default/<account>``."""
    who = SpiffeId("cluster.local", "default", account)
    pair = new_key_and_csr(who)
    chain = ca.sign(pair.csr_pem, who, dt.datetime.now(dt.UTC))
    return "".join(chain[:-1]).encode(), pair.key_pem


def snapshot(thrift_port: int) -> Snapshot:
    cluster = "outbound|9090||calc.test"
    return Snapshot.build(
        [
            Listener("vip", "198.18.9.9", 9090, "thrift", "calc.test_9090", cluster),
            Listener("vip6", "fd00:9:0::9", 9090, "thrift", "calc.test_9090", cluster),
            Listener(
                "vip-tls",
                "198.18.9.10",
                9090,
                "thrift",
                "calc.test_9090",
                cluster,
                tls_mode="STRICT",
            ),
        ],
        [Cluster(cluster, (Endpoint("127.0.0.1", thrift_port),))],
        [RouteConfiguration("calc.test_9090", (Route("all", (), RouteAction(cluster)),))],
    )


async def main(policy: str, gen_dir: str) -> dict[str, Any]:
    sys.path.insert(0, gen_dir)
    from metamesh_calc import Calc
    from thrift.protocol.TBinaryProtocol import TBinaryProtocol, TBinaryProtocolFactory
    from thrift.server.TServer import TThreadedServer
    from thrift.transport import TSocket, TSSLSocket
    from thrift.transport.TTransport import TFramedTransport, TFramedTransportFactory

    class Handler:
        def echo(self, s: str) -> str:
            return f"server:{s}"

    server_socket = TSocket.TServerSocket(host="127.0.0.1", port=0)
    thrift = TThreadedServer(
        Calc.Processor(Handler()),
        server_socket,
        TFramedTransportFactory(),
        TBinaryProtocolFactory(),
        daemon=True,
    )
    server_socket.listen()
    thrift_port = server_socket.handle.getsockname()[1]
    server_socket.listen = lambda: None  # already listening
    threading.Thread(target=thrift.serve, daemon=True).start()
    echo_server()

    settings = InterceptSettings(dns_port=None, allow_any=policy == "ALLOW_ANY")
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    proxy_cert, proxy_key = issue(ca, "proxy")
    client_cert, client_key = issue(ca, "client")
    tls = TlsCredentials(proxy_cert, proxy_key, ca.root_pem.encode(), "cluster.local")
    proxy = ProxyServer(
        snapshot(thrift_port),
        admin_port=None,
        sidecar=Sidecar(SidecarSettings(settings)),
        tls=tls,
    )
    await proxy.start()

    def call_vip(vip: str, tls: bool = False) -> str:
        sock: Any = TSocket.TSocket(vip, 9090)
        if tls:  # mutual TLS with a certificate of the same mesh CA
            ctx = ssl.create_default_context(cadata=ca.root_pem)
            ctx.check_hostname = False  # mesh certificates name a SPIFFE id, not a host
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "c.pem", Path(tmp) / "c.key"
                cert.write_bytes(client_cert)
                key.write_bytes(client_key)
                ctx.load_cert_chain(cert, key)
            sock = TSSLSocket.TSSLSocket(
                vip, 9090, ssl_context=ctx, validate_callback=lambda *_: None
            )
        transport = TFramedTransport(sock)
        transport.open()
        try:
            return str(Calc.Client(TBinaryProtocol(transport)).echo("hi"))
        finally:
            transport.close()

    result: dict[str, Any] = {
        "matched": await asyncio.to_thread(call_vip, "198.18.9.9"),
        "matched6": await asyncio.to_thread(call_vip, "fd00:9::9"),
        "matched_tls": await asyncio.to_thread(call_vip, "198.18.9.10", True),
        "passthrough": await asyncio.to_thread(echo_through, "198.18.0.1", 7007),
        "passthrough6": await asyncio.to_thread(echo_through, "fd00::1", 7007),
        "direct": await asyncio.to_thread(echo_through, "127.0.0.1", 15001),
    }
    interceptor = proxy.sidecar.interceptor if proxy.sidecar else None
    assert interceptor is not None
    result["counters"] = {
        "matched": dict(interceptor.matched),
        "passthrough": interceptor.passthrough,
        "refused": dict(interceptor.refused),
    }
    await proxy.drain(1.0)
    result["rules_after"] = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    return result


if __name__ == "__main__":
    setup_namespace()
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
