"""Turning a listener's codec name into a codec factory.

A name is either a registered codec (``dubbo``, ``aeraki.meta_protocol.codec.thrift``, anything
from the ``metamesh.codecs`` entry points) or, for codecs that are not packaged, an import path
``package.module:ClassName``. Any failure becomes a :class:`LookupError` with a readable message,
which the config loader reports against the listener that named the codec.

An import path is found the way ``python -m`` finds a module, whatever started the process:
on ``sys.path``, else in the current directory, else in a directory the caller names (the
config file's, or the root of the package it sits in). The installed ``metamesh`` script's
``sys.path`` starts with its own ``bin`` directory, not the current one, so without this
``metamesh proxy --config examples/proxy-static.yaml`` would work as ``python -m metamesh`` and
fail as ``metamesh``. The directory that holds the module's top-level package is appended to
``sys.path`` (after everything installed, so it shadows nothing) and stays there, so the
codec's own later imports work too. When nothing holds it, the error lists where it looked.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from metamesh.codecs import UnknownCodecError, lookup_codec
from metamesh.codecs.base import Codec
from metamesh.codecs.registry import CodecFactory


def resolve_codec(name: str, search: Sequence[str | Path] = ()) -> CodecFactory:
    """The factory for ``name``; raises :class:`LookupError` when it cannot be found.

    ``search``: directories where an import path's module may also live (after ``sys.path``
    and the current directory), e.g. the directory of the config file that names it.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(_import(module_name, search), attr)
        except (ImportError, AttributeError) as e:
            raise LookupError(f"cannot import codec {name!r}: {e}") from None
        if not (isinstance(factory, type) and issubclass(factory, Codec)):
            raise LookupError(f"{name!r} is not a metamesh Codec class")
        return factory
    try:
        return lookup_codec(name)
    except UnknownCodecError as unknown:
        raise LookupError(str(unknown)) from None
    except (ImportError, AttributeError) as broken:
        raise LookupError(
            f"codec {name!r} is registered but cannot be imported: {broken}"
        ) from None


def _import(module_name: str, search: Sequence[str | Path]) -> ModuleType:
    """``importlib.import_module``, falling back on the current directory and ``search``
    when the module's top-level package is not on ``sys.path``."""
    top = module_name.partition(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != top:  # the package is there; something inside it is missing
            raise
    places = _places(search)
    for place in places:
        if os.path.isdir(os.path.join(place, top)) or os.path.isfile(
            os.path.join(place, top + ".py")
        ):
            if place not in sys.path:
                sys.path.append(place)
            importlib.invalidate_caches()
            return importlib.import_module(module_name)
    looked = ", ".join(places) if places else "no directory"
    raise ModuleNotFoundError(
        f"no module named {top!r} on sys.path, nor in the current directory or the config's "
        f"(searched {looked}); run from the directory that holds {top!r} or set PYTHONPATH",
        name=top,
    )


def _places(search: Sequence[str | Path]) -> list[str]:
    """The current directory, then each of ``search`` and, when that is inside a package
    (holds ``__init__.py``), the first directory above it that is not: where its top-level
    package lives (pytest's rule for test files inside packages). Absolute, each once."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):  # the current directory may have been removed
        candidates.append(os.getcwd())
    for directory in search:
        place = os.path.abspath(directory)
        candidates.append(place)
        while os.path.isfile(os.path.join(place, "__init__.py")):
            place = os.path.dirname(place)
        candidates.append(place)
    places: list[str] = []
    for place in candidates:
        if os.path.isdir(place) and place not in places:
            places.append(place)
    return places
