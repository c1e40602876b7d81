"""Capture ports in a network namespace of the test's own (runtime/capture.py): a connection
redirected to a VIP (IPv4 and IPv6) reaches its listener and a real Apache Thrift server; one
to no listener is relayed as plain TCP (ALLOW_ANY, 100 kB echoed back with a half-close) or reset
(REGISTRY_ONLY); a client dialling the capture port itself is closed, not looped; each is
counted, and the rules are gone after the drain. The proxy runs in a child process
(``capture_probe.py``) so this process stays in the machine's namespace."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.netns import Namespace, namespaces_unavailable

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        bool(namespaces_unavailable()), reason=namespaces_unavailable() or "available"
    ),
]
PROBE = str(Path(__file__).with_name("capture_probe.py"))


def probe(policy: str, gen_dir: str) -> dict[str, Any]:
    ns = Namespace(f"mm-cap-{secrets.token_hex(3)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        done = subprocess.run(
            ns.argv([sys.executable, PROBE, policy, gen_dir]),
            capture_output=True, text=True, timeout=60, check=False,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_listener_passthrough_refusal_and_loop_guard(
    policy: str, calc_gen: types.ModuleType
) -> None:
    result = probe(policy, str(Path(calc_gen.__file__).parents[1]))
    assert result["matched"] == result["matched6"] == result["matched_tls"] == "server:hi"
    assert result["direct"] == "reset"
    counters = result["counters"]
    assert counters["matched"] == {"vip": 1, "vip6": 1, "vip-tls": 1}
    if policy == "ALLOW_ANY":
        assert result["passthrough"] == result["passthrough6"] == "echoed"
        assert counters["passthrough"] == 2
        assert counters["refused"] == {"not_redirected": 1}
    else:
        assert result["passthrough"] == result["passthrough6"] == "reset"
        assert counters["passthrough"] == 0
        assert counters["refused"] == {"not_redirected": 1, "registry_only": 2}
    assert "metamesh" not in result["rules_after"]
