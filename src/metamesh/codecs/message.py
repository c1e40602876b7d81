"""The protocol-neutral message every codec produces, and the errors codecs deal in.

A codec turns bytes into :class:`Message` objects and back. The proxy core only ever looks at
what is here: the message type, the protocol's own request id, a ``str -> str`` metadata map
(what routes, rate limits and authorization match on), and the raw frame, which is forwarded
byte-for-byte unless a mutation has to be applied.

``Message`` is a plain ``__slots__`` class rather than a frozen dataclass because one is built
per proxied frame: attribute assignment in ``__init__`` is the cheapest construction Python
offers. Treat it as read-only after decode. Metadata may be *lazy*: a codec can hand over a
loader that fills the map on first access (Dubbo keeps attachments behind the arguments, so it
only walks them when something actually asks for metadata).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mypy_extensions import mypyc_attr


class MessageType(enum.IntEnum):
    """What a frame is, in MetaProtocol's vocabulary."""

    REQUEST = 0
    RESPONSE = 1
    ONEWAY = 2
    STREAM_INIT = 3
    STREAM_DATA = 4
    STREAM_CLOSE_ONE_WAY = 5
    STREAM_CLOSE_TWO_WAY = 6
    HEARTBEAT = 7
    ERROR = 8


class ResponseStatus(enum.IntEnum):
    """Outcome carried by a response; ``OK`` for requests and heartbeats."""

    OK = 0
    ERROR = 1
    BUSINESS_EXCEPTION = 2


class ErrorKind(enum.Enum):
    """Why the proxy answers a request itself instead of forwarding it."""

    ROUTE_NOT_FOUND = "route_not_found"
    CLUSTER_NOT_FOUND = "cluster_not_found"
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
    OVER_LIMIT = "over_limit"
    TIMEOUT = "timeout"
    UPSTREAM_RESET = "upstream_reset"
    BAD_REQUEST = "bad_request"
    BAD_RESPONSE = "bad_response"
    UNAUTHORIZED = "unauthorized"
    FAULT_ABORT = "fault_abort"
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True, slots=True)
class LocalError:
    """A local reply's reason and human-readable message (sent to the client)."""

    kind: ErrorKind
    message: str


class CodecError(Exception):
    """The only exception a codec raises: the bytes are not a valid frame of its protocol.

    The message says what was wrong and where, so it can go straight into a log line.
    """


class FrameTooLargeError(CodecError):
    """A frame declares (or needs) more bytes than the codec's ``max_frame_size``.

    Raised as soon as the length is known, before the bytes are buffered, so the proxy can count
    oversized frames apart from malformed ones.
    """


@dataclass(frozen=True, slots=True)
class Redirect:
    """A reply that says "ask that endpoint instead" (Redis Cluster ``-MOVED``/``-ASK``): a
    codec puts one in a response's ``codec_state``, and a cluster that follows redirections
    sends the request again to ``address:port``. ``key`` names what moved (a Redis slot);
    ``once`` marks a one-off redirection (``ASK``: nothing is remembered), which must be
    preceded on the new connection by ``preamble`` (``ASKING``), whose reply is dropped."""

    key: int
    address: str
    port: int
    once: bool = False
    preamble: bytes = b""


@dataclass(frozen=True, slots=True)
class Ownership:
    """What a server said about who owns which keys (Redis ``CLUSTER SLOTS``): ``ranges`` of
    (first, last, address, port) of the owners, and the same for the nodes holding read-only
    copies (``replicas``: one entry per range and replica). A codec hands one over as the
    ``codec_state`` of a ``HEARTBEAT`` message (never forwarded); a cluster that keeps a key
    table adopts it."""

    ranges: tuple[tuple[int, int, str, int], ...]
    replicas: tuple[tuple[int, int, str, int], ...] = ()


@mypyc_attr(allow_interpreted_subclasses=True)
class ReplyPart:
    """Base of the ``codec_state`` of a request that is one part of a client request the codec
    split (Redis: a cross-slot DEL sent as one DEL per key): the core hands each part's reply
    to :meth:`metamesh.codecs.base.Codec.merge_reply`, which answers ``b""`` until the last
    part and then the one reply the client expects."""

    __slots__ = ()


#: A mutation: metadata keys to set on the outgoing frame (empty = forward unchanged).
Mutation = Mapping[str, str]

MetadataLoader = Callable[["Message"], dict[str, str]]


def metadata_get(metadata: Mapping[str, str], key: str) -> str | None:
    """``metadata.get(key)`` through the map's own ``get``.

    Use this, not ``.get`` on a ``dict``-typed value, where metadata may be lazy: the native
    build turns ``dict.get`` into a C lookup that skips a subclass's ``get`` (and with it the
    loader of, say, Dubbo attachments); a ``Mapping``-typed argument makes it a real call.
    """
    return metadata.get(key)


class Message:
    """One decoded frame.

    ``frame`` is the complete frame as received (header and body). ``request_id`` is the
    protocol's own id (Dubbo request id, Thrift seqid), or ``None`` for protocols that
    have none and must be pipelined in order. ``codec_state`` is private to the codec that
    made the message (offsets it needs for a cheap re-encode).
    """

    __slots__ = (
        "_loader",
        "_metadata",
        "body_size",
        "codec_state",
        "frame",
        "header_size",
        "request_id",
        "status",
        "type",
    )

    def __init__(
        self,
        type: MessageType,
        request_id: int | None,
        frame: bytes,
        header_size: int,
        body_size: int,
        metadata: dict[str, str] | None = None,
        status: ResponseStatus = ResponseStatus.OK,
        codec_state: Any = None,
        loader: MetadataLoader | None = None,
    ) -> None:
        self.type = type
        self.request_id = request_id
        self.frame = frame
        self.header_size = header_size
        self.body_size = body_size
        self.status = status
        self.codec_state = codec_state
        self._metadata = metadata
        self._loader = loader

    @property
    def metadata(self) -> dict[str, str]:
        """The routable ``str -> str`` attributes; loaded on first access if the codec is lazy."""
        md = self._metadata
        if md is None:
            loader = self._loader
            md = loader(self) if loader is not None else {}
            self._metadata = md
            self._loader = None
        return md

    @property
    def size(self) -> int:
        """Whole frame size in bytes (header + body)."""
        return self.header_size + self.body_size

    @property
    def is_request(self) -> bool:
        return self.type in _REQUEST_TYPES

    def __repr__(self) -> str:
        return (
            f"Message({self.type.name}, id={self.request_id}, status={self.status.name}, "
            f"size={self.size}, metadata={self.metadata!r})"
        )


_REQUEST_TYPES: Final = frozenset(
    {MessageType.REQUEST, MessageType.ONEWAY, MessageType.STREAM_INIT}
)
