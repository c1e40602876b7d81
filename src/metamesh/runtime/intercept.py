"""Transparent interception: the nftables rules that send a workload's traffic to its proxy.

``metamesh proxy --intercept`` (and ``metamesh intercept``, the init-container form) installs
one nftables table, ``inet metamesh``, in the network namespace it runs in. It does what Istio's
``istio-iptables`` does with iptables chains:

* **outbound** (nat ``output`` hook): the workload's TCP connections are redirected to the
  proxy's capture port (:attr:`InterceptSettings.outbound_port`, 15001 as in Istio), its DNS
  queries (UDP and TCP port 53, whichever nameserver they were sent to) to the DNS responder
  (``127.0.0.1:15053``, ``[::1]:15053``);
* **inbound** (nat ``prerouting`` hook): TCP arriving from other hosts is redirected to the
  inbound capture port (15006).

What is never redirected: packets of sockets carrying the proxy's **socket mark**
(:data:`PROXY_MARK`, ``0x539`` = 1337, the mark Istio uses in its TPROXY mode and ztunnel
uses), loopback traffic to ``127.0.0.1`` and ``::1`` (the admin, the DNS responder, the
control plane in ``up``), the destinations and ports given as exclusions (the ``--xds`` and
``--ca`` addresses are added by the proxy), and inbound traffic to the capture ports. Istio excludes
its proxy by **user id** (1337) instead; metamesh uses the mark because its proxy installs the
rules itself and so runs with ``CAP_NET_ADMIN``, which is what ``SO_MARK`` needs, and because
a mark does not depend on which user the proxy and the application run as (in a test, or in a
container where both are root, a uid rule would exempt the application too).
``--intercept-exclude-uid`` adds Istio's uid rule for setups that have a proxy user.

Why nftables and not iptables: Debian's ``iptables`` is itself ``iptables-nft`` (a front end
to the same kernel tables); a table of our own is loaded atomically from one script with
``nft -f -`` and removed whole with ``nft delete table``, without touching rules others own.
The script starts by creating and deleting the table, so installing over a table left by a
crashed proxy replaces it instead of failing.

The table is removed when the proxy stops (SIGTERM, SIGINT, a normal exit, an unhandled error
through ``atexit``). A proxy killed with SIGKILL leaves it in place: its traffic then goes to
ports nobody listens on until ``metamesh intercept --cleanup`` (or the next ``--intercept``
start) replaces it.

IPv4 and IPv6 alike (an ``inet`` table): an IPv6 connection is redirected to ``[::1]:15001``
or the inbound port on ``::``, an IPv6 DNS query to ``[::1]:15053``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Final

#: The socket mark of every connection the proxy opens (upstreams, pass-through, DNS forwards).
PROXY_MARK: Final = 0x539
TABLE: Final = "metamesh"
FAMILY: Final = "inet"  # one table for IPv4 and IPv6
SO_MARK: Final = getattr(socket, "SO_MARK", 36)


class InterceptError(OSError):
    """The rules could not be installed or removed (no ``nft``, no permission...)."""


class InterceptNotPermittedError(InterceptError):
    """This process may not change the namespace's nftables rules (no ``CAP_NET_ADMIN``)."""


@dataclass(frozen=True, slots=True)
class InterceptSettings:
    """What ``--intercept`` captures and where it sends it (Istio's defaults for the ports).

    ``exclude_outbound``: ``(address, port)`` destinations left alone (port 0: every port);
    ``exclude_inbound_ports``: local ports reached directly from outside (ssh...);
    ``dns_port``: where UDP/TCP 53 goes (None: DNS is not captured);
    ``inbound``: capture inbound traffic at all; ``exclude_uid``: also leave a user's traffic
    alone (Istio's rule); ``allow_any``: Istio's ``outboundTrafficPolicy`` ``ALLOW_ANY``
    (a connection to no known listener is passed through as plain TCP) or ``REGISTRY_ONLY``
    (False: it is closed).
    """

    outbound_port: int = 15001
    inbound_port: int = 15006
    dns_port: int | None = 15053
    mark: int = PROXY_MARK
    exclude_outbound: tuple[tuple[str, int], ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    inbound: bool = True
    exclude_uid: int | None = None
    allow_any: bool = True

    @property
    def capture_ports(self) -> tuple[int, ...]:
        ports = [self.outbound_port, self.inbound_port]
        if self.dns_port is not None:
            ports.append(self.dns_port)
        return tuple(ports)


def parse_exclusion(text: str) -> tuple[str, int]:
    """``ADDRESS[/LEN][:PORT]`` (IPv6 as ``[ADDRESS]:PORT`` or bare) -> ``(address or network,
    port)``; port 0 = every port. Raises ValueError naming the problem."""
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest or "0"
    elif text.count(":") > 1:  # a bare IPv6 address or network
        address, port_text = text, "0"
    else:
        address, sep, port_text = text.rpartition(":")
        if not sep:
            address, port_text = text, "0"
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise ValueError(f"{text!r}: {address!r} is not an IP address or network") from None
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r}: {port_text!r} is not a port")
    whole = network.prefixlen == network.max_prefixlen
    return (str(network.network_address) if whole else str(network)), int(port_text)


