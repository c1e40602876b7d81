"""The Dubbo 2 codec: 16-byte header + Hessian2 body, framed and routed without decoding args.

``decode`` parses the header with one ``struct.unpack_from`` (bad magic, foreign serialization
and oversized bodies are refused right there, before the body is buffered), waits for the whole
frame, then reads only what routing needs:

* request: the first four strings of the body (dubbo version, service path, service version,
  method) eagerly; the attachments lazily, through :class:`RequestMetadata` (see
  :mod:`.metadata`);
* response: the status byte, and for status 20 the result kind (business exception or not);
  the response attachments (kinds 3-5) through ``Message``'s ``loader``;
* heartbeat / event frames: nothing.

``encode`` with a mutation rewrites only the attachments map (see :mod:`.body`); every other
byte, arguments and value included, is copied from the original frame by offset.

Metadata keys: ``interface`` (service path), ``method``, ``version`` (service version from the
body), ``dubbo_version``, plus every string -> string attachment (``group``, ``application``,
``path``, ``timeout``, ...). Responses expose their string attachments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from metamesh.codecs.base import DEFAULT_MAX_FRAME_SIZE, Codec
from metamesh.codecs.dubbo.body import (
    RESULT_EXCEPTION,
    RESULT_WITH_ATTACHMENTS,
    BodyLayout,
    encode_int,
    encode_string,
    merged_map,
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
from metamesh.codecs.dubbo.metadata import request_metadata
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
ERROR_STATUS: dict[ErrorKind, DubboStatus] = {
    ErrorKind.ROUTE_NOT_FOUND: DubboStatus.SERVICE_NOT_FOUND,
    ErrorKind.CLUSTER_NOT_FOUND: DubboStatus.SERVICE_NOT_FOUND,
    ErrorKind.TIMEOUT: DubboStatus.SERVER_TIMEOUT,
    ErrorKind.OVER_LIMIT: DubboStatus.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    ErrorKind.BAD_REQUEST: DubboStatus.BAD_REQUEST,
    ErrorKind.BAD_RESPONSE: DubboStatus.BAD_RESPONSE,
}

_HEARTBEAT_BODY = b"N"  # Hessian null
_OK = int(DubboStatus.OK)
_HEARTBEAT = MessageType.HEARTBEAT
_REQUEST = MessageType.REQUEST
_ONEWAY = MessageType.ONEWAY
_RESPONSE = MessageType.RESPONSE
_OK_STATUS = ResponseStatus.OK
#: Result kinds 0-5: 0 and 3 carry an exception the service declared or threw.
_OUTCOME_BY_KIND = tuple(
    ResponseStatus.BUSINESS_EXCEPTION if kind % 3 == RESULT_EXCEPTION else ResponseStatus.OK
    for kind in range(6)
)


class DubboCodec(Codec):
    """Dubbo 2 over Hessian2 (serialization id 2)."""

    name: ClassVar[str] = "dubbo"
    request_id_bits: ClassVar[int | None] = 64

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)
        #: The last request head seen on this connection: its bytes (from offset 16) and what
        #: they parse to. See :meth:`_request_head`.
        self._head_bytes = b"\xff"  # never a valid head start: the first request parses
        self._head: tuple[str, str, str, str, int] = ("", "", "", "", 0)

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, buffer: bytearray) -> Message | None:
        available = len(buffer)
        if available < HEADER_SIZE:
            if available and buffer[:2] != MAGIC_BYTES[:available]:
                raise CodecError(f"dubbo: bad magic {bytes(buffer[:2]).hex()} (expected dabb)")
            return None
        magic, flags, status, request_id, body_length = unpack_header(buffer, 0)
        size = HEADER_SIZE + body_length
        if (
            magic != MAGIC
            or flags & SERIALIZATION_MASK != HESSIAN2_ID
            or body_length < 0
            or size > self.max_frame_size
            or (not flags & FLAG_REQUEST and status not in KNOWN_STATUSES)
        ):
            parse_header(buffer, self.max_frame_size)  # raises the precise error
        if available < size:
            return None
        # one copy when the buffer holds exactly this frame (the usual case), two otherwise
        frame = bytes(buffer) if available == size else bytes(buffer[:size])
        if flags & FLAG_EVENT:
            message = Message(_HEARTBEAT, request_id, frame, HEADER_SIZE, body_length)
        elif flags & FLAG_REQUEST:
            message = _decode_request(flags, request_id, frame, body_length, self._request_head)
        else:
            message = _decode_response(status, request_id, frame, body_length)
        if available == size:
            buffer.clear()
        else:
            del buffer[:size]
        return message

    def _request_head(self, frame: bytes) -> tuple[str, str, str, str, int]:
        """:func:`.body.read_request_head`, memoised for the last head seen.

        A connection carries calls from one consumer, mostly to the same method of the same
        service, so the head bytes repeat. The head is self-delimiting (four length-prefixed
        strings), so a frame whose bytes from offset 16 start with the previous head's bytes
        parses to the same four strings and the same end: one ``bytes.startswith`` replaces
        the parse.
        """
        if frame.startswith(self._head_bytes, HEADER_SIZE):
            return self._head
        head = read_request_head(frame)
        self._head_bytes = frame[HEADER_SIZE : head[4]]
        self._head = head
        return head

    # -- encode ---------------------------------------------------------------------------------
    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        layout = message.codec_state
        if not isinstance(layout, BodyLayout):
            self.dropped_mutations += 1  # heartbeats and error responses carry no attachments
            return message.frame
        frame = message.frame
        if layout.kind < 0:
            amap = request_attachments(frame, layout)
            body = b"".join(
                (
                    frame[HEADER_SIZE : amap.start],
                    merged_map(frame, amap, mutation),
                    frame[amap.end :],
                )
            )
        else:
            amap = response_attachments(frame, layout)
            kind = layout.kind
            if kind >= RESULT_WITH_ATTACHMENTS:
                head = frame[HEADER_SIZE : amap.start]
            else:  # upgrade 0/1/2 to 3/4/5 so the body can carry attachments
                head = (
                    encode_int(kind + RESULT_WITH_ATTACHMENTS) + frame[layout.kind_end : amap.start]
                )
            body = b"".join((head, merged_map(frame, amap, mutation), frame[amap.end :]))
        return with_body_length(frame[:HEADER_SIZE], len(body)) + body

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

    def rewrite_request_id(self, message: Message, request_id: int) -> bytes:
        return with_request_id(message.frame, request_id)


def _decode_request(
    flags: int,
    request_id: int,
    frame: bytes,
    body_length: int,
    read_head: Callable[[bytes], tuple[str, str, str, str, int]],
) -> Message:
    dubbo_version, interface, version, method, head_end = read_head(frame)
    layout = BodyLayout(head_end)

    def load_attachments() -> dict[str, str]:
        return request_attachments(frame, layout).strings()

    metadata = request_metadata(interface, method, version, dubbo_version, load_attachments)
    return Message(
        _REQUEST if flags & FLAG_TWO_WAY else _ONEWAY,
        request_id,
        frame,
        HEADER_SIZE,
        body_length,
        metadata,
        _OK_STATUS,
        layout,
    )


def _response_metadata(message: Message) -> dict[str, str]:
    return response_attachments(message.frame, message.codec_state).strings()


def _decode_response(status: int, request_id: int, frame: bytes, body_length: int) -> Message:
    if status != _OK:
        return Message(
            _RESPONSE, request_id, frame, HEADER_SIZE, body_length, {}, ResponseStatus.ERROR
        )
    kind, kind_end = read_result_kind(frame)
    layout = BodyLayout(-1, kind, kind_end)
    outcome = _OUTCOME_BY_KIND[kind]
    if kind < RESULT_WITH_ATTACHMENTS:
        return Message(_RESPONSE, request_id, frame, HEADER_SIZE, body_length, {}, outcome, layout)
    return Message(
        _RESPONSE,
        request_id,
        frame,
        HEADER_SIZE,
        body_length,
        None,
        outcome,
        layout,
        _response_metadata,
    )
