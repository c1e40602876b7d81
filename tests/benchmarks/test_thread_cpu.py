"""benchmarks/thread_cpu.py: per-thread ticks and switches read from /proc, and one tiny run
through a real static proxy (pure build; the harness is the same for either build)."""

from __future__ import annotations

import os
import re
import threading

import pytest

from benchmarks import thread_cpu

NATIVE = bool(os.environ.get("METAMESH_EXPECT_NATIVE"))


def test_threads_lists_every_thread_of_a_process() -> None:
    stop = threading.Event()
    native: list[int] = []
    worker = threading.Thread(
        target=lambda: (native.append(threading.get_native_id()), stop.wait())
    )
    worker.start()
    try:
        while not native:
            stop.wait(0.01)
        found = thread_cpu.threads(os.getpid())
    finally:
        stop.set()
        worker.join()
    assert {str(threading.get_native_id()), str(native[0])} <= set(found)
    name, user, system, voluntary, involuntary = found[str(native[0])]
    assert name and min(user, system, voluntary, involuntary) >= 0


def test_moved_reports_only_threads_that_moved() -> None:
    before = {"1": ("main", 10, 5, 100, 2), "2": ("idle", 0, 0, 3, 0)}
    after = {"1": ("main", 14, 6, 130, 2), "2": ("idle", 0, 0, 3, 0), "3": ("new", 1, 0, 4, 1)}
    assert thread_cpu.moved(before, after) == ["main 4+1t 30v/0i", "new 1+0t 4v/1i"]


@pytest.mark.skipif(NATIVE, reason="the harness is the same on either build")
def test_a_tiny_run_prints_a_line_per_repetition(capsys: pytest.CaptureFixture[str]) -> None:
    code = thread_cpu.main(
        ["--protocol", "thrift", "--shape", "c4k8", "--targets", "static-pure", "--reps", "2",
         "--warmup", "0.3", "--duration", "0.7"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("rep ")]
    assert len(lines) == 2, out
    for line in lines:
        assert re.search(r"\d+\.\d\d us/req, \d+ threads: \S", line), line
