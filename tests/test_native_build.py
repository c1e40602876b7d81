"""``pip install .`` compiles the hot path when it can and says why when it cannot.

``setup.py``'s decision (``choose_build``) is a pure function of ``METAMESH_MYPYC``, the setup
commands and a toolchain probe, tested as a table; the probe itself runs against this machine's
compiler (which ``scripts/setup.sh`` installs) and against a missing compiler and missing
headers. The slow tests run pip on a copy of the project: a compiler that fails after the
probe passed gives a pure wheel and one line saying why; a required native build without a
compiler fails the install. The build with build isolation, as users run it, and its wheel's
checks (every ``HOT_PATH_MODULES`` extension, mypyc's shared library, no stale extension,
running native) are in ``tests/test_demo_script.py``, whose ``scripts/demo.sh`` runs that
very ``pip install .``: one isolated compile in CI, not two.

A pure build's proxy says once per process how to get the native build
(``build_info.pure_build_notice``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from metamesh import build_info

ROOT = Path(__file__).resolve().parent.parent
NOTICE_START = "metamesh: installing pure Python, the hot path is not compiled"


def load_setup() -> ModuleType:
    """``setup.py`` as a module (it calls ``setup()`` only when run as ``__main__``)."""
    if "metamesh_setup" in sys.modules:
        return sys.modules["metamesh_setup"]
    spec = importlib.util.spec_from_file_location("metamesh_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["metamesh_setup"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


setup_py = load_setup()
HOT_PATH = {"metamesh." + m.replace("/", ".") for m in setup_py.HOT_PATH_MODULES}


def probe_returning(problem: str | None) -> Callable[[], str | None]:
    return lambda: problem


def probe_never_called() -> str | None:
    raise AssertionError("the toolchain was probed, but the answer could not matter")


# --- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [None, "", "auto", " AUTO "])
def test_auto_compiles_when_the_toolchain_works(setting: str | None) -> None:
    choice = setup_py.choose_build(setting, ["bdist_wheel", "-d", "/x"], probe_returning(None))
    assert choice == setup_py.BuildChoice(native=True, required=False, notice=None)


def test_auto_without_a_toolchain_is_pure_and_says_why_in_one_line() -> None:
    choice = setup_py.choose_build(None, ["bdist_wheel"], probe_returning("no cc here"))
    assert not choice.native and not choice.required
    assert choice.notice.startswith(NOTICE_START)
    assert "no cc here" in choice.notice and "\n" not in choice.notice
    assert "METAMESH_MYPYC=1" in choice.notice


def test_zero_is_pure_without_probing() -> None:
    choice = setup_py.choose_build("0", ["bdist_wheel"], probe_never_called)
    assert choice == setup_py.BuildChoice(native=False)


def test_one_requires_the_native_build() -> None:
    choice = setup_py.choose_build("1", ["install"], probe_returning(None))
    assert choice == setup_py.BuildChoice(native=True, required=True)
    with pytest.raises(SystemExit, match=r"METAMESH_MYPYC=1.*no cc here"):
        setup_py.choose_build("1", ["bdist_wheel"], probe_returning("no cc here"))


@pytest.mark.parametrize("setting", [None, "1"])
@pytest.mark.parametrize(
    "commands", [["egg_info"], ["dist_info", "--output-dir", "/x", "--keep-egg-info"], ["sdist"]]
)
def test_metadata_and_sdist_neither_probe_nor_compile(
    setting: str | None, commands: list[str]
) -> None:
    choice = setup_py.choose_build(setting, commands, probe_never_called)
    assert choice == setup_py.BuildChoice(native=False)


def test_editable_installs_stay_pure_unless_native_is_required() -> None:
    choice = setup_py.choose_build(None, ["editable_wheel", "--dist-dir", "/x"], probe_never_called)
    assert not choice.native and "editable" in (choice.notice or "")
    choice = setup_py.choose_build("1", ["editable_wheel"], probe_returning(None))
    assert choice.native and choice.required


@pytest.mark.parametrize("setting", ["yes", "2", "native"])
def test_unknown_setting_fails_loudly(setting: str) -> None:
    with pytest.raises(SystemExit, match="use 0"):
        setup_py.choose_build(setting, ["bdist_wheel"], probe_returning(None))


# --- the probe ------------------------------------------------------------------------------


def test_probe_finds_this_machines_compiler_and_headers() -> None:
    assert setup_py.toolchain_problem() is None


def test_probe_reports_a_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    problem = setup_py.toolchain_problem()
    assert problem is not None and "no working C compiler" in problem


def test_probe_reports_missing_headers(tmp_path: Path) -> None:
    problem = setup_py.toolchain_problem(include_dirs=[str(tmp_path)])
    assert problem == f"Python.h is not in {tmp_path} (the Python headers are missing)"


# --- the runtime notice ---------------------------------------------------------------------


def test_pure_build_notice_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(build_info, "_notice_given", False)
    log = logging.getLogger("metamesh.proxy")
    with caplog.at_level(logging.INFO, logger="metamesh.proxy"):
        build_info.log_pure_build_notice(log)
        build_info.log_pure_build_notice(log)
    assert build_info.pure_build_notice() is None
    lines = [r.getMessage() for r in caplog.records]
    if build_info.is_native():
        assert lines == []
    else:
        assert lines == [build_info.PURE_BUILD_NOTICE]
        assert caplog.records[0].levelno == logging.WARNING
        assert "not compiled" in lines[0] and "pip install ." in lines[0]


# --- real builds ----------------------------------------------------------------------------


def copy_project(dest: Path) -> Path:
    """What a build reads (no build/, caches, editable metadata or extensions), copied."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.pyd")
    shutil.copytree(ROOT / "src", dest / "src", ignore=junk)
    return dest


