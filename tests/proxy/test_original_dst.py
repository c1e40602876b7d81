"""Listener choice by original destination (Envoy's use_original_dst), table-tested."""

from __future__ import annotations

import pytest

from metamesh.proxy.config import Listener
from metamesh.proxy.original_dst import ListenerIndex


def listener(name: str, address: str, port: int) -> Listener:
    return Listener(name, address, port, "thrift", f"{name}-routes")


LISTENERS = {
    x.name: x
    for x in (
        listener("vip-9090", "198.18.10.10", 9090),
        listener("allocated-20880", "127.240.0.3", 20880),
        listener("any-7000", "0.0.0.0", 7000),
        listener("vip-7000", "198.18.10.11", 7000),
        listener("b-dup", "198.18.10.12", 8000),
        listener("a-dup", "198.18.10.12", 8000),
    )
}


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("198.18.10.10", 9090, "vip-9090"),
        ("127.240.0.3", 20880, "allocated-20880"),
        ("198.18.10.11", 7000, "vip-7000"),  # exact beats the wildcard on the same port
        ("10.1.2.3", 7000, "any-7000"),  # any address on a wildcard listener's port
        ("198.18.10.10", 9091, None),  # the VIP on another port: no listener
        ("198.18.10.99", 9090, None),  # the port of a VIP listener on another address
        ("198.18.10.12", 8000, "a-dup"),  # two on one address: the first by name, always
    ],
)
def test_pick(address: str, port: int, expected: str | None) -> None:
    assert ListenerIndex.build(LISTENERS).pick(address, port) == expected


def test_no_listeners_picks_nothing() -> None:
    assert ListenerIndex.build({}).pick("198.18.10.10", 9090) is None
