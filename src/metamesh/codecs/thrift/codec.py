"""``ThriftCodec``: Thrift framed / unframed / THeader x binary / non-strict binary / compact.

One instance serves one direction of one connection. The first bytes decide the transport and
protocol (:func:`.transport.detect`, which consumes nothing) and the choice is kept for the
connection. Per frame the codec reads only what routing and multiplexing need:

* framed / THeader: the length, then the message header (name, type, seqid); for replies the
  first field id of the result struct. The body is never walked.
* unframed: the whole message must be walked to find its end (:func:`.protocol.skip_struct`),
  no value is decoded. When the walk runs out of bytes the codec remembers how many bytes it
  knows it needs and does not walk again until the buffer has grown that far.

``Message.frame`` is the exact bytes received. ``Message.codec_state`` holds the offsets that
make :meth:`ThriftCodec.rewrite_request_id` and THeader mutations cheap: a plain
``(name, seqid_offset, seqid_size, protocol)`` tuple (:data:`FramedState`) for the framed
transport, a :class:`FrameState` for unframed and THeader messages.

Fast path. The proxy pays one request decode, one reply decode and two id rewrites per call, and
framed strict binary is what most Thrift clients speak, so that case gets straight-line code in
:meth:`ThriftCodec.decode`: one ``struct.unpack_from(">iIi")`` reads frame length, version word
and name length; a handful of integer comparisons prove the header is well formed and inside the
frame; the name is sliced and the seqid read without building a ``Header`` or ``FrameState``.
:meth:`ThriftCodec.decode_at` makes the same checks on such frames straight from the ``bytes``
read from the socket, at an offset and with no buffer in between (the frame is sliced out, or
is that very object when the read is exactly one frame).
Anything it does not vouch for (a partial header, a bad version, a negative or oversized name
length, an unknown message type) falls through to the general code, which returns ``None`` or
raises the precise ``CodecError``, so both paths give identical results. Framed compact has a
similar short path (:meth:`ThriftCodec._decode_framed`); rewriting a framed binary seqid is a
fixed 4-byte patch. Method-name metadata is memoised per name (a service has few methods).

Metadata keys (built lazily, on first access; a framed binary call whose name is memoised gets
a copy of the memo at decode, as routing reads it at once):

* ``method``: the method name without a multiplexing prefix (``add`` for ``Calc:add``);
* ``service``: the part before ``:`` when the name is multiplexed (absent otherwise);
* ``full_method``: the name exactly as on the wire (``Calc:add``, or ``add``);
* THeader connections: every info key/value header (KEYVALUE and PKEYVALUE) as strings. The
  three keys above win if a header uses the same name.

Message types: call -> REQUEST, oneway -> ONEWAY, reply -> RESPONSE (status BUSINESS_EXCEPTION
when the result struct's first field id is not 0, i.e. a declared exception), exception ->
ERROR with status ERROR.

Request ids: ``request_id`` is the seqid as an unsigned 32-bit number (the i32's bit pattern),
so every id in ``[0, 2**32)`` survives :meth:`~ThriftCodec.rewrite_request_id` and decode
unchanged; a client's negative seqid shows up as ``seqid + 2**32`` and is restored exactly.

Local errors are ``TApplicationException`` replies in the request's own transport and protocol,
named with the bare method name (as Apache's multiplexed processor answers). ErrorKind mapping:
ROUTE_NOT_FOUND -> UNKNOWN_METHOD (1), BAD_REQUEST -> PROTOCOL_ERROR (7), every other kind
(no healthy upstream, over limit, timeout, upstream reset, cluster not found, unauthorized,
fault abort, bad response, unspecified) -> INTERNAL_ERROR (6). A oneway request gets no reply
(``b""``): its client is not reading one.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import Final, cast

from metamesh.codecs.base import DEFAULT_MAX_FRAME_SIZE, Codec
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    FrameTooLargeError,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
)
from metamesh.codecs.thrift import header as theader
from metamesh.codecs.thrift.protocol import (
    AppExceptionType,
    Header,
    Protocol,
    Short,
    encode_seqid,
    first_field_id,
    parse_header,
    read_varint,
    skip_struct,
    sniff,
    write_application_exception,
    write_varint,
)
from metamesh.codecs.thrift.transport import Transport, detect

_I32: Final = struct.Struct(">i")
_pack_i32: Final = _I32.pack
_U32: Final = struct.Struct(">I")
_pack_u32: Final = _U32.pack
_unpack_u32: Final = _U32.unpack_from
#: Frame length, strict-binary version word (0x8001 | type), method name length.
_unpack_binary_head: Final = struct.Struct(">iIi").unpack_from

_BINARY: Final = Protocol.BINARY
_COMPACT: Final = Protocol.COMPACT
_OK: Final = ResponseStatus.OK
_BUSINESS_EXCEPTION: Final = ResponseStatus.BUSINESS_EXCEPTION
_ERROR: Final = ResponseStatus.ERROR

_MESSAGE_TYPES: Final = {
    1: MessageType.REQUEST,
    2: MessageType.RESPONSE,
    3: MessageType.ERROR,
    4: MessageType.ONEWAY,
}
#: The same, indexed by wire type (index 0 is never used: the fast path checks 1 <= type <= 4).
_WIRE_TYPES: Final = (MessageType.ERROR, *_MESSAGE_TYPES.values())
_STATUS_BY_WIRE_TYPE: Final = (_OK, _OK, _OK, _ERROR, _OK)

#: ``codec_state`` of a framed message: ``(name, seqid_offset, seqid_size, protocol)``, offsets
#: into ``Message.frame``. A tuple because it is built per frame and a tuple is the cheapest
#: record Python has.
FramedState = tuple[bytes, int, int, Protocol]

_APP_EXCEPTION_TYPES: Final = {
    ErrorKind.ROUTE_NOT_FOUND: AppExceptionType.UNKNOWN_METHOD,
    ErrorKind.BAD_REQUEST: AppExceptionType.PROTOCOL_ERROR,
}


class FrameState:
    """What a codec remembers about one decoded frame (``Message.codec_state``).

    ``seqid_offset`` is into ``frame``, or into ``payload`` when the THeader payload was
    zlib-compressed (``payload`` then holds the inflated message).
    """

    __slots__ = ("layout", "name", "payload", "protocol", "seqid_offset", "seqid_size", "transport")

    def __init__(
        self,
        transport: Transport,
        protocol: Protocol,
        name: bytes,
        seqid_offset: int,
        seqid_size: int,
        layout: theader.HeaderFrame | None = None,
        payload: bytes | None = None,
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.name = name
        self.seqid_offset = seqid_offset
        self.seqid_size = seqid_size
        self.layout = layout
        self.payload = payload


_MAX_CACHED_NAMES: Final = 4096
_name_cache: Final[dict[bytes, dict[str, str]]] = {}


def _name_metadata(name: bytes) -> dict[str, str]:
    """``method`` / ``service`` / ``full_method`` of a wire name, as a new dict.

    Memoised by name: a connection calls a handful of methods over and over, and copying a
    small dict is several times cheaper than decoding and splitting the name again.
    """
    cached = _name_cache.get(name)
    if cached is None:
        full = name.decode("utf-8", "replace")
        service, sep, method = full.partition(":")
        cached = {"full_method": full, "service": service, "method": method}
        if not sep:
            del cached["service"]
            cached["method"] = full
        if len(_name_cache) < _MAX_CACHED_NAMES:
            _name_cache[name] = cached
    return cached.copy()


def _framed_metadata(message: Message) -> dict[str, str]:
    return _name_metadata(message.codec_state[0])


def _load_metadata(message: Message) -> dict[str, str]:
    state: FrameState = message.codec_state
    if state.layout is None:
        return _name_metadata(state.name)
    metadata = theader.info_headers(message.frame, state.layout)
    metadata.update(_name_metadata(state.name))
    return metadata


def _compact_message(frame: bytes) -> Message | None:
    """A framed compact message, read inline; ``None`` if the first two bytes are not a valid
    compact call/reply/exception/oneway (the general parser then says what is wrong)."""
    end = len(frame)
    if end < 8 or frame[4] != 0x82:
        return None
    wire = frame[5]
    if wire & 0x1F != 1 or not 1 <= wire >> 5 <= 4:
        return None
    wire >>= 5
    try:
        seqid = frame[6]
        seqid_end = 7
        if seqid > 0x7F:  # two bytes inline (ids up to 16383), longer ones the general way
            high = frame[7]
            if high < 0x80:
                seqid, seqid_end = (seqid & 0x7F) | high << 7, 8
            else:
                seqid, seqid_end = read_varint(frame, 6, end, 5)
        name_size = frame[seqid_end]
        pos = seqid_end + 1
        if name_size > 0x7F:
            name_size, pos = read_varint(frame, seqid_end, end, 5)
    except (IndexError, Short):
        raise CodecError("thrift: message header runs past the end of its frame") from None
    body_at = pos + name_size
    if body_at > end:
        raise CodecError("thrift: message header runs past the end of its frame")
    status = _compact_reply_status(frame, body_at, end) if wire == 2 else _STATUS_BY_WIRE_TYPE[wire]
    return Message(
        _WIRE_TYPES[wire],
        seqid & 0xFFFFFFFF,
        frame,
        body_at,
        end - body_at,
        None,
        status,
        (frame[pos:body_at], 6, seqid_end - 6, _COMPACT),
        _framed_metadata,
    )


def _compact_reply_status(frame: bytes, pos: int, end: int) -> ResponseStatus:
    """OK or BUSINESS_EXCEPTION from the result struct at ``pos`` (compact protocol).

    The success field (id 0) is always in long form (type byte, then zigzag id ``00``); a short
    form header (id delta in the high nibble) can only be a declared exception. Anything else
    (non-minimal varints, truncation) goes to :func:`.protocol.first_field_id`.
    """
    if pos < end:
        b = frame[pos]
        if b >> 4:
            return _BUSINESS_EXCEPTION
        if not b or (pos + 1 < end and not frame[pos + 1]):
            return _OK
    try:
        field_id = first_field_id(frame, pos, end, _COMPACT)
    except Short:
        raise CodecError("thrift: reply body runs past the end of its frame") from None
    return _BUSINESS_EXCEPTION if field_id else _OK


def _binary_reply_status(frame: bytes, pos: int, end: int) -> ResponseStatus:
    """OK or BUSINESS_EXCEPTION from the result struct at ``pos`` (binary protocol).

    Inline twin of :func:`.protocol.first_field_id` for the fast path: an empty struct (STOP)
    or field id 0 is the return value, any other id a declared exception.
    """
    if pos < end and not frame[pos]:
        return _OK
    if pos + 3 > end:
        raise CodecError("thrift: reply body runs past the end of its frame")
    return _BUSINESS_EXCEPTION if frame[pos + 1] or frame[pos + 2] else _OK


def _binary_head_ok(size: int, version: int, name_size: int, max_frame_size: int) -> bool:
    """Whether a framed strict binary head (frame length, version word, name length) is one
    the fast paths vouch for: a call/reply/exception/oneway whose name fits in the frame."""
    return (
        version >> 16 == 0x8001
        and 0 <= name_size <= size - 12  # name and seqid inside the frame
        and size <= max_frame_size
        and 1 <= version & 0xFF <= 4
    )


def _framed_binary_message(frame: bytes, total: int, body_at: int, wire: int) -> Message:
    """The message of a whole framed strict binary ``frame`` whose header the caller checked:
    message type ``wire`` (1-4), body at ``body_at`` <= ``total`` (the frame's length)."""
    seqid_at = body_at - 4
    name = frame[12:seqid_at]
    metadata = None
    if wire == 2:
        # A result struct starting with STOP or field 0 (the return value): OK, read inline;
        # the rest (exceptions, short bodies) in the helper.
        if body_at + 3 <= total and not (frame[body_at + 1] or frame[body_at + 2]):
            status = _OK
        else:
            status = _binary_reply_status(frame, body_at, total)
    else:
        status = _STATUS_BY_WIRE_TYPE[wire]
        # A call is routed on its metadata: hand over the memoised name's copy now rather
        # than through the lazy loader (replies stay lazy).
        cached = _name_cache.get(name)
        if cached is not None:
            metadata = cached.copy()
    seqid: int = _unpack_u32(frame, seqid_at)[0]
    return Message(
        _WIRE_TYPES[wire],
        seqid,
        frame,
        body_at,
        total - body_at,
        metadata,
        status,
        (name, seqid_at, 4, _BINARY),
        _framed_metadata,
    )


class ThriftCodec(Codec):
    """Thrift over TCP, transport and protocol detected per connection."""

    name = "thrift"
    request_id_bits = 32

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)
        #: Learnt from the first frame and kept for the connection (``None`` until then).
        self.transport: Transport | None = None
        self.protocol: Protocol | None = None
        self._need = 0  # unframed: don't re-walk until the buffer holds this many bytes
        #: framed strict binary: :meth:`decode` takes the fast path
        self._framed_binary = False
        #: framed compact: :meth:`decode` goes straight to :meth:`_decode_framed_compact`
        self._framed_compact = False

    def expect_variant(self, variant: Hashable | None) -> None:
        if variant is None:
            return
        transport, protocol = cast("tuple[Transport, Protocol]", variant)
        self.transport, self.protocol = transport, protocol
        self.wire_variant = variant
        self.carries_headers = transport is Transport.HEADER  # only THeader has headers
        self._framed_binary = transport is Transport.FRAMED and protocol is _BINARY
        self._framed_compact = transport is Transport.FRAMED and protocol is _COMPACT

    # --- decode -----------------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | None:
        if self._framed_binary and len(buffer) >= 12:
            # Fast path (see the module docstring): framed strict binary, header in the buffer.
            # typed so the native build computes on machine ints, not boxed objects
            head: tuple[int, int, int] = _unpack_binary_head(buffer)
            size, version, name_size = head
            body_at = name_size + 16  # length, version, name length, name, seqid
            wire = version & 0xFF
            if _binary_head_ok(size, version, name_size, self.max_frame_size):
                total = size + 4
                available = len(buffer)
                if available < total:
                    return None
                if available == total:  # the usual case: one copy instead of two
                    frame = bytes(buffer)
                    buffer.clear()
                else:
                    frame = bytes(buffer[:total])
                    del buffer[:total]
                return _framed_binary_message(frame, total, body_at, wire)
        if self._framed_compact:
            return self._decode_framed_compact(buffer)
        transport = self.transport
        if transport is None:
            detected = detect(buffer, self.max_frame_size)
            if detected is None:
                return None
            transport, self.protocol = detected
            self.transport = transport
            self.wire_variant = (transport, self.protocol)
            self.carries_headers = transport is Transport.HEADER  # only THeader has headers
            self._framed_binary = transport is Transport.FRAMED and self.protocol is _BINARY
            self._framed_compact = transport is Transport.FRAMED and self.protocol is _COMPACT
        if transport is Transport.FRAMED:
            return self._decode_framed(buffer)
        if transport is Transport.HEADER:
            return self._decode_header(buffer)
        return self._decode_unframed(buffer)

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        # Framed strict binary only, once detected: decode's fast path, reading the frame
        # straight from ``data``; everything else is left to ``decode``.
        available = len(data) - pos
        if not self._framed_binary or available < 12:
            return None
        head: tuple[int, int, int] = _unpack_binary_head(data, pos)
        size, version, name_size = head
        total = size + 4
        if total > available or not _binary_head_ok(size, version, name_size, self.max_frame_size):
            return None  # a part of a frame, or one for the general code
        frame = data if total == available and not pos else data[pos : pos + total]
        return _framed_binary_message(frame, total, name_size + 16, version & 0xFF)

    def _take_frame(self, buffer: bytearray) -> bytes | None:
        if len(buffer) < 4:
            return None
        (size,) = _I32.unpack_from(buffer, 0)
        if size <= 0:
            raise CodecError(f"thrift: invalid frame length {size}")
        if size > self.max_frame_size:
            raise FrameTooLargeError(
                f"thrift: frame of {size} bytes exceeds the {self.max_frame_size} limit"
            )
        total = size + 4
        if len(buffer) < total:
            return None
        frame = bytes(buffer[:total])
        del buffer[:total]
        return frame

    def _decode_framed(self, buffer: bytearray) -> Message | None:
        frame = self._take_frame(buffer)
        if frame is None:
            return None
        protocol = self.protocol
        assert protocol is not None
        head = _header_in_frame(frame, 4, protocol)
        state = (head.name, head.seqid_offset, head.seqid_size, protocol)
        return _message(frame, frame, head, protocol, state)

    def _decode_framed_compact(self, buffer: bytearray) -> Message | None:
        frame = self._take_frame(buffer)
        if frame is None:
            return None
        message = _compact_message(frame)
        if message is not None:
            return message
        head = _header_in_frame(frame, 4, _COMPACT)  # raises the precise CodecError
        return _message(frame, frame, head, _COMPACT, (head.name, 6, head.seqid_size, _COMPACT))

    def _decode_header(self, buffer: bytearray) -> Message | None:
        frame = self._take_frame(buffer)
        if frame is None:
            return None
        layout, payload = theader.parse_frame(frame, self.max_frame_size)
        data, start = (frame, layout.payload_offset) if payload is None else (payload, 0)
        protocol = layout.protocol
        if protocol is Protocol.BINARY and len(data) - start >= 2 and sniff(data, start) is None:
            protocol = Protocol.BINARY_NON_STRICT
        head = _header_in_frame(data, start, protocol)
        state = FrameState(
            Transport.HEADER,
            protocol,
            head.name,
            head.seqid_offset,
            head.seqid_size,
            layout,
            payload,
        )
        return _message(frame, data, head, protocol, state)

    def _decode_unframed(self, buffer: bytearray) -> Message | None:
        available = len(buffer)
        if available < self._need:
            return None
        protocol = self.protocol
        assert protocol is not None
        try:
            head = parse_header(buffer, 0, available, protocol)
            end = skip_struct(buffer, head.body_offset, available, protocol)
        except Short as short:
            if short.needed > self.max_frame_size:
                raise FrameTooLargeError(
                    f"thrift: unframed message needs over {self.max_frame_size} bytes"
                ) from None
            self._need = short.needed
            return None
        if end > self.max_frame_size:
            raise FrameTooLargeError(
                f"thrift: message of {end} bytes exceeds the {self.max_frame_size} limit"
            )
        self._need = 0
        frame = bytes(buffer[:end])
        del buffer[:end]
        state = FrameState(
            Transport.UNFRAMED, protocol, head.name, head.seqid_offset, head.seqid_size
        )
        return _message(frame, frame, head, protocol, state)

    # --- encode -----------------------------------------------------------------------------

    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        state = message.codec_state
        if not isinstance(state, FrameState) or state.layout is None:
            self.dropped_mutations += 1
            return message.frame
        return theader.with_headers(message.frame, state.layout, mutation)

    def rewrite_request_id(self, message: Message, request_id: int) -> bytes:
        if not -0x80000000 <= request_id <= 0xFFFFFFFF:
            raise ValueError(f"thrift seqid {request_id} does not fit in 32 bits")
        state = message.codec_state
        if state.__class__ is tuple:  # framed: patch the seqid in place
            _, start, size, protocol = state
            frame: bytes = message.frame
            if protocol is not _COMPACT:
                return frame[:start] + _pack_u32(request_id & 0xFFFFFFFF) + frame[start + 4 :]
            new = write_varint(request_id & 0xFFFFFFFF)
            if len(new) == size:
                return frame[:start] + new + frame[start + size :]
            body = frame[4:start] + new + frame[start + size :]
            return _pack_i32(len(body)) + body
        return _rewrite_in_frame_state(message, _state_of(message), request_id)

    def error_reply(self, request: Message, error: LocalError) -> bytes:
        state = request.codec_state
        framed = state.__class__ is tuple
        if not framed:
            state = _state_of(request)
        if request.type is MessageType.ONEWAY:
            return b""
        kind = _APP_EXCEPTION_TYPES.get(error.kind, AppExceptionType.INTERNAL_ERROR)
        seqid = request.request_id or 0
        if framed:
            name, _, _, protocol = state
            payload = write_application_exception(
                protocol, name.rpartition(b":")[2], seqid, error.message, kind
            )
            return _pack_i32(len(payload)) + payload
        return _error_in_frame_state(state, seqid, error.message, kind)


