"""The pipe between the proxy's first process and its workers: framed, pickled messages.

A message is a tuple (its first item names it) sent as a 4-byte big-endian length and a pickle.
Both ends are processes of the same proxy started from the same installation, so pickle is the
right tool: snapshots are frozen dataclasses, and they arrive as equal objects.

Two things stock pickle cannot do with a :class:`~metamesh.proxy.config.Snapshot`, handled by
:class:`_SnapshotPickler`'s ``reducer_override``:

* the snapshot's tables are ``MappingProxyType`` views, which do not pickle: they travel as a
  dict and are wrapped again on arrival (:func:`frozen_map`);
* in the native build the config classes are compiled by mypyc, whose frozen dataclasses cannot
  be rebuilt by pickle's default ``__setstate__`` path: every dataclass instance travels as its
  class and its field values, and is rebuilt by calling the class, which both builds support.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import pickle
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

HEADER: Final = struct.Struct(">I")
#: A snapshot of thousands of services pickles to a few MB; anything far larger is a bug.
MAX_MESSAGE: Final = 512 * 1024 * 1024


def frozen_map(items: dict[str, Any]) -> Mapping[str, Any]:
    """A read-only view of ``items`` (how a snapshot's tables are rebuilt on arrival)."""
    return MappingProxyType(items)


class _SnapshotPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, MappingProxyType):
            return frozen_map, (dict(obj),)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            values = tuple(getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init)
            return type(obj), values
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``obj`` pickled (a snapshot is pickled once and sent to every worker as bytes)."""
    out = io.BytesIO()
    _SnapshotPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


def encode(message: tuple[Any, ...]) -> bytes:
    """``message`` as one frame: length, then the pickle."""
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    _SnapshotPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    data = out.getbuffer()
    HEADER.pack_into(data, 0, len(data) - HEADER.size)
    return bytes(data)


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream (the other process is gone)."""
    try:
        head = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > MAX_MESSAGE:
            raise ValueError(f"worker message of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message = pickle.loads(body)
    if not isinstance(message, tuple) or not message:
        raise ValueError(f"worker message is not a tuple: {type(message).__name__}")
    return message
