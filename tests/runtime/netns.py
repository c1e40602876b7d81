"""Network namespaces for the sidecar tests: hosts joined by veth pairs, nothing else.

:func:`namespaces_unavailable` says why the tests cannot run here (not root, no ``ip netns``,
no ``nft``), or None. :class:`Hosts` creates a client namespace and one or more server
namespaces, each with its loopback up and a veth pair to the client (addresses from
198.18.0.0/15, the range set aside for network tests, a /30 per link), a default route in
the client namespace only (so a VIP is routable there; a server namespace reaches nothing
beyond the client), and deletes them all on exit. Nothing they send can leave them: none is
connected to the machine's own network namespace.
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


class Hosts:
    """A client namespace joined to ``servers`` server namespaces, one veth pair each; see
    the module docstring. Server ``i`` is :func:`server_ip` ``(i)``, the client's end of its
    link :func:`client_ip` ``(i)`` (a /30 per link)."""

    def __init__(self, servers: int = 1) -> None:
        tag = secrets.token_hex(3)
        self.client = Namespace(f"mm-cli-{tag}")
        self.servers = [Namespace(f"mm-srv{i}-{tag}") for i in range(servers)]
        self._tag = tag

    @property
    def server(self) -> Namespace:
        return self.servers[0]

    def __enter__(self) -> Hosts:
        c = self.client.name
        try:
            _ip("netns", "add", c)
            _ip("-n", c, "link", "set", "lo", "up")
            for i, server in enumerate(self.servers):
                s, vc, vs = server.name, f"mmc{i}{self._tag}", f"mms{i}{self._tag}"
                _ip("netns", "add", s)
                _ip("link", "add", vc, "netns", c, "type", "veth", "peer", "name", vs, "netns", s)
                for ns, dev, address in ((c, vc, client_ip(i)), (s, vs, server_ip(i))):
                    _ip("-n", ns, "link", "set", "lo", "up")
                    _ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
                    _ip("-n", ns, "link", "set", dev, "up")
            if self.servers:
                _ip("-n", c, "route", "add", "default", "via", server_ip(0))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.client, *self.servers):  # the veth pairs go with them
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def client_ip(link: int) -> str:
    return f"198.18.0.{4 * link + 1}"


def server_ip(link: int) -> str:
    return f"198.18.0.{4 * link + 2}"
