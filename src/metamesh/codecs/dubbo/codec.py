"""The Dubbo 2 codec: 16-byte header + Hessian2 body, framed and routed without decoding args.

``decode`` parses the header with one ``struct.unpack_from`` (bad magic, foreign serialization
and oversized bodies are refused right there, before the body is buffered), waits for the whole
frame, then reads only what routing needs. ``decode_at`` takes whole frames straight from the
``bytes`` read from the socket, with the same header checks at an offset and no buffer in
between: the frame is sliced out, or, for a read that is exactly one frame (the usual case for
unpipelined clients), is that very object. Both then read the same:

* request: the first four strings of the body (dubbo version, service path, service version,
  method) eagerly, parsed once per distinct head (the codec keeps the last head's bytes and
  metadata; a request whose bytes repeat them copies that dict); the attachments lazily,
  through :class:`RequestMetadata` (see :mod:`.metadata`), which also keeps the request's
  :class:`~.body.BodyLayout` for ``encode``;
* response: the status byte, and for status 20 the result kind (business exception or not);
  the codec state is the bare kind until a layout is needed (the usual one-byte kind puts the
  value at offset 17); the response attachments (kinds 3-5) through ``Message``'s ``loader``;
* heartbeat / event frames: nothing.

Per request the proxy thus allocates the frame, the ``Message`` and the metadata dict, and per
response the frame and the ``Message``: nothing else (no closures, no layout objects), which
also keeps the collector quiet.

``encode`` with a mutation rewrites only the attachments map (see :mod:`.body`); every other
byte, arguments and value included, is copied from the original frame by offset.

Metadata keys: ``interface`` (service path), ``method``, ``version`` (service version from the
body), ``dubbo_version``, plus every string -> string attachment (``group``, ``application``,
``path``, ``timeout``, ...). Responses expose their string attachments.
"""

from __future__ import annotations

from typing import ClassVar, Final

from metamesh.codecs.base import DEFAULT_MAX_FRAME_SIZE, Codec
from metamesh.codecs.dubbo.body import (
    RESULT_EXCEPTION,
    RESULT_WITH_ATTACHMENTS,
    BodyLayout,
    encode_int,
    encode_string,
    merge_into,
    read_request_head,
    read_result_kind,
    request_attachments,
    response_attachments,
)
from metamesh.codecs.dubbo.header import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWO_WAY,
    HEADER_SIZE,
    HESSIAN2_ID,
    KNOWN_STATUSES,
    MAGIC,
    MAGIC_BYTES,
    SERIALIZATION_MASK,
    DubboStatus,
    pack_header,
    parse_header,
    unpack_header,
    with_body_length,
    with_request_id,
)
from metamesh.codecs.dubbo.metadata import RequestMetadata
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
)

#: Status of a local error reply, per reason. Every Dubbo client turns a non-20 status into an
#: error carrying the body string; the status tells Java clients how to classify it.
ERROR_STATUS: Final[dict[ErrorKind, DubboStatus]] = {
    ErrorKind.ROUTE_NOT_FOUND: DubboStatus.SERVICE_NOT_FOUND,
    ErrorKind.CLUSTER_NOT_FOUND: DubboStatus.SERVICE_NOT_FOUND,
    ErrorKind.TIMEOUT: DubboStatus.SERVER_TIMEOUT,
    ErrorKind.OVER_LIMIT: DubboStatus.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    ErrorKind.BAD_REQUEST: DubboStatus.BAD_REQUEST,
    ErrorKind.BAD_RESPONSE: DubboStatus.BAD_RESPONSE,
}

_HEARTBEAT_BODY: Final = b"N"  # Hessian null
_READONLY_BODY: Final = b"\x01R"  # Hessian string "R": Dubbo's READONLY_EVENT
_OK: Final = int(DubboStatus.OK)
_HEARTBEAT: Final = MessageType.HEARTBEAT
_REQUEST: Final = MessageType.REQUEST
_ONEWAY: Final = MessageType.ONEWAY
_RESPONSE: Final = MessageType.RESPONSE
_ERROR_STATUS: Final = ResponseStatus.ERROR
_RequestMetadata: Final = RequestMetadata
_unpack_header: Final = unpack_header
#: Result kinds 0-5: 0 and 3 carry an exception the service declared or threw.
_OUTCOME_BY_KIND: Final = tuple(
    ResponseStatus.BUSINESS_EXCEPTION if kind % 3 == RESULT_EXCEPTION else ResponseStatus.OK
    for kind in range(6)
)


