"""Which build of metamesh is running: pure Python, or the native build of the hot path.

The native build (``setup.py``, ``scripts/build_mypyc.sh``) compiles the codecs' framing and the
proxy core with mypyc; the rest stays Python. Both builds import under the same module names, so
the only way to tell them apart is where each module was loaded from: a compiled module's
``__file__`` is an extension (``.so``). ``metamesh --version``, the proxy's startup log and
``/server_info`` on the admin port report it, so a benchmark or a bug report always says which
build produced it.

``pip install .`` compiles the hot path wherever a C compiler and the Python headers are, and
says so only in pip's verbose output when it cannot; so a proxy running the pure build also says
once, at startup, that its hot path runs interpreted and how to get the native build
(:func:`pure_build_notice`, :func:`log_pure_build_notice`).
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Final

import metamesh

#: A module on the per-request path of every build; native builds always compile it.
_PROBE = "metamesh.proxy.connection"

#: What a proxy on the pure build says once at startup.
PURE_BUILD_NOTICE: Final = (
    "the hot path is not compiled (pure Python build: about 2.5 times the proxy core's CPU per "
    "request of the native build); to compile it, reinstall metamesh where a C compiler and the "
    "Python headers are (e.g. apt-get install build-essential python3-dev, then pip install .; "
    "pip install -v . says why a build stayed pure)"
)

_notice_given = False  # once per process, however many proxies it starts


def compiled_modules() -> list[str]:
    """The ``metamesh`` modules this install ships as compiled extensions, sorted.

    Found by their files, so the answer does not depend on what has been imported yet; the
    import system prefers an extension over the ``.py`` beside it, so these are the modules
    that run compiled.
    """
    names = set()
    for root in map(Path, metamesh.__path__):
        for path in root.rglob("*.so"):
            for suffix in EXTENSION_SUFFIXES:
                if path.name.endswith(suffix):
                    rel = path.relative_to(root).as_posix()[: -len(suffix)]
                    names.add("metamesh." + rel.replace("/", "."))
                    break  # the suffixes overlap: ".cpython-311-...so" also ends in ".so"
    return sorted(names)


def is_native() -> bool:
    """Whether the proxy core runs compiled."""
    spec = importlib.util.find_spec(_PROBE)
    return spec is not None and (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES))


def describe() -> str:
    """``"native (mypyc, N modules compiled)"`` or ``"pure Python"``."""
    if not is_native():
        return "pure Python"
    return f"native (mypyc, {len(compiled_modules())} modules compiled)"


def pure_build_notice() -> str | None:
    """:data:`PURE_BUILD_NOTICE` the first time a pure build asks; ``None`` after that or native."""
    global _notice_given
    if _notice_given or is_native():
        return None
    _notice_given = True
    return PURE_BUILD_NOTICE


def log_pure_build_notice(log: logging.Logger) -> None:
    """Log :func:`pure_build_notice` as a warning on ``log`` when there is one."""
    notice = pure_build_notice()
    if notice is not None:
        log.warning("%s", notice)
