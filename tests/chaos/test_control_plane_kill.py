"""The control plane SIGKILLed during traffic through ``metamesh proxy --xds``, then restarted.

``metamesh control-plane`` serves a directory with a Thrift and a Dubbo service, each with
subsets v1 and v2 (real Apache Thrift servers; dubbo-py providers in processes of their own,
each answering with its subset's name), and MetaRouters sending everything to v1. Two Apache
Thrift clients and two dubbo-py consumers call all along through ``metamesh proxy --xds``.
The control plane is killed (SIGKILL: no goodbye), the routers are changed to v2 while it is
down, and it is restarted on the same port.

Exact counts: zero failed calls, each client on the connection it opened; every call answered
by v1 until the new config is in force, then by v2 (one switch per client, none before the
restart); the proxy follows the change within 2 s of the restarted control plane listening
(issue 15: reconnect back-off capped at 1 s); the proxy's ``istio_requests_total`` per protocol
and version is exactly what the clients saw.
"""

from __future__ import annotations

import signal
import threading
import time
import types
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.chaos.traffic import (
    OK,
    Call,
    Caller,
    DubboPeer,
    ServerProcess,
    ThriftPeer,
    kinds,
    metric,
    scrape,
)
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import test_up_dubbo as dubbo_mesh
from tests.e2e.mesh import (
    Metamesh,
    free_address,
    free_port,
    router,
    thrift_mesh,
    to,
    wait_until,
    write,
)
from tests.runtime.thrift_servers import NamedCalc

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.interop]

FOLLOW_BUDGET = 2.0  # seconds from the restarted control plane listening to the new route


def routers(subset: str) -> str:
    """One MetaRouter per service, everything to ``subset``."""
    thrift = router(f"  - name: all-{subset}\n    route: [{to(subset)}]")
    dubbo = dubbo_mesh.router(f"  - name: all-{subset}\n    route: [{dubbo_mesh.to(subset)}]")
    return thrift + "---" + dubbo


def test_control_plane_killed_and_restarted_during_traffic(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    thrift_at, dubbo_at = free_address(), free_address()
    xds = str(free_port())
    admin = f"127.0.0.1:{free_port()}"
    cp_args = ("control-plane", "--config-dir", str(config), "--xds-port", xds)
    stop = threading.Event()
    with ExitStack() as stack:
        thrift_ports = [
            stack.enter_context(
                ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, v)), "framed", "binary")
            ).port
            for v in ("v1", "v2")
        ]
        dubbo_ports = [stack.enter_context(ServerProcess.dubbo(v)).port for v in ("v1", "v2")]
        thrift_mesh(config, *thrift_at, *thrift_ports)
        write(config / "dubbo.yaml", dubbo_mesh.services(dubbo_at, *dubbo_ports))
        write(config / "router.yaml", routers("v1"))
        cp = stack.enter_context(Metamesh(tmp_path, "cp", *cp_args))
        cp.wait_for("control plane (xDS) on")
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}",
                     "--admin-port", admin.rsplit(":", 1)[1], "--node-id", "chaos-proxy")
        )  # fmt: skip
        proxy.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  all-v1 -> v1")
        proxy.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo  all-v1 -> v1")
        callers = [
            Caller(f"thrift{i}", ThriftPeer(calc_gen, *thrift_at), stop) for i in range(2)
        ] + [Caller(f"dubbo{i}", DubboPeer(*dubbo_at), stop) for i in range(2)]
        try:
            for c in callers:
                c.start()
            time.sleep(1.0)
            cp.stop(signal.SIGKILL)
            wait_until(lambda: "xDS stream to" in proxy.stderr(), "the proxy to see it go")
            time.sleep(0.5)
            write(config / "router.yaml", routers("v2"))  # changed while nothing serves it
            time.sleep(1.5)
            restarted = time.monotonic()
            cp2 = stack.enter_context(Metamesh(tmp_path, "cp2", *cp_args))
            cp2.wait_for("control plane (xDS) on")
            listening = time.monotonic()

            def all_on_v2() -> bool:
                return all(c.calls and c.calls[-1].served_by == "v2" for c in callers)

            wait_until(all_on_v2, "the proxy to follow the changed routers", 15)
            time.sleep(1.0)
        finally:
            stop.set()
        calls: list[Call] = []
        for c in callers:
            calls += c.finish()
        same = [c.peer.same_connection() for c in callers]  # type: ignore[attr-defined]
        stats = scrape(admin)
        for c in callers:
            c.peer.close()
        assert proxy.stop() == 0

    tally = kinds(calls)
    assert tally[OK] == len(calls), [c for c in calls if c.kind != OK][:5]
    assert same == [True] * len(callers)
    follow = []
    for c in callers:
        versions = [call.served_by for call in c.calls]
        switch = versions.index("v2")
        assert versions == ["v1"] * switch + ["v2"] * (len(versions) - switch), c.name
        assert c.calls[switch].ended > restarted  # nothing changed before the restart
        follow.append(c.calls[switch].ended - listening)
    assert max(follow) <= FOLLOW_BUDGET, follow
    for protocol in ("thrift", "dubbo"):
        for version in ("v1", "v2"):
            seen = sum(1 for c in calls if c.caller.startswith(protocol) and c.served_by == version)
            counted = metric(
                stats, "istio_requests_total", request_protocol=protocol,
                destination_version=version, response_code="0",
            )  # fmt: skip
            assert counted == seen, (protocol, version)
        total = sum(1 for c in calls if c.caller.startswith(protocol))
        assert metric(stats, "istio_requests_total", request_protocol=protocol) == total
    print(
        f"control plane killed: {len(calls)} calls, all answered right; new route followed "
        f"{max(follow):.2f} s after the restarted control plane listened "
        f"({listening - restarted:.2f} s from its start to listening)"
    )
