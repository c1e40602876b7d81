"""Mesh names from a config snapshot and the answer to each query (no sockets).

Queries are built and replies read with dnspython, the library the responder uses; the bad
inputs are bytes written here by hand.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from metamesh.proxy.config import Listener, Snapshot
from metamesh.runtime.dnsproxy.table import MAX_QUERY, TTL, NameTable, answer

SNAPSHOT = Snapshot.build(
    [
        Listener(
            "a", "198.18.10.10", 9090, "thrift", "r1", "outbound|9090||calc.demo.svc.cluster.local"
        ),
        Listener("b", "127.240.0.3", 20880, "dubbo", "r2", "outbound|20880||org.apache.demo.hello"),
        Listener("c", "fd00::10", 9090, "thrift", "r3", "outbound|9090||v6.example"),
        Listener("d", "198.18.10.11", 9090, "thrift", "r4", "outbound|9090||v6.example"),
        # a static config: the host from an Aeraki-style route config name
        Listener("e", "127.0.0.1", 19000, "kv", "kv.example_19000", "kv"),
        # inbound and wildcard listeners have no name to answer
        Listener("f", "198.18.0.2", 9090, "thrift", "inbound|9090||calc", "inbound|9090||calc"),
        Listener("g", "0.0.0.0", 7000, "thrift", "r7", "outbound|7000||any.example"),
    ],
    [],
    [],
)
TABLE = NameTable.from_snapshot(SNAPSHOT, "demo")


def test_names_from_the_snapshot_with_istio_short_forms() -> None:
    assert dict(TABLE.names) == {
        "calc.demo.svc.cluster.local": ("198.18.10.10",),
        "calc.demo": ("198.18.10.10",),
        "calc.demo.svc": ("198.18.10.10",),
        "calc": ("198.18.10.10",),  # the proxy's own namespace
        "org.apache.demo.hello": ("127.240.0.3",),
        "v6.example": ("198.18.10.11", "fd00::10"),
        "kv.example": ("127.0.0.1",),
    }
    other_namespace = NameTable.from_snapshot(SNAPSHOT, "prod")
    assert "calc" not in other_namespace.names and "calc.demo" in other_namespace.names


def ask(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    outcome = answer(query.to_wire(), TABLE)
    assert outcome.reply is not None and not outcome.forward
    reply = dns.message.from_wire(outcome.reply)
    assert reply.id == query.id and reply.flags & dns.flags.QR
    return reply


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in reply.answer for r in rrset]


def test_a_mesh_name_is_answered_authoritatively_with_its_vip() -> None:
    reply = ask("calc.demo.svc.cluster.local.")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert addresses(reply) == ["198.18.10.10"]
    assert reply.answer[0].ttl == TTL
    assert addresses(ask("CALC.Demo")) == ["198.18.10.10"]  # names are case-insensitive
    assert addresses(ask("org.apache.demo.hello", use_edns=0)) == ["127.240.0.3"]


def test_other_types_of_a_mesh_name_are_empty_answers() -> None:
    for name, rdtype in (("calc.demo", "AAAA"), ("calc.demo", "MX"), ("calc.demo", "TXT")):
        reply = ask(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == [], (name, rdtype)
    assert addresses(ask("v6.example", "AAAA")) == ["fd00::10"]
    assert addresses(ask("v6.example", "A")) == ["198.18.10.11"]


def test_other_names_are_forwarded() -> None:
    query = dns.message.make_query("example.org", "A").to_wire()
    outcome = answer(query, TABLE)
    assert outcome.forward and outcome.reply is None and outcome.reason == "forwarded"
    # a name under a mesh name is not the mesh name
    assert answer(dns.message.make_query("x.calc.demo", "A").to_wire(), TABLE).forward


def header(flags: int = 0x0100, qd: int = 1) -> bytes:
    return b"\x12\x34" + flags.to_bytes(2, "big") + qd.to_bytes(2, "big") + bytes(6)


@pytest.mark.parametrize(
    ("wire", "reason", "rcode"),
    [
        (header() + b"\x07garbage", "formerr", dns.rcode.FORMERR),  # a name cut short
        (header(qd=0), "formerr", dns.rcode.FORMERR),  # no question
        (header(qd=2) + b"\x01a\x00\x00\x01\x00\x01" * 2, "formerr", dns.rcode.FORMERR),
        (header(flags=0x2800) + b"\x01a\x00\x00\x06\x00\x01", "notimp", dns.rcode.NOTIMP),
        (header() + bytes(MAX_QUERY), "oversized", None),  # dropped
        (b"\x12\x34\x01", "short", None),
        (header(flags=0x8180) + b"\x01a\x00\x00\x01\x00\x01", "not_a_query", None),
    ],
)
def test_bad_queries(wire: bytes, reason: str, rcode: int | None) -> None:
    outcome = answer(wire, TABLE)
    assert outcome.reason == reason and not outcome.forward
    if rcode is None:
        assert outcome.reply is None
        return
    assert outcome.reply is not None
    reply = dns.message.from_wire(outcome.reply)
    assert reply.id == 0x1234 and reply.rcode() == rcode and reply.flags & dns.flags.QR
    if reason == "notimp":
        assert reply.opcode() == dns.opcode.UPDATE  # the query's opcode, echoed


def test_too_many_addresses_for_udp_set_truncation_and_tcp_carries_them() -> None:
    many = Snapshot.build(
        [
            Listener(
                f"l{i}",
                f"127.241.{i // 250}.{i % 250 + 1}",
                9090,
                "thrift",
                f"r{i}",
                "outbound|9090||big.example",
            )
            for i in range(60)
        ],
        [],
        [],
    )
    table = NameTable.from_snapshot(many)
    wire = dns.message.make_query("big.example", "A").to_wire()
    udp = answer(wire, table).reply
    assert udp is not None
    reply = dns.message.from_wire(udp)
    assert reply.flags & dns.flags.TC and reply.answer == []
    tcp = answer(wire, table, tcp=True).reply
    assert tcp is not None
    assert len(addresses(dns.message.from_wire(tcp))) == 60