def pip_wheel(project: Path, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``pip wheel -v --no-deps`` of ``project`` into ``out`` (verbose: the build's lines show)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), *args, "."],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def only_wheel(out: Path) -> Path:
    (wheel,) = out.glob("metamesh-*.whl")
    return wheel


def extensions_in(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return [n for n in z.namelist() if n.endswith(".so") or n.endswith(".pyd")]


def cc_that_only_builds_the_probe(directory: Path) -> Path:
    """A ``CC`` that passes setup.py's probe and fails every real compile."""
    cc = directory / "cc-probe-only"
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc is not None
    cc.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *metamesh_probe.c*) exec {gcc} "$@";; esac\n'
        'echo "cc-probe-only: refusing to compile" >&2\n'
        "exit 1\n"
    )
    cc.chmod(0o755)
    return cc


@pytest.mark.slow
def test_failed_compile_in_auto_mode_gives_a_pure_wheel_and_one_line(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "wheels"
    cc = cc_that_only_builds_the_probe(tmp_path)
    # without isolation: this venv's pinned mypy, and no download
    result = pip_wheel(project, out, "--no-build-isolation", METAMESH_MYPYC="", CC=str(cc))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "cc-probe-only: refusing" in output  # the compile did run and fail
    notices = [line.strip() for line in output.splitlines() if NOTICE_START in line]
    assert len(notices) == 1 and "compiling it failed" in notices[0], notices
    assert extensions_in(only_wheel(out)) == []


def test_required_native_build_without_a_compiler_fails_the_install(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "wheels"
    env = {"METAMESH_MYPYC": "1", "CC": "/nonexistent/cc"}
    result = pip_wheel(project, out, "--no-build-isolation", **env)
    assert result.returncode != 0
    assert "METAMESH_MYPYC=1, but the hot path cannot compile" in result.stdout + result.stderr
    assert not out.exists() or not list(out.glob("*.whl"))


def test_auto_without_a_compiler_gives_a_pure_wheel_and_one_line(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    out = tmp_path / "wheels"
    env = {"METAMESH_MYPYC": "", "CC": "/nonexistent/cc"}
    result = pip_wheel(project, out, "--no-build-isolation", **env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    notices = [line.strip() for line in output.splitlines() if NOTICE_START in line]
    assert len(notices) == 1 and "no working C compiler" in notices[0], notices
    wheel = only_wheel(out)
    assert wheel.name.endswith("-py3-none-any.whl") and extensions_in(wheel) == []


def test_the_isolated_build_holds_every_dependency() -> None:
    """mypyc type-checks what the compiled modules import: a dependency missing from the build
    environment fails the check and the build falls back to pure (a fresh venv's first
    ``pip install .`` did), so build-system.requires lists every runtime dependency."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires = set(project["build-system"]["requires"])
    missing = set(project["project"]["dependencies"]) - requires
    assert not missing, f"add to [build-system] requires: {sorted(missing)}"
    assert "types-PyYAML" in requires
