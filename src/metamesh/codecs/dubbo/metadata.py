"""Request metadata that costs only what is looked at.

A Dubbo request's cheap fields (``interface``, ``method``, ``version``, ``dubbo_version``) are
the first four strings of the body; its attachments sit behind the arguments and need a walk
over every argument. :class:`RequestMetadata` is a real ``dict`` holding the cheap fields from
the start; the first lookup of any *other* key, or anything that needs the whole map
(iteration, ``len``, ``items``, equality, copying), walks the body once and adds the
attachments. So ``md["interface"]`` and ``md.get("method")`` stay dict-speed, while a route that
matches ``group`` or a custom attachment still sees it.

The four body fields win over attachments of the same name (a client cannot make a request
look like another service by adding an ``interface`` attachment). A malformed attachment
section surfaces as :class:`~metamesh.codecs.message.CodecError` from that first full access.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from metamesh.codecs.dubbo.body import BodyLayout, request_attachments

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_keys, dict_values

_MISSING: Final[Any] = object()


def request_metadata(head: dict[str, str], frame: bytes, head_end: int) -> RequestMetadata:
    """The metadata of the request ``frame``: ``head`` (its four head fields) now, the
    attachments on demand. The decoder builds the same thing inline (see ``DubboCodec``)."""
    metadata = RequestMetadata(head)
    metadata._frame = frame
    metadata._head_end = head_end
    metadata._layout = None
    return metadata


@mypyc_attr(native_class=False)  # else mypyc drops __slots__: a __dict__ per request
class RequestMetadata(dict[str, str]):
    """A ``dict`` of the request's cheap fields that loads the attachments on demand.

    Built by :func:`request_metadata` (or inline by the decoder): ``dict``'s C constructor
    copies the four head fields from the dict the codec keeps for the connection's last head,
    then three slot stores say where the attachments are: ``_frame`` (``None`` once they are
    loaded), ``_head_end`` (where the head strings end) and ``_layout``, the frame's
    :class:`~metamesh.codecs.dubbo.body.BodyLayout`, made on first need (:meth:`layout`) and
    shared with ``encode`` so a mutation after a lookup walks the arguments only once. The
    class has no ``__init__`` of its own: this path runs for every request.

    Not a native class in the native build: mypyc compiles a ``dict`` subclass into an
    extension type that ignores ``__slots__`` and gives every instance a ``__dict__`` for the
    three attributes, 176 more bytes per request held in flight (``benchmarks/inflight.py
    --sans-io``: 392 -> 216 bytes per metadata).
    """

    __slots__ = ("_frame", "_head_end", "_layout")
    _frame: bytes | None
    _head_end: int
    _layout: BodyLayout | None

    def layout(self) -> BodyLayout:
        """The request body's layout (offsets found so far), created on first use."""
        layout = self._layout
        if layout is None:
            layout = self._layout = BodyLayout(self._head_end)
        return layout

    def _load(self) -> None:
        frame = self._frame
        if frame is not None:
            # may raise CodecError; then nothing changes
            attachments = request_attachments(frame, self.layout()).strings()
            self._frame = None
            for key, value in attachments.items():
                dict.setdefault(self, key, value)

    @property
    def loaded(self) -> bool:
        """Whether the attachments have been walked."""
        return self._frame is None

    # -- lookups: cheap fields answer without loading --------------------------------------
    def __missing__(self, key: str) -> str:
        if self._frame is None:
            raise KeyError(key)
        self._load()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _MISSING)
        if value is _MISSING and self._frame is not None:
            self._load()
            value = dict.get(self, key, _MISSING)
        return default if value is _MISSING else value

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        if self._frame is None:
            return False
        self._load()
        return dict.__contains__(self, key)

    # -- whole-map views: load first ---------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def keys(self) -> dict_keys[str, str]:
        self._load()
        return dict.keys(self)

    def values(self) -> dict_values[str, str]:
        self._load()
        return dict.values(self)

    def items(self) -> dict_items[str, str]:
        self._load()
        return dict.items(self)

    def __eq__(self, other: object) -> bool:
        self._load()
        if isinstance(other, RequestMetadata):
            other._load()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.copy(),))

    def copy(self) -> dict[str, str]:
        self._load()
        return dict(dict.items(self))

    def __or__(self, other: Any) -> Any:
        return self.copy() | other

    def __ror__(self, other: Any) -> Any:
        return other | self.copy()

    def __reversed__(self) -> Iterator[str]:
        self._load()
        return dict.__reversed__(self)

    # -- mutators: load first so attachments cannot reappear later -----------------------------
    def __setitem__(self, key: str, value: str) -> None:
        self._load()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._load()
        dict.__delitem__(self, key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._load()
        return dict.setdefault(self, key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self._load()
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, str]:
        self._load()
        return dict.popitem(self)

    def update(self, *args: Any, **kwargs: str) -> None:
        self._load()
        dict.update(self, *args, **kwargs)

    def clear(self) -> None:
        self._frame = None
        dict.clear(self)