def _rewrite_in_frame_state(message: Message, state: FrameState, request_id: int) -> bytes:
    new = encode_seqid(state.protocol, request_id)
    start, stop = state.seqid_offset, state.seqid_offset + state.seqid_size
    layout = state.layout
    if state.payload is not None and layout is not None:
        payload = state.payload[:start] + new + state.payload[stop:]
        for _ in range(theader.transform_count(message.frame)):
            payload = theader.deflate(payload)
        frame = bytearray(message.frame[: layout.payload_offset])
        frame += payload
    else:
        frame = bytearray(message.frame)
        frame[start:stop] = new
    if state.transport is not Transport.UNFRAMED:
        theader.set_lengths(frame)
    if layout is not None:
        frame[theader.SEQID_OFFSET : theader.SEQID_OFFSET + 4] = encode_seqid(
            Protocol.BINARY, request_id
        )
    return bytes(frame)


def _error_in_frame_state(
    state: FrameState, seqid: int, text: str, kind: AppExceptionType
) -> bytes:
    name = state.name.rpartition(b":")[2]
    payload = write_application_exception(state.protocol, name, seqid, text, kind)
    if state.transport is Transport.UNFRAMED:
        return payload
    if state.layout is not None:
        wire = Protocol.COMPACT if state.protocol is Protocol.COMPACT else Protocol.BINARY
        return theader.build_frame(state.layout.flags, state.layout.seqid, wire, payload)
    return _I32.pack(len(payload)) + payload