class DubboCodec(Codec):
    """Dubbo 2 over Hessian2 (serialization id 2)."""

    name: ClassVar[str] = "dubbo"
    request_id_bits: ClassVar[int | None] = 64

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)
        #: The last request head seen on this connection: its bytes (from offset 16), the
        #: metadata dict of its four strings and where it ends. See :meth:`_parse_head`.
        # Before the first head: two bytes against a slice of at most one, so nothing matches
        # and the first request parses. The end is past HEADER_SIZE because the native build's
        # bytes slice does not clamp an end below its start (mypyc's CPyBytes_GetSlice asks
        # for a negative size).
        self._head_bytes = b"\xff\xff"
        self._head_metadata: dict[str, str] = {}
        self._head_end = HEADER_SIZE + 1

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, buffer: bytearray) -> Message | None:
        available = len(buffer)
        if available < HEADER_SIZE:
            if available and buffer[:2] != MAGIC_BYTES[:available]:
                raise CodecError(f"dubbo: bad magic {bytes(buffer[:2]).hex()} (expected dabb)")
            return None
        # typed so the native build computes on machine ints, not boxed objects
        header: tuple[int, int, int, int, int] = _unpack_header(buffer, 0)
        magic, flags, status, request_id, body_length = header
        if not self._header_ok(magic, flags, status, body_length):
            parse_header(buffer, self.max_frame_size)  # raises the precise error
        size = HEADER_SIZE + body_length
        if available < size:
            return None
        # one copy when the buffer holds exactly this frame, two otherwise
        if available == size:
            frame = bytes(buffer)
            buffer.clear()
        else:
            frame = bytes(buffer[:size])
            del buffer[:size]
        return self._message(frame, flags, status, request_id, body_length)

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        available = len(data) - pos
        if available < HEADER_SIZE:
            return None
        # typed so the native build computes on machine ints, not boxed objects
        header: tuple[int, int, int, int, int] = _unpack_header(data, pos)
        magic, flags, status, request_id, body_length = header
        size = HEADER_SIZE + body_length
        if size > available or not self._header_ok(magic, flags, status, body_length):
            return None  # a part of a frame, or decode's error to raise
        frame = data if size == available and not pos else data[pos : pos + size]
        return self._message(frame, flags, status, request_id, body_length)

    def _header_ok(self, magic: int, flags: int, status: int, body_length: int) -> bool:
        """Whether a header is one this codec takes (``parse_header`` says what is wrong)."""
        return (
            magic == MAGIC
            and flags & SERIALIZATION_MASK == HESSIAN2_ID
            and 0 <= body_length <= self.max_frame_size - HEADER_SIZE
            and (flags & FLAG_REQUEST != 0 or status in KNOWN_STATUSES)
        )

    def _message(
        self, frame: bytes, flags: int, status: int, request_id: int, body_length: int
    ) -> Message:
        """The message of a whole, valid ``frame`` whose header says the rest."""
        if flags & FLAG_EVENT:
            return Message(_HEARTBEAT, request_id, frame, HEADER_SIZE, body_length)
        if flags & FLAG_REQUEST:
            # The head memo: a connection carries calls from one consumer, mostly to the same
            # method of the same service, so the head bytes repeat. The head is self-delimiting
            # (four length-prefixed strings), so a frame whose bytes from offset 16 start with
            # the previous head's bytes parses to the same four strings and the same end: one
            # comparison replaces the parse. A slice and ``==`` rather than
            # ``bytes.startswith``, which the native build calls by name with its arguments
            # parsed from a tuple (5% of the core's time per request, ``core_bench``).
            head_end = self._head_end
            if frame[HEADER_SIZE:head_end] == self._head_bytes:
                metadata = _RequestMetadata(self._head_metadata)
                metadata._head_end = head_end
            else:
                metadata = _RequestMetadata(self._parse_head(frame))
                metadata._head_end = self._head_end
            metadata._frame = frame
            metadata._layout = None
            return Message(
                _REQUEST if flags & FLAG_TWO_WAY else _ONEWAY,
                request_id,
                frame,
                HEADER_SIZE,
                body_length,
                metadata,
            )
        if status == _OK:
            # The result kind: one byte (0x90-0x95, the compact int every client writes) read
            # inline; the codec state is then the kind alone (the value starts at offset 17).
            kind = frame[HEADER_SIZE] - 0x90 if body_length else -1
            if 0 <= kind <= 5:
                state: int | BodyLayout = kind
            else:
                state = _read_result_kind(frame)
                kind = state.kind
            return Message(
                _RESPONSE,
                request_id,
                frame,
                HEADER_SIZE,
                body_length,
                None,  # no attachments before kind 3: empty metadata on access
                _OUTCOME_BY_KIND[kind],
                state,
                _response_metadata if kind >= RESULT_WITH_ATTACHMENTS else None,
            )
        return Message(_RESPONSE, request_id, frame, HEADER_SIZE, body_length, None, _ERROR_STATUS)

    def _parse_head(self, frame: bytes) -> dict[str, str]:
        """Parse a request head that is not the memoised one and remember it instead."""
        dubbo_version, interface, version, method, head_end = read_request_head(frame)
        head = {
            "interface": interface,
            "method": method,
            "version": version,
            "dubbo_version": dubbo_version,
        }
        self._head_bytes = frame[HEADER_SIZE:head_end]
        self._head_metadata = head
        self._head_end = head_end
        return head

    # -- encode ---------------------------------------------------------------------------------
    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        layout = _layout(message)
        if layout is None:
            self.dropped_mutations += 1  # heartbeats and error responses carry no attachments
            return message.frame
        frame = message.frame
        # the whole frame joined once: header (its body length patched), the body up to the
        # attachments, the merged map, the rest
        parts = [b""]  # the header's place
        if layout.kind < 0:
            amap = request_attachments(frame, layout)
            parts.append(frame[HEADER_SIZE : amap.start])
        else:
            amap = response_attachments(frame, layout)
            kind = layout.kind
            if kind >= RESULT_WITH_ATTACHMENTS:
                parts.append(frame[HEADER_SIZE : amap.start])
            else:  # upgrade 0/1/2 to 3/4/5 so the body can carry attachments
                parts.append(encode_int(kind + RESULT_WITH_ATTACHMENTS))
                parts.append(frame[layout.kind_end : amap.start])
        merge_into(parts, frame, amap, mutation)
        parts.append(frame[amap.end :])
        body_length = 0
        for part in parts:
            body_length += len(part)
        parts[0] = with_body_length(frame, body_length)
        return b"".join(parts)

    # -- local replies --------------------------------------------------------------------------
    def error_reply(self, request: Message, error: LocalError) -> bytes:
        status = ERROR_STATUS.get(error.kind, DubboStatus.SERVER_ERROR)
        body = encode_string(error.message)
        return pack_header(HESSIAN2_ID, status, request.request_id or 0, len(body)) + body

    def heartbeat_reply(self, message: Message) -> bytes | None:
        if message.type is not MessageType.HEARTBEAT:
            return None
        frame = message.frame
        flags = frame[2]
        if not flags & FLAG_REQUEST:
            return None
        # Java and Node clients mark heartbeats two-way; dubbo-py does not, but sends a null
        # body. Other one-way events (the provider's "R" read-only notice) get no reply.
        if not flags & FLAG_TWO_WAY and frame[HEADER_SIZE:] not in (b"", _HEARTBEAT_BODY):
            return None
        return (
            pack_header(HESSIAN2_ID | FLAG_EVENT, _OK, message.request_id or 0, 1) + _HEARTBEAT_BODY
        )

    def goaway_notice(self) -> bytes | None:
        # Dubbo's read-only event, as a provider sends it on shutdown: a one-way event request
        # with the Hessian2 string "R"; consumers mark the channel read-only and send no more
        # requests on it (they answer nothing, and dubbo-py skips it as a one-way event).
        return pack_header(HESSIAN2_ID | FLAG_REQUEST | FLAG_EVENT, 0, 0, 2) + _READONLY_BODY

    def rewrite_request_id(self, message: Message, request_id: int) -> bytes:
        return with_request_id(message.frame, request_id)


def _layout(message: Message) -> BodyLayout | None:
    """The body layout of a request or OK response decoded by this codec, else ``None``.

    A request's lives in its :class:`RequestMetadata` (shared with the attachment lookup); an
    OK response's codec state is its result kind alone until a layout is needed, then the
    layout (kept, so the value is skipped only once).
    """
    mtype = message.type
    if mtype is _REQUEST or mtype is _ONEWAY:
        metadata = message.metadata
        return metadata.layout() if isinstance(metadata, RequestMetadata) else None
    state = message.codec_state
    if isinstance(state, int) and mtype is _RESPONSE:
        state = message.codec_state = BodyLayout(-1, state, HEADER_SIZE + 1)
    return state if isinstance(state, BodyLayout) else None


def _read_result_kind(frame: bytes) -> BodyLayout:
    """The layout of an OK response whose result kind is not the one-byte int."""
    kind, kind_end = read_result_kind(frame)
    return BodyLayout(-1, kind, kind_end)


def _response_metadata(message: Message) -> dict[str, str]:
    layout = _layout(message)
    assert layout is not None  # only OK responses of kinds 3-5 have this loader
    return response_attachments(message.frame, layout).strings()
