"""The Python value model for Hessian 2.0 and the one exception the codec raises.

Hessian carries Java types that plain Python values cannot tell apart (``int`` vs ``long``,
``ArrayList`` vs ``String[]``, ``HashMap`` vs ``TreeMap``, a POJO vs a map). The classes here keep
that information so a decoded value re-encodes to what Java wrote:

- :class:`Long` is an ``int`` that encodes as a Java ``long``;
- :class:`TypedList` / :class:`TypedMap` are a ``list`` / ``dict`` with the Hessian type name;
- :class:`JavaObject` is an instance of a Java class: its name and its fields in wire order.

The containers are mutable on purpose: the decoder registers a container for back-references
*before* it reads the contents, so a value that contains itself decodes to a cyclic structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metamesh.codecs.message import CodecError


class HessianError(CodecError):
    """Malformed, truncated or unsupported Hessian 2.0 data (the message names the offset)."""


class Long(int):
    """A Java ``long``: an ``int`` that the encoder writes with a long form, never an int form."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Long({int.__repr__(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


class TypedList(list[Any]):
    """A Hessian list with a type: a Java array (``[int``, ``[string``) or a non-ArrayList list.

    Equal only to another :class:`TypedList` with the same ``type`` and the same items.
    """

    __slots__ = ("type",)

    def __init__(self, type: str, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self.type = type

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypedList):
            return self.type == other.type and list.__eq__(self, other)
        return False if isinstance(other, list) else NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None

    def __repr__(self) -> str:
        return f"TypedList({self.type!r}, {list.__repr__(self)})"


class TypedMap(dict[Any, Any]):
    """A Hessian map with a type (``java.util.TreeMap``, ...). Equal only to the same type."""

    __slots__ = ("type",)

    def __init__(self, type: str, entries: Mapping[Any, Any] | Iterable[Any] = ()) -> None:
        super().__init__(entries)
        self.type = type

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypedMap):
            return self.type == other.type and dict.__eq__(self, other)
        return False if isinstance(other, dict) else NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None

    def __repr__(self) -> str:
        return f"TypedMap({self.type!r}, {dict.__repr__(self)})"


@dataclass(slots=True, eq=True)
class JavaObject:
    """An instance of a Java class: ``class_name`` and ``fields`` (name -> value, wire order).

    A Java enum constant is a ``JavaObject`` with the single field ``name``.
    """

    class_name: str
    fields: dict[str, Any] = field(default_factory=dict)
