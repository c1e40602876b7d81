"""SIGTERM under load, Thrift and Dubbo at once: no call sent before the close is lost.

One proxy with ``--drain-timeout 30`` serves a Thrift listener (real Apache server, its own
process) and a Dubbo listener (dubbo-py provider, its own process), each server taking 1 s per
call, in each mode a proxy runs in: ``proxy --config``, ``up`` and ``control-plane`` +
``proxy --xds`` (the SIGTERM goes to the process that runs the proxy). Three Apache Thrift
clients and three dubbo-py consumers call in a loop, so calls are in flight on every connection
when the proxy gets SIGTERM.

How a client knows to stop (``docs/operations.md``, "Shutdown"):

* a Dubbo consumer gets the provider's read-only event first (the proxy sends it when the drain
  starts) and sends nothing more on that connection, as Apache Dubbo's consumers do (dubbo-py
  skips the event; :func:`tests.chaos.traffic.dubbo_client_class` honours it);
* Thrift has no such notice: a client checks its connection for the proxy's FIN before each
  call, as a connection pool does, and pauses 1 ms after each reply (``THINK``; the documented
  race of ``tests/runtime/test_drain_e2e.py``: a call written in the instant between the last
  reply and the FIN crosses the FIN, with any proxy).

Exact counts: zero failed calls (no transport error, no error reply); every call each server
answered (it prints ``SERVED <text>``) reached the client that sent it, and nothing else did;
every client got at least one answer; the proxy exits 0 on its own, long before the deadline.
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
    Caller,
    DubboPeer,
    ServerProcess,
    ThriftPeer,
    kinds,
    static_config,
)
from tests.e2e import test_up_dubbo as dubbo_mesh
from tests.e2e.mesh import (
    MODES,
    DeployedMesh,
    Metamesh,
    free_address,
    free_port,
    router,
    thrift_mesh,
    to,
    wait_until,
    write,
)

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.interop]

CLIENTS = 3
#: See the module docstring: Thrift clients pause this long after a reply.
THINK = 0.001


def slow_call(name: str, n: int) -> str:
    return f"slow:1:{name}-{n}"


def start_proxy(
    stack: ExitStack, tmp_path: Path, mode: str, thrift_up: int, dubbo_up: int
) -> tuple[Metamesh, tuple[str, int], tuple[str, int]]:
    """The proxy process in ``mode`` (``static`` or one of :data:`MODES`), serving; the
    Thrift and Dubbo listeners' addresses."""
    if mode == "static":
        thrift_at, dubbo_at = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
        config = tmp_path / "proxy.yaml"
        config.write_text(
            static_config(
                {
                    "calc": ("thrift", thrift_at[1], thrift_up),
                    "demo": ("dubbo", dubbo_at[1], dubbo_up),
                }
            )
        )
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--config", str(config),
                     "--admin-port", str(free_port()), "--drain-timeout", "30")
        )  # fmt: skip
        wait_until(lambda: "admin on" in proxy.stderr(), "the proxy to start", 20)
        return proxy, thrift_at, dubbo_at
    thrift_at, dubbo_at = free_address(), free_address()
    directory = tmp_path / "mesh"
    directory.mkdir()
    thrift_mesh(directory, *thrift_at, thrift_up, thrift_up)  # v1 and v2: the same server
    write(directory / "dubbo.yaml", dubbo_mesh.services(dubbo_at, dubbo_up, dubbo_up))
    thrift = router(f"  - name: all\n    route: [{to('v1')}]")
    dubbo = dubbo_mesh.router(f"  - name: all\n    route: [{dubbo_mesh.to('v1')}]")
    write(directory / "router.yaml", thrift + "---" + dubbo)
    deployed = stack.enter_context(DeployedMesh(tmp_path, mode, directory, "--drain-timeout", "30"))
    deployed.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  all -> v1")
    deployed.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo  all -> v1")
    return deployed.proxy, thrift_at, dubbo_at


@pytest.mark.parametrize("mode", ["static", *MODES])
def test_sigterm_under_load_loses_no_call_sent_before_the_close(
    calc_gen: types.ModuleType, tmp_path: Path, mode: str
) -> None:
    never = threading.Event()  # callers stop only when the proxy tells them to
    with ExitStack() as stack:
        thrift = stack.enter_context(ServerProcess.thrift(calc_gen, "t"))
        dubbo = stack.enter_context(ServerProcess.dubbo("d"))
        proxy, thrift_at, dubbo_at = start_proxy(stack, tmp_path, mode, thrift.port, dubbo.port)
        callers = [
            Caller(f"thrift{i}", ThriftPeer(calc_gen, *thrift_at), never,
                   text=slow_call, pause=THINK, check_usable=True)
            for i in range(CLIENTS)
        ] + [
            Caller(f"dubbo{i}", DubboPeer(*dubbo_at), never,
                   text=slow_call, pause=0, check_usable=True)
            for i in range(CLIENTS)
        ]  # fmt: skip
        for c in callers:
            c.start()
        for c in callers:
            assert c.started_calling.wait(5)
        time.sleep(2.5)  # a few calls done, one in flight or queued on every connection
        assert proxy.proc is not None
        start = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=30) == 0
        took = time.monotonic() - start
        calls = [call for c in callers for call in c.finish(10)]
        # the Dubbo consumers stopped on the provider's read-only event, each
        readonly = [c.peer.client.readonly.is_set() for c in callers if c.name.startswith("dubbo")]
        time.sleep(0.2)  # the servers' last SERVED lines
        served = {
            "t": {line.split()[1] for line in thrift.drain_lines() if line.startswith("SERVED")},
            "d": {line.split()[1] for line in dubbo.drain_lines() if line.startswith("SERVED")},
        }
        for c in callers:
            c.peer.close()

    tally = kinds(calls)
    assert tally[OK] == len(calls), [c for c in calls if c.kind != OK]
    for c in callers:
        assert any(call.kind == OK for call in c.calls), c.name
    assert readonly == [True] * CLIENTS
    for protocol, server in (("thrift", "t"), ("dubbo", "d")):
        answered = {c.text for c in calls if c.caller.startswith(protocol)}
        assert {c.served_by for c in calls if c.caller.startswith(protocol)} == {server}
        assert answered == served[server]  # every call the server answered reached its client
    # the proxy waited for the calls in flight (serialized on one upstream connection per
    # protocol: up to three 1 s calls each) and no longer: far from the 30 s deadline
    assert took < 10
    log = proxy.stderr()
    assert "drain deadline" not in log
    print(
        f"drain under load ({mode}): exit {took:.2f} s after SIGTERM; {len(calls)} calls sent, all "
        f"answered right (thrift {sum(c.caller.startswith('thrift') for c in calls)}, "
        f"dubbo {sum(c.caller.startswith('dubbo') for c in calls)})"
    )
