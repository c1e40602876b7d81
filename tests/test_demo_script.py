"""``scripts/demo.sh`` on a fresh checkout installs only what the demo needs, says only what it
does, and runs the demo; run again, it installs nothing.

The copy has what a checkout has (setup.py, pyproject.toml, README.md, src/, scripts/, the
Node peers' package.json) and no .venv; the script makes one with the Python running this test.
Its output before the demo's first line must be its own two "demo:" lines (pip's output goes to
a log), the venv must hold the demo's libraries and none of the test suite's tools, and neither
npm's node_modules nor Envoy's venv may appear. Slow: pip downloads and installs metamesh's
dependencies.

The script's ``pip install .`` is a build with build isolation, as users run it, so this test
also holds the wheel checks of the native build (one isolated compile in CI, not two): the venv
has every ``HOT_PATH_MODULES`` extension and one mypyc shared library of metamesh's own, none
of an earlier build's extensions left in the checkout's ``build/`` (of a module no longer
compiled), no pure-build notice in pip's log, and ``metamesh --version`` names them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from tests.test_native_build import HOT_PATH, NOTICE_START

ROOT = Path(__file__).resolve().parent.parent
FIRST_DEMO_LINE = "metamesh demo: an embedded mesh routing real Thrift and Dubbo traffic, live."


def copy_checkout(dest: Path) -> Path:
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.pyd")
    shutil.copytree(ROOT / "src", dest / "src", ignore=junk)
    shutil.copytree(ROOT / "scripts", dest / "scripts", ignore=junk)
    node = dest / "tests" / "peers" / "node"  # what scripts/setup.sh would npm install
    node.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(ROOT / "tests" / "peers" / "node" / name, node / name)
    return dest


def plant_stale_extensions(project: Path) -> None:
    """An earlier build's extensions in the checkout's setuptools build directory: one of a
    module no longer compiled, one mypyc shared library of another source set. Neither may
    ship."""
    build_lib = project / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    suffix = EXTENSION_SUFFIXES[0]
    for stale in (f"metamesh/proxy/retired{suffix}", f"0123456789abcdef__mypyc{suffix}"):
        (build_lib / stale).parent.mkdir(parents=True, exist_ok=True)
        (build_lib / stale).write_bytes(b"stale")


def metamesh_extensions(venv: Path) -> tuple[set[str], list[str]]:
    """The modules installed compiled by metamesh's distribution (its RECORD), and its
    top-level shared libraries."""
    (record,) = venv.glob("lib/python3*/site-packages/metamesh-*.dist-info/RECORD")
    files = [line.split(",")[0] for line in record.read_text().splitlines()]
    names = [f for f in files if f.endswith((".so", ".pyd"))]
    compiled = {n.split(".")[0].replace("/", ".") for n in names if n.startswith("metamesh/")}
    return compiled, [n for n in names if "/" not in n]


def run_demo_script(project: Path) -> subprocess.CompletedProcess[str]:
    # the Python of this test's venv may itself be a venv's: its base makes the new venv
    base = Path(getattr(sys, "_base_executable", sys.executable))
    env = {**os.environ, "PYTHON": str(base), "METAMESH_SKIP_APT": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["scripts/demo.sh", "--step-seconds", "0.5", "--admin-port", "0"],
        cwd=project, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def before_demo(output: str) -> list[str]:
    lines = output.splitlines()
    assert FIRST_DEMO_LINE in lines, output[-3000:]
    return lines[: lines.index(FIRST_DEMO_LINE)]


@pytest.mark.slow
def test_demo_script_installs_only_the_demo_and_runs_it(tmp_path: Path) -> None:
    project = copy_checkout(tmp_path / "checkout")
    plant_stale_extensions(project)
    first = run_demo_script(project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stderr == ""
    assert before_demo(first.stdout) == [
        "demo: creating .venv",
        "demo: pip install '.[demo,fast]' into .venv (the first time takes a few minutes: it "
        "compiles the hot path)",
    ]
    assert first.stdout.rstrip().endswith("metamesh demo: done.")

    venv = project / ".venv"
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    installed = {line.split("==")[0] for line in freeze.splitlines()}
    assert {"thrift", "thriftpy2", "dubbo-py", "uvloop"} <= installed
    assert not installed & {"pytest", "ruff", "mypy", "hypothesis"}, installed
    assert not (project / "tests" / "peers" / "node" / "node_modules").exists()
    assert not (project / ".venv-envoy").exists()
    assert (venv / "pip-demo.log").is_file()
    # the quick start runs the native build (issue 14): compiled where a compiler is, as here
    assert NOTICE_START not in (venv / "pip-demo.log").read_text()
    compiled, shared = metamesh_extensions(venv)
    assert compiled == HOT_PATH
    assert len(shared) == 1 and "__mypyc" in shared[0], shared
    version = subprocess.run(
        [str(venv / "bin" / "metamesh"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.strip().endswith(f"native (mypyc, {len(HOT_PATH)} modules compiled)"), version
    # a fresh venv's pip may let xds-protos' older opentelemetry/proto overwrite
    # opentelemetry-proto's (it did here); the script repairs it, so tracing can load
    subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope"],
        check=True,
    )  # fmt: skip

    again = run_demo_script(project)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert before_demo(again.stdout) == []
