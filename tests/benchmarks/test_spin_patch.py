"""benchmarks/spin_patch.py: the added-work variant spins before each client read reaches the
core, and refuses a protocols.py it does not recognise."""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Any

import pytest

from benchmarks.spin_patch import add_spin, main

PROTOCOLS = Path(__file__).parents[2] / "src" / "metamesh" / "runtime" / "protocols.py"


class _Core:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, bytes, float, int]] = []

    def downstream_data(self, conn: Any, data: bytes, now: float) -> None:
        self.calls.append((conn, data, now, time.perf_counter_ns()))


class _Turn:
    def __init__(self) -> None:
        self.core = _Core()

    def now(self) -> float:
        return 12.5


def _load(source: str) -> types.ModuleType:
    module = types.ModuleType("metamesh.runtime.protocols_spin")
    exec(compile(source, str(PROTOCOLS), "exec"), module.__dict__)
    return module


def test_the_variant_waits_before_the_core_gets_each_read() -> None:
    ns = 2_000_000  # 2 ms: far above the call's own cost, so the wait is what is seen
    module = _load(add_spin(PROTOCOLS.read_text(), ns))
    turn = _Turn()
    proto = module.DownstreamProtocol(object(), turn, "listener")
    proto.conn = conn = object()
    started = time.perf_counter_ns()
    proto.data_received(b"frame")
    [(got_conn, data, now, reached)] = turn.core.calls
    assert (got_conn, data, now) == (conn, b"frame", 12.5)
    assert reached - started >= ns


def test_the_unpatched_source_does_not_wait() -> None:
    module = _load(add_spin(PROTOCOLS.read_text(), 0))
    turn = _Turn()
    proto = module.DownstreamProtocol(object(), turn, "listener")
    proto.data_received(b"frame")  # no connection: nothing reaches the core
    assert turn.core.calls == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio\n",  # no data_received at all
        PROTOCOLS.read_text().replace("self.turn.now())\n", "now)\n"),  # the call changed
        PROTOCOLS.read_text().replace("\nimport asyncio\n", "\n"),  # no import to hang on
    ],
)
def test_an_unrecognised_source_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="not where spin_patch expects it"):
        add_spin(source, 500)


def test_the_command_edits_the_file_and_names_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "protocols.py"
    good.write_text(PROTOCOLS.read_text())
    assert main([str(good), "750"]) == 0
    assert "spin_from < 750:" in good.read_text()
    bad = tmp_path / "other.py"
    bad.write_text("x = 1\n")
    assert main([str(bad), "750"]) == 1
    assert str(bad) in capsys.readouterr().err
    assert bad.read_text() == "x = 1\n"
    assert main([str(good)]) == 2
