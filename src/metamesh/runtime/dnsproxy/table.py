"""Mesh names and the answer to one DNS query (no I/O; dnspython does the wire format).

**Names.** :meth:`NameTable.from_snapshot` reads the proxy's config: every outbound listener
is a service host on a VIP (the ServiceEntry's ``addresses``, an address allocated from
127.240.0.0/16, a ZooKeeper interface's service, later a Kubernetes Service), its host taken
from the stat prefix ``outbound|<port>||<host>`` the control plane writes (or, in a static
config, from an Aeraki-style route configuration name ``<host>_<port>``). So the table
always answers with exactly the addresses the proxy intercepts. As Istio's name table does,
a Kubernetes-shaped host ``<name>.<ns>.svc.<domain>`` is also known as ``<name>.<ns>``,
``<name>.<ns>.svc`` and, in the proxy's own namespace, ``<name>``. Names are matched
case-insensitively, without the trailing dot.

**Answers** (:func:`answer`), one per query:

- a mesh name: an authoritative answer, A records with its IPv4 VIPs (AAAA with IPv6 ones,
  an empty NOERROR answer for any other type or family), TTL :data:`TTL`;
- any other name: :attr:`Outcome.forward` (the responder relays the query to the workload's
  nameservers, as Istio's proxy does; with none configured it answers REFUSED);
- bad input: a message that is not a query (QR set), shorter than a DNS header, or longer
  than :data:`MAX_QUERY` bytes is dropped; one that has a header but does not parse, or asks
  more or fewer than one question, gets FORMERR; another opcode NOTIMP. Each outcome carries
  its reason, which the responder counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from metamesh.proxy.config import Listener, Snapshot

#: Seconds a mesh answer may be cached (Istio's DNS proxy uses 30 too).
TTL: Final = 30
#: A stub resolver's query is one question (a name is at most 255 bytes) plus an OPT record:
#: well under this; anything longer is not a query this responder serves.
MAX_QUERY: Final = 512
HEADER: Final = 12
WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class NameTable:
    """Lower-case names (no trailing dot) -> the service's VIPs."""

    names: Mapping[str, tuple[str, ...]]

    @staticmethod
    def from_snapshot(snapshot: Snapshot, namespace: str | None = None) -> NameTable:
        found: dict[str, list[str]] = {}
        for listener in snapshot.listeners.values():
            host = listener_host(listener)
            if host is None or listener.address in WILDCARDS:
                continue
            for name in aliases(host, namespace):
                addresses = found.setdefault(name, [])
                if listener.address not in addresses:
                    addresses.append(listener.address)
        return NameTable(MappingProxyType({k: tuple(sorted(v)) for k, v in found.items()}))

    def lookup(self, name: str) -> tuple[str, ...] | None:
        return self.names.get(name.lower().rstrip("."))


def listener_host(listener: Listener) -> str | None:
    """The service host of an outbound listener, or None (inbound, or not mesh-shaped)."""
    prefix = listener.stat_prefix
    if prefix.startswith("outbound|") and prefix.count("|") == 3:
        return prefix.rsplit("|", 1)[1] or None
    host, sep, port = listener.route_config_name.rpartition("_")
    if sep and host and port == str(listener.port) and not prefix.startswith("inbound"):
        return host
    return None


def aliases(host: str, namespace: str | None) -> list[str]:
    """``host`` and, for ``<name>.<ns>.svc.<domain>``, the short forms Istio's table adds."""
    host = host.lower().rstrip(".")
    names = [host]
    labels = host.split(".")
    if len(labels) >= 4 and labels[2] == "svc":
        name, ns = labels[0], labels[1]
        names += [f"{name}.{ns}", f"{name}.{ns}.svc"]
        if namespace is not None and ns == namespace.lower():
            names.append(name)
    return names


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with one query: send ``reply`` (None: nothing), or forward it upstream."""

    reason: str
    reply: bytes | None = None
    forward: bool = False


def error_reply(wire: bytes, rcode: int) -> bytes:
    """A header-only reply to ``wire`` (at least a header long): same id and opcode."""
    opcode_bits = wire[2] & 0x78
    return wire[:2] + bytes([0x80 | opcode_bits, rcode & 0x0F]) + bytes(8)


def answer(wire: bytes, table: NameTable, *, tcp: bool = False) -> Outcome:
    """The outcome of one query (see the module docstring); over ``tcp`` no size limit but
    the framing's."""
    if len(wire) > MAX_QUERY:
        return Outcome("oversized")
    if len(wire) < HEADER:
        return Outcome("short")
    if wire[2] & 0x80:
        return Outcome("not_a_query")
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return Outcome("formerr", error_reply(wire, dns.rcode.FORMERR))
    if query.opcode() != dns.opcode.QUERY:
        return Outcome("notimp", error_reply(wire, dns.rcode.NOTIMP))
    if len(query.question) != 1:
        return Outcome("formerr", error_reply(wire, dns.rcode.FORMERR))
    question = query.question[0]
    addresses = table.lookup(question.name.to_text(omit_final_dot=True))
    if addresses is None:
        return Outcome("forwarded", forward=True)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    rdtype = question.rdtype
    if question.rdclass == dns.rdataclass.IN and rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        version = 4 if rdtype == dns.rdatatype.A else 6
        records = [a for a in addresses if ipaddress.ip_address(a).version == version]
        if records:
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, rdtype, records)
            )
    limit = 65535 if tcp else max(512, query.payload) if query.edns >= 0 else 512
    try:
        return Outcome("mesh", response.to_wire(max_size=limit))
    except dns.exception.TooBig:  # more VIPs than fit: the client retries over TCP
        response.answer.clear()
        response.flags |= dns.flags.TC
        return Outcome("mesh", response.to_wire())
