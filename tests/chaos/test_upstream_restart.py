"""Upstream servers SIGKILLed and restarted on the same port in the middle of traffic.

``metamesh proxy --config`` serves a Thrift listener (real Apache server, its own process) and
a Dubbo listener (dubbo-py provider, its own process); two Apache Thrift clients and two
dubbo-py consumers call all along. Each protocol also has one call the server holds (it prints
``HOLD`` once it has it), so the kill is known to catch calls in flight: the held one, and the
calls queued behind it on the proxy's one upstream connection. Both servers are SIGKILLed,
stay down for a second while the clients keep calling, and come back on the same ports under
new names (``t2``/``d2``), so each answer says which incarnation served it.

Every good call is accounted for: answered right by the incarnation alive at the time, or,
only if it started before the restart (in flight at the kill, or sent while nothing listened),
answered with the protocol's own error reply. Nothing hangs, nothing is lost on the transport,
every call that starts after the restart succeeds, and the proxy's counters agree call for
call with what the clients saw.
"""

from __future__ import annotations

import threading
import time
import types
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.chaos.traffic import (
    NATIVE,
    OK,
    Call,
    Caller,
    DubboPeer,
    ServerProcess,
    ThriftPeer,
    bad_calls,
    kinds,
    metric,
    scrape,
    static_config,
)
from tests.e2e.mesh import Metamesh, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.interop]

DOWN_SECONDS = 1.0
AFTER_RESTART_SECONDS = 2.0
#: Calls per protocol in flight when the server dies: the held one and one per client.
IN_FLIGHT_AT_KILL = 3


def test_servers_killed_and_restarted_mid_traffic(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    thrift_port, dubbo_port, admin = free_port(), free_port(), free_port()
    stop = threading.Event()
    with ExitStack() as stack:
        thrift = stack.enter_context(ServerProcess.thrift(calc_gen, "t1"))
        dubbo = stack.enter_context(ServerProcess.dubbo("d1"))
        config = tmp_path / "proxy.yaml"
        config.write_text(
            static_config(
                {
                    "calc": ("thrift", thrift_port, thrift.port),
                    "demo": ("dubbo", dubbo_port, dubbo.port),
                }
            )
        )
        proxy = stack.enter_context(
            Metamesh(
                tmp_path, "proxy", "proxy", "--config", str(config), "--admin-port", str(admin)
            )
        )
        wait_until(lambda: "admin on" in proxy.stderr(), "the proxy to start", 20)
        callers = [
            Caller(f"thrift{i}", ThriftPeer(calc_gen, "127.0.0.1", thrift_port), stop)
            for i in range(2)
        ] + [Caller(f"dubbo{i}", DubboPeer("127.0.0.1", dubbo_port), stop) for i in range(2)]
        held = [
            Caller("thrift-held", ThriftPeer(calc_gen, "127.0.0.1", thrift_port), stop,
                   text=lambda *_: "hold:thrift", max_calls=1),
            Caller("dubbo-held", DubboPeer("127.0.0.1", dubbo_port), stop,
                   text=lambda *_: "hold:dubbo", max_calls=1),
        ]  # fmt: skip
        try:
            for c in callers:
                c.start()
            time.sleep(1.0)
            for h in held:
                h.start()
            thrift.wait_line("HOLD hold:thrift")
            dubbo.wait_line("HOLD hold:dubbo")

            def all_blocked() -> bool:  # each client's next call queued behind a held one
                now = time.monotonic()
                return all((c.calling_since or now) < now - 0.2 for c in callers)

            wait_until(all_blocked, "every client to wait behind the held calls")
            killed_at = time.monotonic()
            thrift.kill()
            dubbo.kill()
            time.sleep(DOWN_SECONDS)
            thrift.name, dubbo.name = "t2", "d2"
            thrift.start()
            dubbo.start()
            restarted_at = time.monotonic()
            time.sleep(AFTER_RESTART_SECONDS)
        finally:
            stop.set()
        calls: list[Call] = []
        for c in [*callers, *held]:
            calls += c.finish()
        stats = scrape(f"127.0.0.1:{admin}")
        same = [c.peer.same_connection() for c in callers]  # type: ignore[attr-defined]
        for c in [*callers, *held]:
            c.peer.close()

    assert bad_calls(calls) == []
    # in flight at the kill, per protocol: the held call and each client's next call, queued
    # behind it on the proxy's upstream connection; each got its protocol's error reply
    for protocol in ("thrift", "dubbo"):
        in_flight = [c for c in calls if c.caller.startswith(protocol) and c.started < killed_at]
        reset = [c for c in in_flight if c.kind == NATIVE]
        assert len(reset) == IN_FLIGHT_AT_KILL, reset
        assert all("upstream connection reset" in c.detail for c in reset), reset
        assert f"{protocol}-held" in {c.caller for c in reset}
        # sent while nothing listened: the protocol's connect-failure reply
        down = [c for c in calls if c.caller.startswith(protocol) and killed_at <= c.started]
        assert all("upstream connect failed" in c.detail for c in down if c.kind == NATIVE)
    for c in calls:
        if c.kind == OK and c.ended < killed_at:
            assert c.served_by in ("t1", "d1"), c
        if c.kind == OK and c.started > restarted_at:
            assert c.served_by in ("t2", "d2"), c
        if c.kind == NATIVE:  # in flight at the kill, or sent while nothing listened
            assert c.ended >= killed_at and c.started < restarted_at, c
    after = [c for c in calls if c.started > restarted_at]
    assert after and all(c.kind == OK for c in after), [c for c in after if c.kind != OK][:5]
    for prefix, first, second in (("thrift", "t1", "t2"), ("dubbo", "d1", "d2")):
        served = {c.served_by for c in calls if c.caller.startswith(prefix) and c.kind == OK}
        assert served == {first, second}
    assert same == [True] * 4  # the clients kept their connections to the proxy throughout

    # the proxy counted exactly what the clients saw, per protocol
    tally = kinds(calls)
    for protocol in ("thrift", "dubbo"):
        ok = sum(1 for c in calls if c.caller.startswith(protocol) and c.kind == OK)
        failed = sum(1 for c in calls if c.caller.startswith(protocol) and c.kind == NATIVE)
        assert (
            metric(stats, "istio_requests_total", request_protocol=protocol, response_code="0")
            == ok
        )
        answered = metric(stats, "istio_requests_total", request_protocol=protocol)
        assert answered == ok + failed
    assert metric(stats, "metamesh_local_replies_total") == tally[NATIVE]
    print(
        f"upstream restart: {len(calls)} calls, {tally[OK]} answered right, {tally[NATIVE]}"
        f" protocol errors ({2 * IN_FLIGHT_AT_KILL} in flight at the kill), {len(after)} after"
    )
