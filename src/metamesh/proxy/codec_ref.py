"""Turning a listener's codec name into a codec factory.

A name is either a registered codec (``dubbo``, ``aeraki.meta_protocol.codec.thrift``, anything
from the ``metamesh.codecs`` entry points) or, for codecs that are not packaged, an import path
``package.module:ClassName``. Any failure becomes a :class:`LookupError` with a readable message,
which the config loader reports against the listener that named the codec.
"""

from __future__ import annotations

import importlib

from metamesh.codecs import UnknownCodecError, lookup_codec
from metamesh.codecs.base import Codec
from metamesh.codecs.registry import CodecFactory


def resolve_codec(name: str) -> CodecFactory:
    """The factory for ``name``; raises :class:`LookupError` when it cannot be found."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
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