def exclusion_for(target: str) -> tuple[str, int] | None:
    """The exclusion for a ``HOST:PORT`` the proxy itself dials (``--xds``, ``--ca``) when HOST
    is an IP address; None for a name (it is not known before it is resolved)."""
    try:
        return parse_exclusion(target)
    except ValueError:
        return None


def render_rules(settings: InterceptSettings) -> str:
    """The ``nft -f`` script that (re)creates the table for ``settings``."""
    s = settings
    out = [
        f"    meta mark {s.mark:#x} return",
    ]
    if s.exclude_uid is not None:
        out.append(f"    meta skuid {s.exclude_uid} return")
    if s.dns_port is not None:
        out += [
            f"    udp dport 53 redirect to :{s.dns_port}",
            f"    tcp dport 53 redirect to :{s.dns_port}",
        ]
    out += ["    ip daddr 127.0.0.1 return", "    ip6 daddr ::1 return"]
    for address, port in s.exclude_outbound:
        only = f" tcp dport {port}" if port else ""
        family = "ip6" if ":" in address else "ip"
        out.append(f"    {family} daddr {address}{only} return")
    out.append(f"    meta l4proto tcp redirect to :{s.outbound_port}")
    chains = [_chain("output", "output", out)]
    if s.inbound:
        skip = sorted({*s.capture_ports, *s.exclude_inbound_ports})
        inbound = [
            '    iifname "lo" return',
            f"    tcp dport {{ {', '.join(map(str, skip))} }} return",
            f"    meta l4proto tcp redirect to :{s.inbound_port}",
        ]
        chains.append(_chain("prerouting", "prerouting", inbound))
    body = "\n".join(chains)
    table = f"table {FAMILY} {TABLE}"
    return f"{table}\ndelete {table}\n{table} {{\n{body}}}\n"


def _chain(name: str, hook: str, rules: list[str]) -> str:
    head = f"  chain {name} {{\n    type nat hook {hook} priority -100; policy accept;\n"
    return head + "\n".join(rules) + "\n  }\n"


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None
    )
    if nft is None:
        raise InterceptError("nft (Debian package nftables) is not installed")
    return subprocess.run(
        [nft, *args], input=script, capture_output=True, text=True, timeout=30, check=False
    )


def install(settings: InterceptSettings) -> None:
    """Load the table (replacing one left by an earlier run). Raises InterceptError."""
    done = _nft(["-f", "-"], render_rules(settings))
    if done.returncode != 0:
        error = done.stderr.strip()
        if "Operation not permitted" in error:
            raise InterceptNotPermittedError(f"nft may not load the rules here: {error}")
        raise InterceptError(f"nft could not load the rules: {error}")


def installed() -> bool:
    """Whether the table exists in this network namespace."""
    return _nft(["list", "table", FAMILY, TABLE]).returncode == 0


def remove() -> bool:
    """Delete the table; False when there was none. Raises InterceptError on other failures."""
    if not installed():
        return False
    done = _nft(["delete", "table", FAMILY, TABLE])
    if done.returncode != 0:
        raise InterceptError(f"nft could not delete table {FAMILY} {TABLE}: {done.stderr.strip()}")
    return True


def mark_socket(sock: socket.socket, mark: int) -> bool:
    """Give ``sock`` the proxy's mark; False where this process may not (no ``CAP_NET_ADMIN``:
    a proxy whose rules leave its user out instead, see ``--intercept-exclude-uid``)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except PermissionError:
        return False
    return True


async def marked_connection(
    loop: asyncio.AbstractEventLoop, host: str, port: int, mark: int
) -> socket.socket:
    """A TCP socket connected to ``host:port`` carrying ``mark`` where this process may set
    one (so the rules let it by)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        mark_socket(sock, mark)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock
