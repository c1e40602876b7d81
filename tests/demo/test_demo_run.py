"""``metamesh demo`` as a user runs it: a subprocess, output not a terminal, 1 s per step.

The demo's own verdicts are not trusted: the test reads each step's final table (per version:
proxy, server and client counts and the server's per-method counts) and checks the
distribution itself: step 1 (method route) every sayHello on v2 and every echo on v1; step 2
(20/80 split) sayHello still on v2 and echo's v1 share within 5 sigma of 20%; step 3 (after
the live MetaRouter rewrite) nothing on v1. Proxy, servers and clients must count the same,
no error may be reported, both clients must still be on their first connection, and once the
demo has exited no process of it may be left (none whose command line names its config
directory) and the directory must be gone.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

ROW = re.compile(r"^  (thrift|dubbo)\s+(v1|v2)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", re.M)
Table = dict[tuple[str, str], dict[str, int]]


def final_table(section: str) -> Table:
    rows = ROW.findall(section)[-4:]  # the last table of the step is its final one
    assert len(rows) == 4, section
    return {
        (p, v): dict(
            zip(("proxy", "server", "client", "sayHello", "echo"), map(int, nums), strict=True)
        )
        for p, v, *nums in rows
    }


def processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def demo_run() -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "metamesh", "demo", "--step-seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr


def steps(stdout: str) -> list[Table]:
    sections = re.split(r"^== Step \d/3: .*$", stdout, flags=re.M)[1:]
    assert len(sections) == 3, stdout
    return [final_table(s.split("== Where to look ==")[0]) for s in sections]


def test_demo_exits_0_with_no_errors_on_the_same_connections(
    demo_run: tuple[int, str, str],
) -> None:
    code, out, err = demo_run
    assert code == 0, out + err
    assert out.count("errors: 0 seen by the clients, 0 reported by the proxy") >= 3
    assert re.search(r"In all: [1-9]\d* requests through the mesh, 0 errors\.", out)
    assert out.count("the connection it opened at the start") == 2
    assert "Traceback" not in err, err


def test_each_step_shows_its_route(demo_run: tuple[int, str, str]) -> None:
    method, split, promoted = steps(demo_run[1])
    for table in (method, split, promoted):
        for counts in table.values():  # proxy, servers and clients agree exactly
            assert counts["proxy"] == counts["server"] == counts["client"], table
            assert counts["server"] == counts["sayHello"] + counts["echo"], table
    for p in ("thrift", "dubbo"):
        # 1: method route
        assert method[p, "v1"]["sayHello"] == 0 and method[p, "v2"]["sayHello"] > 0
        assert method[p, "v2"]["echo"] == 0 and method[p, "v1"]["echo"] > 0
        # 2: sayHello stays on v2, echo 20/80
        assert split[p, "v1"]["sayHello"] == 0 and split[p, "v2"]["sayHello"] > 0
        v1, n = split[p, "v1"]["echo"], split[p, "v1"]["echo"] + split[p, "v2"]["echo"]
        assert n >= 20, split
        assert abs(v1 - 0.2 * n) <= 5 * math.sqrt(n * 0.2 * 0.8), split
        # 3: after the live rewrite, everything on v2
        assert promoted[p, "v1"]["server"] == 0 and promoted[p, "v2"]["server"] > 0


def test_nothing_is_left_behind(demo_run: tuple[int, str, str]) -> None:
    out = demo_run[1]
    match = re.search(r"metamesh up (\S+metamesh-demo-\S+) --admin-port", out)
    assert match, out
    config_dir = match[1]
    assert processes_naming(config_dir) == []
    assert not Path(config_dir).exists()
