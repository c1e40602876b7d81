"""metamesh's build: the data-plane hot path compiled with mypyc wherever a C compiler is.

``pip install .`` and ``pip wheel .`` compile the modules every proxied request runs through --
the codecs' framing, the proxy core and the runtime's socket adapters (``HOT_PATH_MODULES``) --
to C extensions with mypyc, the compiler that ships with mypy (pinned in ``[build-system]
requires``, so build isolation brings it). The code is the same, fully typed Python: mypyc turns
attribute access on native classes into struct loads, calls between compiled functions into C
calls and ``Final`` constants into C constants, which takes about 60% off the core's CPU time
per request (see benchmarks/README.md). Everything else (config loading, admin, xDS, control
plane) stays interpreted: it is not on the hot path and leans on pydantic and asyncio, where
compiling buys nothing. Classes that applications extend (codecs, filters, load balancers) are
marked ``@mypyc_attr(allow_interpreted_subclasses=True)`` so plain-Python codecs and filters
still subclass them.

``METAMESH_MYPYC`` picks the build. Unset (or ``auto``): compile when mypyc imports, ``Python.h``
is there and the C compiler setuptools would use compiles a file that includes it; otherwise,
or when the compile itself fails, install the pure-Python tree and say why in one line on
stderr (pip shows a build's output with ``-v`` only; the proxy's startup log says it again).
Editable installs stay pure in auto mode: a compiled module would shadow edits to its source.
``0`` always installs pure Python (``scripts/setup.sh`` does, for the development venv); ``1``
always compiles and fails the install when it cannot (``scripts/build_mypyc.sh`` does, into
``build/native``, for the test suite's second pass).

The decision runs only for commands that build code, so pip's metadata steps (``egg_info``,
``dist_info``) and ``sdist`` neither probe nor compile. The build step removes extensions an
earlier build left in ``build/`` for modules no longer compiled (the shared library's name
changes with the module list), so they cannot ship in a later wheel.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec
from pathlib import Path
from typing import ClassVar

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

#: Modules compiled by the native build, relative to ``src/metamesh``. Only modules on the
#: per-request path belong here; ``tests/test_build_info.py`` checks each exists and, on the
#: native build, was loaded compiled; ``tests/test_native_build.py`` that a wheel compiles each.
HOT_PATH_MODULES = [
    "codecs/message",
    "codecs/base",
    "codecs/thrift/codec",
    "codecs/thrift/header",
    "codecs/thrift/protocol",
    "codecs/thrift/transport",
    "codecs/dubbo/codec",
    "codecs/dubbo/body",
    "codecs/dubbo/descriptor",
    "codecs/dubbo/header",
    "codecs/dubbo/metadata",
    "codecs/redis/codec",
    "codecs/redis/resp",
    "codecs/redis/commands",
    "codecs/redis/session",
    "codecs/redis/cluster",
    "proxy/connection",
    "proxy/core",
    "proxy/downstream",
    "proxy/request_path",
    "proxy/runs",
    "proxy/attempts",
    "proxy/pool",
    "proxy/replies",
    "proxy/router",
    "proxy/lb",
    "proxy/stats",
    "proxy/tracing",
    "proxy/upstream",
    "proxy/policy",
    "proxy/mirror",
    "proxy/config",
    "proxy/listener",
    "proxy/codec_ref",
    "proxy/filters/base",
    "proxy/filters/chain",
    "proxy/filters/builtins",
    "proxy/filters/fault",
    "proxy/filters/local_ratelimit",
    "proxy/filters/ratelimit",
    "proxy/filters/rbac",
    "runtime/protocols",
    "runtime/tls_protocols",
]

#: setup.py commands that build code (the rest only write metadata or an sdist).
BUILD_COMMANDS = frozenset({"build", "build_ext", "bdist_wheel", "bdist_egg", "install"})
#: Commands of an editable install, which auto mode keeps pure.
EDITABLE_COMMANDS = frozenset({"editable_wheel", "develop"})

#: Compiled in a temporary directory to tell whether C extensions can be built here.
PROBE_SOURCE = "#include <Python.h>\nint metamesh_probe(void) { return Py_IsInitialized(); }\n"


#: The stderr line of an editable install in auto mode.
EDITABLE_NOTICE = (
    "metamesh: installing pure Python, the hot path is not compiled: an editable install stays "
    "Python so that edits to the source take effect (pip install . compiles it; "
    "METAMESH_MYPYC=1 compiles it in place; scripts/build_mypyc.sh builds it into build/native)."
)


@dataclass(frozen=True, slots=True)
class BuildChoice:
    """Whether to compile the hot path, whether a failure fails the install, what to print."""

    native: bool
    required: bool = False
    notice: str | None = None


def pure_notice(reason: str) -> str:
    """The one stderr line of an auto build that installs pure Python."""
    return (
        f"metamesh: installing pure Python, the hot path is not compiled: {reason}. "
        "With a C compiler and the Python headers (e.g. build-essential python3-dev), "
        "pip install . compiles it; METAMESH_MYPYC=1 makes that required."
    )


def choose_build(
    setting: str | None,
    commands: Collection[str],
    toolchain_problem: Callable[[], str | None],
) -> BuildChoice:
    """What ``METAMESH_MYPYC=setting`` means for these setup.py commands (module docstring).

    ``toolchain_problem`` is only asked when the answer depends on it. Raises ``SystemExit``
    for a setting that is not ``0``, ``1`` or ``auto``, and when ``1`` cannot be honoured.
    """
    mode = (setting or "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"metamesh: METAMESH_MYPYC={setting!r}: use 0 (pure), 1 (native) or auto")
    if mode == "0" or not (BUILD_COMMANDS | EDITABLE_COMMANDS) & set(commands):
        return BuildChoice(native=False)
    if mode == "auto" and EDITABLE_COMMANDS & set(commands):
        return BuildChoice(native=False, notice=EDITABLE_NOTICE)
    problem = toolchain_problem()
    if problem is None:
        return BuildChoice(native=True, required=mode == "1")
    if mode == "1":
        raise SystemExit(f"metamesh: METAMESH_MYPYC=1, but the hot path cannot compile: {problem}")
    return BuildChoice(native=False, notice=pure_notice(problem))


def toolchain_problem(include_dirs: list[str] | None = None) -> str | None:
    """Why the hot path cannot be compiled here, or ``None`` when it can.

    Checks that mypyc is installed, that ``Python.h`` is in ``include_dirs`` (by default this
    interpreter's, as ``build_ext`` uses) and that the compiler ``build_ext`` would run (``CC``,
    ``CFLAGS`` and sysconfig, through distutils) compiles a file including it.
    """
    # setuptools is imported, so this is its copy of distutils (the only one from Python 3.12)
    from distutils import ccompiler
    from distutils import sysconfig as distutils_sysconfig

    if find_spec("mypyc") is None:
        return "mypy (which ships mypyc) is not installed in the build environment"
    if include_dirs is None:
        paths = sysconfig.get_paths()
        include_dirs = list(dict.fromkeys([paths["include"], paths["platinclude"]]))
    if not any(Path(d, "Python.h").is_file() for d in include_dirs):
        return f"Python.h is not in {', '.join(include_dirs)} (the Python headers are missing)"
    compiler = ccompiler.new_compiler()
    distutils_sysconfig.customize_compiler(compiler)
    with tempfile.TemporaryDirectory(prefix="metamesh-probe-") as tmp:
        source = Path(tmp, "metamesh_probe.c")
        source.write_text(PROBE_SOURCE)
        try:
            compiler.compile([str(source)], output_dir=tmp, include_dirs=include_dirs)
        except CCompilerError as e:
            return f"no working C compiler for Python extensions ({e})"
    return None


def extension_files(root: Path) -> set[Path]:
    """Every C extension under ``root``."""
    return {p for p in root.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))}


class BuildHotPath(build_ext):  # type: ignore[misc]  # setuptools ships no type information
    """``build_ext`` that drops stale extensions first and, in auto mode, survives a failure.

    A failed compile in auto mode removes what it built (a module's shim without the shared
    library would not import) and leaves the pure-Python modules ``build_py`` already copied.
    """

    fall_back_to_pure: ClassVar[bool] = True

    def run(self) -> None:
        build_lib = Path(self.build_lib)
        built = {
            build_lib / self.get_ext_filename(self.get_ext_fullname(ext.name))
            for ext in self.extensions
        }
        for stale in extension_files(build_lib) - built:
            stale.unlink()
        try:
            super().run()
        except (CCompilerError, BaseError) as e:
            if not self.fall_back_to_pure:
                raise
            for path in built:
                path.unlink(missing_ok=True)
            print(pure_notice(f"compiling it failed ({e})"), file=sys.stderr)


def hot_path_extensions(fall_back_to_pure: bool) -> list[Extension]:
    """The mypyc extensions of ``HOT_PATH_MODULES`` (mypyc type-checks and writes C here)."""
    from mypyc.build import mypycify  # only needed for the native build

    paths = [f"src/metamesh/{m}.py" for m in HOT_PATH_MODULES]
    try:
        return list(mypycify(paths, opt_level="3", debug_level="0"))
    # mypyc reports type errors with sys.exit and may fail in any other way: in auto mode every
    # failure of the compiler means the pure tree, which is what the module docstring promises
    except (Exception, SystemExit) as e:
        if not fall_back_to_pure:
            raise
        print(pure_notice(f"mypyc failed ({e!r})"), file=sys.stderr)
        return []


def main() -> None:
    choice = choose_build(os.environ.get("METAMESH_MYPYC"), sys.argv[1:], toolchain_problem)
    if choice.notice is not None:
        print(choice.notice, file=sys.stderr)
    BuildHotPath.fall_back_to_pure = not choice.required
    ext_modules = hot_path_extensions(not choice.required) if choice.native else []
    setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildHotPath})


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    main()
