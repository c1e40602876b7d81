"""Which build of metamesh is running: pure Python, or the native build of the hot path.

The native build (``setup.py``, ``scripts/build_mypyc.sh``) compiles the codecs' framing and the
proxy core with mypyc; the rest stays Python. Both builds import under the same module names, so
the only way to tell them apart is where each module was loaded from: a compiled module's
``__file__`` is an extension (``.so``). ``metamesh --version``, the proxy's startup log and
``/server_info`` on the admin port report it, so a benchmark or a bug report always says which
build produced it.
"""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import metamesh

#: A module on the per-request path of every build; native builds always compile it.
_PROBE = "metamesh.proxy.connection"


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
