"""Clients speaking different Thrift transports/protocols through ONE listener to ONE server.

The proxy multiplexes clients onto shared upstream connections; a framed-binary client and a
THeader (or unframed compact) client must not share one, or the server would read mixed
framings on a single connection. The pool is keyed by the downstream codec's ``wire_variant``,
so each variant gets its own upstream connection. The server is Apache's THeader server, which
accepts every client type and reports, per connection, which types it saw.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest
from thrift.transport.THeaderTransport import THeaderClientType

from tests.codecs.thrift.apache_peer import connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.thrift_servers import AnyClientServer, NamedCalc

pytestmark = pytest.mark.interop

VARIANTS = [
    ("framed", "binary", THeaderClientType.FRAMED_BINARY),
    ("header", "binary", THeaderClientType.HEADERS),
    ("buffered", "compact", THeaderClientType.UNFRAMED_COMPACT),
    ("framed", "compact", THeaderClientType.FRAMED_COMPACT),
]


def test_each_wire_variant_gets_its_own_upstream_connection(calc_gen: types.ModuleType) -> None:
    handler = NamedCalc(calc_gen, "s")
    with AnyClientServer(calc_gen.Calc.Processor(handler)) as server:
        snap = mc.snapshot(
            [mc.listener("calc", "thrift", "calc")],
            [mc.cluster("outbound|9090||calc.test", server.port)],
            {"calc": [mc.route("all", "outbound|9090||calc.test", method="~.*")]},
        )
        with ProxyThread(snap) as proxy:
            port = proxy.port("calc")
            errors: list[BaseException] = []
            start = threading.Barrier(len(VARIANTS) * 2)

            def client(i: int, transport: str, protocol: str) -> None:
                try:
                    with connect(calc_gen.Calc, transport, protocol, port) as peer:
                        c: Any = peer.client
                        start.wait(10)  # all variants talk at the same time
                        for k in range(20):
                            text = f"{transport}/{protocol} #{i} call {k}"
                            assert c.echo(text) == f"s:{text}"
                            assert c.add(i, k) == i + k
                except BaseException as e:
                    errors.append(e)

            threads = [
                threading.Thread(target=client, args=(i, t, p))
                for i in range(2)
                for t, p, _ in VARIANTS
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert errors == []
            assert len(handler.echoes()) == 20 * len(threads)
            # One upstream connection per wire variant, each carrying a single client type.
            assert sorted(len(types_) for types_ in server.client_types) == [1] * len(VARIANTS)
            seen = sorted(next(iter(types_)) for types_ in server.client_types)
            assert seen == sorted(ct for _, _, ct in VARIANTS)
            assert proxy.server is not None
            assert proxy.call(lambda: proxy.server.core.stats.active_upstream_connections) == 4
