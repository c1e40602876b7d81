"""The proxy gets its certificate from the control plane's CA and renews it under load.

``metamesh control-plane --ca-dir DIR --ca-tokens FILE`` is the CA; ``metamesh proxy --config
... --ca HOST:PORT --ca-root DIR/root-cert.pem --ca-token-file F --cert-ttl 4`` asks for a
4-second certificate with its bootstrap token, then renews it at half its life with the
certificate itself. Real Apache Thrift TLS clients (certificates signed by the same root, read
from the CA's directory) call through the STRICT listener for 12 s, on one held connection and
on a fresh connection per second: zero errors, the held connection is never dropped, at least
four rotations are counted, and every new connection sees the current certificate.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import types
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport import TSSLSocket
from thrift.transport.TTransport import TFramedTransport

from metamesh.security.ca import CertificateAuthority
from metamesh.security.spiffe import SpiffeId
from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler
from tests.e2e.mesh import Metamesh, free_port, wait_until
from tests.runtime.test_mtls_e2e import SLEEP, config, issue

pytestmark = [pytest.mark.interop, pytest.mark.slow]
SERVER = SpiffeId("cluster.local", "demo", "calc-server")


def server_is(cert: dict[str, Any], hostname: str) -> None:
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    assert uris == [SERVER.uri], uris


def rotations(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("metamesh_tls_certificate_rotations_total"):
                return float(line.split()[-1])
    return -1.0


@pytest.mark.parametrize("workers", [1, 2])
def test_certificates_rotate_under_load_with_zero_errors(
    calc_gen: types.ModuleType, tmp_path: Path, workers: int
) -> None:
    ca_dir, ca_port = tmp_path / "ca", free_port()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n- {token: t-calc, namespace: demo, serviceAccount: calc-server}\n")
    (tmp_path / "token").write_text("t-calc\n")
    (tmp_path / "mesh").mkdir()
    strict, permissive, admin = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        up = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary")
        )
        cp = stack.enter_context(
            Metamesh(tmp_path, "cp", "control-plane", "--config-dir", str(tmp_path / "mesh"),
                     "--xds-port", str(free_port()), "--ca-dir", str(ca_dir),
                     "--ca-port", str(ca_port), "--ca-tokens", str(tokens))
        )  # fmt: skip
        cp.wait_for("metamesh: CA on")
        root = ca_dir / "root-cert.pem"
        path = tmp_path / "proxy.yaml"
        path.write_text(config(strict, permissive, up.port).replace("only-sleep", "sleep"))
        err = tmp_path / "proxy.err"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metamesh", "proxy", "--config", str(path),
                 "--admin-port", str(admin), "--ca", f"127.0.0.1:{ca_port}",
                 "--ca-root", str(root), "--ca-token-file", str(tmp_path / "token"),
                 "--namespace", "demo", "--service-account", "calc-server", "--cert-ttl", "4",
                 "--workers", str(workers)],
                stderr=stderr,
            )  # fmt: skip
        stack.callback(lambda: (proc.terminate(), proc.wait(15)))
        wait_until(lambda: "admin on" in err.read_text() or proc.poll() is not None, "start")
        assert proc.poll() is None, err.read_text()

        ca = CertificateAuthority.load(root, ca_dir / "root-key.pem", "cluster.local")
        cert, key = issue(ca, SLEEP, tmp_path)

        def client() -> tuple[Any, Any]:
            ctx = ssl.create_default_context(cafile=str(root))
            ctx.check_hostname = False
            ctx.load_cert_chain(cert, key)
            sock = TSSLSocket.TSSLSocket(
                "127.0.0.1", strict, ssl_context=ctx, validate_callback=server_is
            )
            sock.setTimeout(5000)
            transport = TFramedTransport(sock)
            transport.open()
            return calc_gen.Calc.Client(TBinaryProtocolAccelerated(transport)), transport

        held, held_transport = client()
        local = held_transport._TFramedTransport__trans.handle.getsockname()
        calls = fresh = 0
        start = time.monotonic()
        while time.monotonic() - start < (12 if workers == 1 else 6):
            assert held.add(calls, 1) == calls + 1
            calls += 1
            if calls % 50 == 0:  # a new connection, handshaking with the current certificate
                c, t = client()
                assert c.add(1, 1) == 2
                t.close()
                fresh += 1
            time.sleep(0.005)
        assert held_transport._TFramedTransport__trans.handle.getsockname() == local
        held_transport.close()
        n = rotations(admin)
        print(f"{calls} calls on one connection, {fresh} fresh connections, {n} rotations")
        assert n >= 4
        log = err.read_text()
        # with two workers each holds its own certificate: rotations add up in the admin
        nth = 5 if workers == 1 else 3
        assert log.count("calc-server in use (#1)") == workers  # one certificate per worker
        assert (
            f"certificate for spiffe://cluster.local/ns/demo/sa/calc-server in use (#{nth}" in log
        )
        assert "ERROR" not in log
