"""The proxy loop choice and the control thread: ordering, errors and a clean stop."""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from metamesh.runtime.loops import LoopThread, call_on, loop_name, proxy_loop_factory


def test_the_proxy_loop_is_uvloop() -> None:
    factory = proxy_loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert loop_name(runner.get_loop()) == "uvloop"
    assert loop_name(asyncio.new_event_loop()) == "asyncio"


async def _control_side_hands_snapshots_over() -> None:
    proxy_loop = asyncio.get_running_loop()
    proxy_thread = threading.current_thread()
    applied: list[int] = []

    async def apply(n: int) -> None:
        assert threading.current_thread() is proxy_thread  # runs where the proxy lives
        if n == 3:
            raise OSError("address in use")
        await asyncio.sleep(0.001 * (5 - n))  # slower first: order must still hold
        applied.append(n)

    handover = call_on(proxy_loop, apply)
    errors: list[str] = []

    async def control() -> str:
        assert threading.current_thread() is not proxy_thread
        assert loop_name() == "asyncio"
        for n in range(5):
            try:
                await handover(n)
            except OSError as exc:  # reaches the caller, as a bind error reaches the xDS client
                errors.append(str(exc))
        return "done"

    thread = LoopThread("test-control")
    thread.start()
    try:
        assert await thread.run(control()) == "done"
    finally:
        await thread.stop()
    assert applied == [0, 1, 2, 4]
    assert errors == ["address in use"]


def test_snapshots_reach_the_proxy_loop_in_order_with_errors() -> None:
    factory = proxy_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_control_side_hands_snapshots_over())


async def _stop_cancels_what_runs() -> None:
    thread = LoopThread("test-stop")
    thread.start()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    pending = asyncio.wrap_future(thread.submit(forever()))
    await asyncio.to_thread(started.wait, 5)
    await thread.stop()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert not thread._thread.is_alive()


def test_stop_cancels_what_still_runs_and_joins() -> None:
    asyncio.run(_stop_cancels_what_runs())
