"""Network namespaces for the sidecar tests: two hosts joined by one veth pair, nothing else.

:func:`namespaces_unavailable` says why the tests cannot run here (not root, no ``ip netns``,
no ``nft``), or None. :class:`HostPair` creates a client and a server namespace with their
own loopback up and a veth pair between them (:data:`CLIENT_IP` and :data:`SERVER_IP` from
198.18.0.0/15, the range set aside for network tests), a default route in the client
namespace only (so a VIP is routable there; the server namespace reaches nothing beyond the
client), and deletes both on exit. Nothing they send can leave them: neither is connected
to the machine's own network namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (scripts/setup.sh installs iproute2 and nftables)"
    probe = f"mm-probe-{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"'ip netns add' fails here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespace:
    """One network namespace: run commands and Python in it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args), capture_output=True, text=True, check=check, timeout=60
        )

    def python(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """``python ARGS`` in the namespace, from the repository root, pipes for stdio."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            self.argv([sys.executable, *args]),
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            text=True,
            **kwargs,
        )

    def metamesh(self, out: IO[str], err: IO[str], *args: str) -> subprocess.Popen[str]:
        return self.python("-m", "metamesh", *args, stdout=out, stderr=err)

    def tables(self) -> str:
        return self.run("nft", "list", "tables").stdout


class HostPair:
    """A client and a server namespace joined by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.client = Namespace(f"mm-cli-{tag}")
        self.server = Namespace(f"mm-srv-{tag}")
        self._veth = (f"mmc{tag}", f"mms{tag}")

    def __enter__(self) -> HostPair:
        c, s = self.client.name, self.server.name
        vc, vs = self._veth
        try:
            _ip("netns", "add", c)
            _ip("netns", "add", s)
            _ip("link", "add", vc, "netns", c, "type", "veth", "peer", "name", vs, "netns", s)
            for ns, dev, address in ((c, vc, CLIENT_IP), (s, vs, SERVER_IP)):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", c, "route", "add", "default", "via", SERVER_IP)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.client.name, self.server.name):  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
