"""``control-plane --ca-dir`` serves ADS over TLS; ``proxy --xds --ca`` follows it with its
workload certificate, and a proxy that claims another workload's namespace is refused.

The proxies ask the CA with bootstrap tokens; the CA issues for the token's identity whatever
the proxy asks, so a proxy started with ``--namespace prod`` and the token of ``demo/sleep``
holds a ``demo/sleep`` certificate, and its node (``NAMESPACE: prod``) is refused at the ADS
port: it gets no config. The control plane's admin port (``--admin-port``) counts that refusal,
a plaintext client at the TLS ADS port and a certificate request without credentials, and
says LIVE on ``/ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from metamesh.security.cert_service import request_certificate
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId
from tests.control.cases import EXAMPLES
from tests.e2e.mesh import Metamesh, wait_until
from tests.support.ports import free_port


def test_control_plane_tls_ads_admits_its_workloads_only(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n- {token: t-sleep, namespace: demo, serviceAccount: sleep}\n")
    (tmp_path / "token").write_text("t-sleep\n")
    xds, ca = free_port(), free_port()
    with ExitStack() as stack:
        cp = stack.enter_context(
            Metamesh(tmp_path, "cp", "control-plane", "--config-dir", str(EXAMPLES),
                     "--xds-port", str(xds), "--ca-dir", str(tmp_path / "ca"),
                     "--ca-port", str(ca), "--ca-tokens", str(tokens), "--admin-port", "0")
        )  # fmt: skip
        cp.wait_for("metamesh: control plane admin on")
        assert "(TLS: workload certificate or bootstrap token)" in cp.stdout()
        identity = ["--ca", f"127.0.0.1:{ca}", "--ca-root", str(tmp_path / "ca/root-cert.pem"),
                    "--ca-token-file", str(tmp_path / "token"), "--service-account", "sleep",
                    "--admin-port", "-1"]  # fmt: skip
        good = stack.enter_context(
            Metamesh(tmp_path, "good", "proxy", "--xds", f"127.0.0.1:{xds}", "--node-id", "good",
                     "--namespace", "demo", *identity)
        )  # fmt: skip
        good.wait_for("serving", 20)
        wait_until(lambda: "ADS: node good is spiffe://cluster.local/ns/demo/sa/sleep (certificate)"
                   in cp.stderr(), "the control plane to admit the proxy")  # fmt: skip
        other = stack.enter_context(
            Metamesh(tmp_path, "other", "proxy", "--xds", f"127.0.0.1:{xds}", "--node-id", "bad",
                     "--namespace", "prod", *identity)
        )  # fmt: skip
        wait_until(lambda: "ADS: refused node bad: claims namespace 'prod'" in cp.stderr(),
                   "the control plane to refuse the proxy")  # fmt: skip
        wait_until(lambda: "PERMISSION_DENIED claims namespace 'prod'" in other.stderr(),
                   "the proxy to say why")  # fmt: skip
        assert "serving" not in other.stdout()
        found = re.search(r"control plane admin on 127\.0\.0\.1:(\d+)", cp.stdout())
        assert found, cp.stdout()
        admin = f"http://127.0.0.1:{found[1]}"
        with socket.create_connection(("127.0.0.1", xds), timeout=5) as plain:
            plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # gRPC without TLS
            with contextlib.suppress(ConnectionResetError):
                plain.recv(100)
        root = (tmp_path / "ca/root-cert.pem").read_text()
        csr = new_key_and_csr(SpiffeId("cluster.local", "demo", "sleep")).csr_pem
        with pytest.raises(grpc.aio.AioRpcError, match="no valid certificate or token"):
            asyncio.run(request_certificate(f"127.0.0.1:{ca}", root, csr))
        with urllib.request.urlopen(f"{admin}/ready", timeout=5) as r:
            assert r.read() == b"LIVE\n"

        def stats() -> str:
            with urllib.request.urlopen(f"{admin}/stats/prometheus", timeout=5) as r:
                text: str = r.read().decode()
            return text

        def count(line: str) -> float:
            found = re.search(rf"^{re.escape(line)} (\S+)$", stats(), re.M)
            return float(found[1]) if found else -1.0

        assert count('metamesh_ads_streams_refused_total{reason="wrong_node"}') >= 1
        not_tls = 'metamesh_ads_tls_connections_refused_total{reason="not_tls"}'
        wait_until(lambda: count(not_tls) == 1, "the plaintext client to be counted")
        assert count("metamesh_ads_tls_connections_accepted_total") >= 2
        assert count('metamesh_ca_certificates_issued_total{auth="token"}') == 2
        assert count('metamesh_ca_requests_refused_total{reason="unauthenticated"}') == 1


def test_plaintext_ads_is_refused_on_a_non_loopback_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metamesh", "control-plane", "--config-dir", str(EXAMPLES),
         "--ca-dir", str(tmp_path / "ca"), "--no-xds-tls", "--xds-address", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "plaintext ADS is only served on a loopback address, not 0.0.0.0" in done.stderr
