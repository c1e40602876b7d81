"""``control-plane --ca-dir`` serves ADS over TLS; ``proxy --xds --ca`` follows it with its
workload certificate, and a proxy that claims another workload's namespace is refused.

The proxies ask the CA with bootstrap tokens; the CA issues for the token's identity whatever
the proxy asks, so a proxy started with ``--namespace prod`` and the token of ``demo/sleep``
holds a ``demo/sleep`` certificate, and its node (``NAMESPACE: prod``) is refused at the ADS
port: it gets no config.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

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
                     "--ca-port", str(ca), "--ca-tokens", str(tokens))
        )  # fmt: skip
        cp.wait_for("metamesh: CA on")
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


def test_plaintext_ads_is_refused_on_a_non_loopback_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metamesh", "control-plane", "--config-dir", str(EXAMPLES),
         "--ca-dir", str(tmp_path / "ca"), "--no-xds-tls", "--xds-address", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "plaintext ADS is only served on a loopback address, not 0.0.0.0" in done.stderr