def _state_of(message: Message) -> FrameState:
    state = message.codec_state
    if not isinstance(state, FrameState):
        raise CodecError("thrift: message was not decoded by a ThriftCodec")
    return state


def _header_in_frame(data: bytes, start: int, protocol: Protocol) -> Header:
    try:
        return parse_header(data, start, len(data), protocol)
    except Short:
        raise CodecError("thrift: message header runs past the end of its frame") from None


def _message(
    frame: bytes, data: bytes, head: Header, protocol: Protocol, state: FrameState | FramedState
) -> Message:
    mtype = head.mtype
    status = ResponseStatus.OK
    if mtype == 2:
        try:
            if first_field_id(data, head.body_offset, len(data), protocol):
                status = ResponseStatus.BUSINESS_EXCEPTION
        except Short:
            raise CodecError("thrift: reply body runs past the end of its frame") from None
    elif mtype == 3:
        status = ResponseStatus.ERROR
    header_size = head.body_offset
    if data is not frame and isinstance(state, FrameState) and state.layout is not None:
        # a zlib payload: the message header is inside the compressed bytes; count the THeader
        header_size = state.layout.header_end
    return Message(
        _MESSAGE_TYPES[mtype],
        head.seqid & 0xFFFFFFFF,
        frame,
        header_size,
        len(frame) - header_size,
        status=status,
        codec_state=state,
        loader=_load_metadata if isinstance(state, FrameState) else _framed_metadata,
    )
