"""Real Apache Thrift clients -> ``metamesh`` proxy (ThriftCodec) -> two real Apache servers.

Routes pick the server "version" by method name; several real clients share one multiplexed
upstream connection (seqids rewritten and restored); a method without a route comes back to the
real client as a TApplicationException.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest
from thrift.Thrift import TApplicationException

from metamesh.proxy.config import Snapshot
from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler, connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread

pytestmark = pytest.mark.interop


class CountingCalc(CalcHandler):
    def __init__(self, gen: types.ModuleType) -> None:
        super().__init__(gen)
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def add(self, a: int, b: int) -> int:
        with self._lock:
            self.calls.append("add")
        return a + b

    def echo(self, s: str) -> str:
        with self._lock:
            self.calls.append("echo")
        return s


def proxy_config(v1: int, v2: int) -> Snapshot:
    c1, c2 = "outbound|9090|v1|calc.test", "outbound|9090|v2|calc.test"
    return mc.snapshot(
        [mc.listener("calc", "aeraki.meta_protocol.codec.thrift", "calc")],
        [mc.cluster(c1, v1), mc.cluster(c2, v2)],
        {
            "calc": [
                mc.route("add-v1", c1, method="add"),
                mc.route("rest-v2", c2, method="~echo|ping|fire"),
            ]
        },
    )


@pytest.mark.parametrize(
    ("transport", "protocol"), [("framed", "binary"), ("buffered", "compact"), ("header", "binary")]
)
def test_routes_by_method_and_multiplexes_real_clients(
    calc_gen: types.ModuleType, transport: str, protocol: str
) -> None:
    v1h, v2h = CountingCalc(calc_gen), CountingCalc(calc_gen)
    with (
        ApacheServer(calc_gen.Calc.Processor(v1h), transport, protocol) as v1,
        ApacheServer(calc_gen.Calc.Processor(v2h), transport, protocol) as v2,
        ProxyThread(proxy_config(v1.port, v2.port)) as proxy,
    ):
        port = proxy.port("calc")
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                with connect(calc_gen.Calc, transport, protocol, port, seqid=41) as peer:
                    c: Any = peer.client
                    for k in range(5):
                        assert c.add(i, k) == i + k
                        assert c.echo(f"client {i} call {k}") == f"client {i} call {k}"
                    assert c.ping() is None
                    with pytest.raises(TApplicationException) as no_route:
                        c.addPair(calc_gen.ttypes.Pair(a=1, b=2))  # no route
                    assert no_route.value.type == TApplicationException.UNKNOWN_METHOD
                    assert no_route.value.message == "no route for addPair"
                    assert c.add(i, 100) == i + 100  # the connection is still usable
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert v1h.calls == ["add"] * 48 and v2h.calls == ["echo"] * 40
        server = proxy.server
        assert server is not None
        # All eight clients shared one upstream connection per server version.
        conns = {name: cs.connections for name, cs in server.core.clusters.items()}
        assert conns == {"outbound|9090|v1|calc.test": 1, "outbound|9090|v2|calc.test": 1}
