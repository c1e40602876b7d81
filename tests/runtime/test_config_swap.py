"""Config swaps on the live proxy with real Apache Thrift clients and servers.

A swap that renumbers a cluster's endpoints keeps the pooled upstream connection to an endpoint
that stays; that connection must still be found (and dropped) under its new index when it
closes later, or requests to the endpoint would be queued on a dead connection forever.
Clients keep their connections across the swap.
"""

from __future__ import annotations

import asyncio
import types
from contextlib import ExitStack
from typing import Any

import pytest
from thrift.Thrift import TApplicationException

from metamesh.proxy.config import Snapshot
from tests.codecs.thrift.apache_peer import connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.test_thrift_traffic import wait_until
from tests.runtime.thrift_servers import AnyClientServer, NamedCalc

pytestmark = pytest.mark.interop

CLUSTER = "outbound|9090||calc.test"


def calc_snapshot(*ports: int) -> Snapshot:
    return mc.snapshot(
        [mc.listener("calc", "thrift", "calc")],
        [mc.cluster(CLUSTER, *ports)],
        {"calc": [mc.route("all", CLUSTER, method="~.*")]},
    )


def test_swap_that_renumbers_endpoints_keeps_the_pool_consistent(
    calc_gen: types.ModuleType,
) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(AnyClientServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "a"))))
        b = stack.enter_context(AnyClientServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "b"))))
        proxy = stack.enter_context(ProxyThread(calc_snapshot(a.port)))
        server = proxy.server
        assert server is not None
        peer = stack.enter_context(connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")))
        c: Any = peer.client
        assert c.echo("before") == "a:before"

        # a moves from index 0 to index 1; its pooled connection is kept.
        swap = asyncio.run_coroutine_threadsafe(
            server.apply_snapshot(calc_snapshot(b.port, a.port)), proxy.loop
        )
        swap.result(10)
        answers = {c.echo(str(i)).split(":")[0] for i in range(4)}  # round robin over b, a
        assert answers == {"a", "b"}
        assert len(a.client_types) == 1  # still the connection opened before the swap

        # a goes away: its connection closes, and requests for it fail fast, not hang.
        a.__exit__(None, None, None)
        wait_until(lambda: proxy.call(lambda: server.core.clusters[CLUSTER].connections) == 1,
                   "the proxy to drop the closed connection")  # fmt: skip
        outcomes = []
        for i in range(4):
            try:
                outcomes.append(c.echo(str(i)).split(":")[0])
            except TApplicationException as e:
                assert "upstream connect failed" in str(e.message)
                outcomes.append("error")
        assert sorted(outcomes) == ["b", "b", "error", "error"]
