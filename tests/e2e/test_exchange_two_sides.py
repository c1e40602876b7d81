"""Istio's labels on both sides of a two-proxy mesh, with the metadata exchange.

The two-sided mesh of ``test_mesh_two_sides`` (control plane with the mesh CA; the client
workload's proxy: node ``sleep``, namespace ``client-ns``, label ``app=sleep``, service account
``sleep``; the server workload's inbound proxy: ``server``/``server-ns``; mutual TLS between
them). A dubbo-py consumer and an Apache Thrift (framed) client call through both proxies.

The server's proxy reports as the destination: the Dubbo requests' source is the client
workload as its proxy told it in the first request's attachment (``source_workload="sleep"``,
``source_app``), its principal and namespace from mutual TLS, ``connection_security_policy=
"mutual_tls"``; the destination is the server workload itself. Framed Thrift has no headers,
so the Thrift requests' source is what mutual TLS says (principal and namespace), the workload
``unknown``. The client's proxy reports as the source, its own workload on the source side."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from dubbo.client import DubboClient

from tests.e2e.mesh import wait_until
from tests.e2e.test_mesh_two_sides import Mesh, dubbo_call, mesh  # noqa: F401 (the fixture)
from tests.support.prom import samples

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
CLIENT = "spiffe://cluster.local/ns/client-ns/sa/sleep"
SERVER = "spiffe://cluster.local/ns/server-ns/sa/server"


def series(m: Mesh, admin: str, **labels: str) -> list[dict[str, str]]:
    return [s for s, v in samples(m.stats(admin), "istio_requests_total", **labels) if v > 0]


def test_both_sides_label_requests_with_exchanged_and_verified_identities(mesh: Mesh) -> None:  # noqa: F811
    client = mesh.thrift_client()
    assert client.echo("hi") == "server:hi"
    client.close()
    before = set(threading.enumerate())
    consumer: Any = DubboClient(mesh.vip, mesh.dubbo[0], dubbo_version="2.0.2")
    receiver = next(t for t in set(threading.enumerate()) - before if "_recv_loop" in t.name)
    try:
        for i in range(3):
            assert dubbo_call(consumer, f"mx{i}").ok
    finally:
        consumer._sock.shutdown(socket.SHUT_RDWR)
        receiver.join(5)
        consumer._sock.close()

    def inbound(protocol: str) -> list[dict[str, str]]:
        return series(mesh, mesh.server_admin, reporter="destination", request_protocol=protocol)

    wait_until(lambda: bool(inbound("dubbo")) and bool(inbound("thrift")), "both series")
    [dubbo] = inbound("dubbo")
    assert dubbo["source_workload"] == "sleep" and dubbo["source_app"] == "sleep"
    assert dubbo["source_workload_namespace"] == "client-ns"
    assert dubbo["source_principal"] == CLIENT
    assert dubbo["connection_security_policy"] == "mutual_tls"
    assert dubbo["destination_workload"] == "server" and dubbo["destination_app"] == "server"
    assert dubbo["destination_principal"] == SERVER
    assert dubbo["destination_workload_namespace"] == "server-ns"
    [thrift] = inbound("thrift")
    assert thrift["source_principal"] == CLIENT and thrift["source_workload"] == "unknown"
    assert thrift["source_workload_namespace"] == "client-ns"
    assert thrift["connection_security_policy"] == "mutual_tls"
    outbound = series(mesh, mesh.client_admin, reporter="source", request_protocol="dubbo")
    assert outbound and all(s["source_workload"] == "sleep" for s in outbound)
    assert all(s["source_principal"] == CLIENT for s in outbound)
