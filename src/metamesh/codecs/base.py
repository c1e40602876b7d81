"""The codec contract: what a protocol must implement to be proxied by metamesh.

A codec is sans-IO: bytes in, :class:`~metamesh.codecs.message.Message` out, and back. It never
touches sockets, asyncio, the clock or logging, so it can be tested from byte strings, fuzzed and
benchmarked alone. One instance serves one direction of one connection, which lets it keep
per-connection state (Thrift learns the transport and protocol from the first frame).

The four operations mirror Aeraki's MetaProtocol codec (decode / encode / onError, plus the
heartbeat reply that Aeraki folds into encode), plus a cheap request-id rewrite so the proxy can
multiplex many downstream connections onto one upstream connection.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping
from typing import ClassVar, Final

from mypy_extensions import mypyc_attr

from metamesh.codecs.message import LocalError, Message, Mutation, Ownership, ReplyPart

DEFAULT_MAX_FRAME_SIZE: Final = 8 * 1024 * 1024
#: Kinds of :meth:`Codec.reply_run` entries (the low two bits of each).
REPLY_OK: Final = 0
REPLY_ERROR: Final = 1
REPLY_SKIP: Final = 2


@mypyc_attr(allow_interpreted_subclasses=True)
class Codec(abc.ABC):
    """Base class of every codec. Subclasses set :attr:`name` and implement the abstract methods.

    Counters a codec keeps (plain ints, read by the proxy's stats) live on the instance:
    ``dropped_mutations`` counts mutations that the framing could not carry.
    """

    #: Registry name, e.g. ``"dubbo"``.
    name: ClassVar[str] = ""
    #: Width of the protocol's request id in bits; ``None`` when the protocol has no ids and
    #: responses come back in request order (the proxy then pipelines instead of multiplexing).
    request_id_bits: ClassVar[int | None] = None
    #: For protocols without ids: whether clients may share upstream connections, each one
    #: carrying requests in send order and matching replies by that order (Redis: requests
    #: are independent of the connection once the codec keeps per-client state itself).
    #: ``False``: each client gets upstream connections of its own.
    shares_upstream: ClassVar[bool] = False
    #: For protocols without ids: whether :meth:`reply_run` measures replies, so the proxy
    #: may forward a burst of pipelined requests as one run (:mod:`metamesh.proxy.runs`).
    runs: ClassVar[bool] = False

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self.dropped_mutations = 0
        #: Which variant of the protocol's wire format this connection speaks, once known.
        #: ``None`` for protocols with one wire format, or before the first frame. Protocols
        #: that detect a variant per connection (Thrift: transport x protocol) set a hashable
        #: naming it, so the proxy never multiplexes clients that speak different variants onto
        #: one upstream connection (the server would see mixed framings). A plain attribute,
        #: not a property: the proxy reads it once per request.
        self.wire_variant: Hashable | None = None
        #: Whether this connection's requests can carry headers a client adds (Dubbo
        #: attachments, THeader info headers). False (Thrift framed or unframed binary and
        #: compact): the tracer does not scan its frames for trace header names at all.
        self.carries_headers = True
        #: :attr:`runs`, read once here: the client side asks it for every read, and in the
        #: native build an instance attribute is a struct field, a class attribute a lookup
        #: by name (~35 ns, per request for an unpipelined client).
        self.takes_runs = self.runs

    @abc.abstractmethod
    def decode(self, buffer: bytearray) -> Message | None:
        """Take one complete frame off the front of ``buffer``.

        Returns ``None`` when the buffer holds only part of a frame; then nothing is consumed.
        Several pipelined frames come out one per call. Invalid bytes raise
        :class:`~metamesh.codecs.message.CodecError` and nothing else.
        """

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        """Optional fast path: decode the frame at ``data[pos:]`` when all of it is there,
        straight from the ``bytes`` just read from a socket (nothing buffered before them).

        Must give what :meth:`decode` would give for a buffer holding ``data[pos:]`` (the
        message, whose ``frame`` is exactly the frame's bytes, or
        :class:`~metamesh.codecs.message.CodecError`), but may return ``None`` for anything it
        does not handle cheaply: a part of a frame, a variant it leaves to ``decode``, or bytes
        ``decode`` would refuse. The proxy takes frames from ``pos`` = 0 on, each message's
        ``len(frame)`` further, and buffers whatever is left at the first ``None`` for
        ``decode``. The default handles nothing.

        Worth implementing for protocols whose frames are cheap to delimit: it saves the
        buffer's append, its copies out and its deletes from the front (the core's CPU per
        request falls by about a sixth for Dubbo and Thrift in the native build). A read that
        is exactly one frame (an unpipelined client) costs no copy at all: the frame is
        ``data`` itself.
        """
        return None

    @abc.abstractmethod
    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        """The frame to send for ``message`` with ``mutation`` applied.

        With no mutation (``None`` or empty) the result is ``message.frame``, byte for byte.
        """

    @abc.abstractmethod
    def error_reply(self, request: Message, error: LocalError) -> bytes:
        """A protocol-native error response to ``request``, carrying its request id."""

    def heartbeat_reply(self, message: Message) -> bytes | None:
        """The reply to a heartbeat request, or ``None`` if the protocol has none to send."""
        return None

    def expect_variant(self, variant: Hashable | None) -> None:
        """Hold this connection to ``variant`` (a :attr:`wire_variant`) before its first frame.

        The proxy calls it on a new upstream connection with the variant of the clients it is
        opened for: the server must answer in the framing it was asked in, and a reply in
        another one is then a decoding error (a protocol-native error to the client) instead of
        a frame the client cannot read. Protocols with one wire format ignore it.
        """
        return None

    def upstream_preamble(self, options: Mapping[str, str]) -> bytes | None:
        """Called once on a new upstream connection's codec (after :meth:`expect_variant`)
        with its cluster's protocol options; returns bytes to send before any request (Redis:
        ``AUTH``, ``HELLO 3``, ``SELECT``), whose replies the codec then consumes itself, or
        ``None``. Tells a codec whose direction is not in its frames that it is upstream."""
        return None

    def ownership_query(self) -> bytes:
        """A request asking an upstream which node owns which keys (Redis Cluster:
        ``CLUSTER SLOTS``), sent by the proxy now and then on a connection it already uses;
        ``b""``: the protocol has none. Its reply goes to :meth:`ownership`."""
        return b""

    def ownership(self, reply: Message) -> Ownership | None:
        """What the reply to :meth:`ownership_query` says, or None (an error reply)."""
        return None

    def merge_reply(self, part: ReplyPart, reply: bytes) -> bytes:
        """The bytes to send for ``reply``, the answer to a request whose ``codec_state`` is
        ``part`` (a :class:`~metamesh.codecs.message.ReplyPart`): ``b""`` until every part of
        its client request is answered, then the merged reply. Replies reach the client in
        request order, so the merged reply takes the place of the whole group."""
        return reply

    def reply_run(self, buf: bytes | bytearray, pos: int, count: int, ends: list[int]) -> int:
        """Upstream side, for :attr:`runs` codecs: measure up to ``count`` whole replies at
        ``buf[pos:]`` without building messages. One entry per value taken is appended to
        ``ends``: ``end << 2 | kind``, kind :data:`REPLY_OK`, :data:`REPLY_ERROR` (an error
        reply) or :data:`REPLY_SKIP` (a value that answers no request, which the codec
        consumed as :meth:`decode` would: a setup reply, a push). Returns how many replies
        (not skipped values) were taken; stops at an incomplete value. Raises
        :class:`~metamesh.codecs.message.CodecError` like :meth:`decode`."""
        raise NotImplementedError(f"codec {self.name!r} does not measure reply runs")

    def goaway_notice(self) -> bytes | None:
        """A frame telling a client this end is going away (sent when the proxy drains), so it
        stops sending new requests on the connection; ``None`` if the protocol has none."""
        return None

    def rewrite_request_id(self, message: Message, request_id: int) -> bytes:
        """``message.frame`` with its request id replaced by ``request_id``.

        Only meaningful when :attr:`request_id_bits` is set; the proxy uses it to multiplex.
        """
        raise NotImplementedError(f"codec {self.name!r} has no request ids to rewrite")
