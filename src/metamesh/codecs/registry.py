"""Codecs by name: the extension point through which metamesh learns a protocol.

Registering only stores a factory under one or more names; nothing is imported or built until a
listener asks for a codec. Built-in codecs are recorded as ``module:attribute`` strings and
resolved on first use, and third-party packages can advertise codecs through the
``metamesh.codecs`` entry-point group, so ``pip install`` of a codec package is enough.

Aeraki's names (``aeraki.meta_protocol.codec.dubbo``) resolve to the same codecs as the short
ones (``dubbo``), so ApplicationProtocol resources written for Aeraki work unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from metamesh.codecs.base import Codec

CodecFactory = Callable[..., Codec]

AERAKI_PREFIX = "aeraki.meta_protocol.codec."
ENTRY_POINT_GROUP = "metamesh.codecs"

_BUILTIN: dict[str, str] = {
    "dubbo": "metamesh.codecs.dubbo:DubboCodec",
    "thrift": "metamesh.codecs.thrift:ThriftCodec",
    "redis": "metamesh.codecs.redis:RedisCodec",
    "kafka": "metamesh.codecs.kafka:kafka_codec",
}

_factories: dict[str, CodecFactory | str] = dict(_BUILTIN)
_entry_points_loaded = False


class UnknownCodecError(LookupError):
    """No codec is registered under the requested name."""


def canonical_name(name: str) -> str:
    """Map Aeraki's ``aeraki.meta_protocol.codec.X`` spelling to ``X``."""
    return name[len(AERAKI_PREFIX) :] if name.startswith(AERAKI_PREFIX) else name


def register_codec(name: str, factory: CodecFactory, *, aliases: tuple[str, ...] = ()) -> None:
    """Make ``factory`` available as ``name`` (and Aeraki's long form, and any ``aliases``).

    A later registration under the same name replaces the earlier one, which is how a user
    overrides a built-in codec.
    """
    for key in (name, *aliases):
        _factories[canonical_name(key)] = factory


def lookup_codec(name: str) -> CodecFactory:
    """The factory registered under ``name``; raises :class:`UnknownCodecError`."""
    key = canonical_name(name)
    entry = _factories.get(key)
    if entry is None:
        _load_entry_points()
        entry = _factories.get(key)
    if entry is None:
        known = ", ".join(available_codecs())
        raise UnknownCodecError(f"no codec named {name!r} (known: {known})")
    if isinstance(entry, str):
        entry = _import(entry)
        _factories[key] = entry
    return entry


def create_codec(name: str, **options: Any) -> Codec:
    """A new codec instance for one connection direction."""
    return lookup_codec(name)(**options)


def available_codecs() -> list[str]:
    """Every registered short name, sorted."""
    _load_entry_points()
    return sorted(_factories)


def _import(target: str) -> CodecFactory:
    module_name, _, attr = target.partition(":")
    factory: CodecFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _factories.setdefault(canonical_name(ep.name), ep.value)
