"""``metamesh control-plane`` + ``metamesh proxy --xds`` as separate processes.

Real Apache Thrift client and servers. The proxy gets its config from the control plane;
the control plane is killed (SIGKILL, no goodbye): traffic keeps flowing on the last config;
the MetaRouter is changed while it is down and the control plane restarted on the same port:
the proxy reconnects by itself and converges on the changed route, on the same client
connection.
"""

from __future__ import annotations

import json
import signal
import types
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import (
    Metamesh,
    ThriftClient,
    free_address,
    free_port,
    router,
    thrift_mesh,
    to,
    wait_until,
    write,
)
from tests.runtime.thrift_servers import NamedCalc

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def servers(calc_gen: types.ModuleType) -> Iterator[tuple[int, int]]:
    with ExitStack() as stack:
        ports = []
        for name in ("v1", "v2"):
            processor = calc_gen.Calc.Processor(NamedCalc(calc_gen, name))
            ports.append(stack.enter_context(ApacheServer(processor, "framed", "binary")).port)
        yield ports[0], ports[1]


def test_proxy_survives_and_follows_a_control_plane_restart(
    calc_gen: types.ModuleType, servers: tuple[int, int], tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    thrift_mesh(config, address, port, *servers)
    write(config / "router.yaml", router(f"  - name: all-v1\n    route: [{to('v1')}]"))
    xds = str(free_port())
    cp_args = ("control-plane", "--config-dir", str(config), "--xds-port", xds)
    proxy_args = ("proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0", "--node-id", "p1")
    with ExitStack() as stack:
        cp = stack.enter_context(Metamesh(tmp_path, "cp", *cp_args))
        cp.wait_for("control plane (xDS) on")
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", *proxy_args, "--namespace", "demo", "--labels", "app=e2e")
        )
        proxy.wait_for(f"{address}:{port}  thrift  all-v1 -> v1")
        client = stack.enter_context(closing(ThriftClient(calc_gen, address, port)))
        assert {client.echo(str(i)) for i in range(20)} == {f"v1:{i}" for i in range(20)}

        cp.stop(signal.SIGKILL)
        wait_until(lambda: "xDS stream to" in proxy.stderr(), "the proxy to see it go")
        assert all(client.echo("down").startswith("v1:") for _ in range(50))
        write(config / "router.yaml", router(f"  - name: all-v2\n    route: [{to('v2')}]"))
        assert all(client.echo("still").startswith("v1:") for _ in range(20))

        cp2 = stack.enter_context(Metamesh(tmp_path, "cp2", *cp_args))
        cp2.wait_for("control plane (xDS) on")
        wait_until(lambda: client.echo("poll").startswith("v2:"), "convergence", timeout=15)
        assert all(client.echo("after").startswith("v2:") for _ in range(20))
        assert client.same_connection()
        with urllib.request.urlopen(f"http://{proxy.admin()}/config_dump") as reply:
            dump = json.load(reply)
        assert [x["address"] for x in dump["listeners"]] == [address]
        assert proxy.stop() == 0
