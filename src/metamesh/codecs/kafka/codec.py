"""The Kafka codec: size-prefixed frames, request headers as metadata, broker addresses
kept inside the mesh (sans-IO).

**Framing.** Every Kafka frame is an int32 size and that many bytes. The size is checked as
soon as its four bytes are in: a negative one, one below a header, or one over
``max_frame_size`` (128 MiB by default, above the broker's own 100 MB request limit and a
Fetch response's 50 MB default) is refused before any of the frame is buffered, so a client
announcing 2 GB is closed at once.

**Direction.** Kafka frames do not say whether they are requests or responses, and a response
cannot be read without the request it answers. A codec decodes requests until the proxy makes
it an upstream codec (:meth:`KafkaCodec.upstream_preamble`); from then on it reads responses,
whose header is only the correlation id.

**Metadata** of a request: ``api`` (the API's name: ``Produce``, ``Fetch``, ``Metadata``,
...), ``api_key``, ``api_version``, ``correlation_id``, ``client_id`` (empty when null), and for
Produce and Fetch ``topic`` (the first topic) and ``topics`` (every topic, comma-separated, in
request order). ``command`` is ``api``, or ``api/topic`` for Produce and Fetch, so that
``metamesh.filters.command_stats`` counts requests per API and, for those two, per topic.
Metadata requests carry no topic keys, although they name topics: refused, a Metadata request
gets no broker list, which clients ignore and ask again (kafka-python until its send times
out) instead of reporting the topic's error; refusing the Produce or Fetch is what they
report.
Requests are not mutated: a Kafka header has no field a broker would pass on (mutations are
counted as dropped).

**Ordering and connections.** The proxy matches responses by order, not by correlation id:
a broker answers the requests of one connection in the order they came, and clients require
the same of the proxy (kafka-python and kafkajs check that each response answers their oldest
request in flight). Correlation ids therefore pass unchanged, and each client gets upstream
connections of its own (``shares_upstream`` is off): a broker handles one request of a
connection at a time, so a consumer's Fetch long poll (up to ``fetch.max.wait.ms``) or a
JoinGroup held for a rebalance would stall every other client sharing that connection.

A listener whose clients are producers (short requests only) may let them share upstream
connections instead: the ``share_upstream: "true"`` option (:class:`SharedKafkaCodec`).

**Broker addresses.** With the ``advertise`` option (``broker-host:port=listener-host:port``
pairs, comma-separated), Metadata and FindCoordinator responses have those broker addresses
replaced by the proxy's listeners (:mod:`.responses`), so clients keep talking through the
mesh: one listener per broker, each routing to that broker.

``acks=0`` Produce requests are one-way (the broker sends nothing back); every other request
is two-way.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import ClassVar, Final

from metamesh.codecs.base import Codec
from metamesh.codecs.kafka.apis import FETCH, FIND_COORDINATOR, METADATA, PRODUCE, api_name
from metamesh.codecs.kafka.requests import (
    MIN_REQUEST,
    RequestHeader,
    coordinator_keys,
    parse_header,
    produce_acks,
    topic_partitions,
)
from metamesh.codecs.kafka.responses import (
    CLUSTER_AUTHORIZATION_FAILED,
    INVALID_REQUEST,
    NETWORK_EXCEPTION,
    REQUEST_TIMED_OUT,
    THROTTLING_QUOTA_EXCEEDED,
    TOPIC_AUTHORIZATION_FAILED,
    UNKNOWN_SERVER_ERROR,
    UNKNOWN_TOPIC_OR_PARTITION,
    Address,
    error_response,
    rewrite_addresses,
)
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    FrameTooLargeError,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ReplyPart,
)

DEFAULT_MAX_SIZE: Final = 128 * 1024 * 1024
_SIZE: Final = struct.Struct(">i")
#: A response: size (4) + correlation_id (4).
_MIN_RESPONSE: Final = 8

#: Kafka error code answered for each local error (per topic partition for Produce/Fetch).
ERROR_CODES: Final[dict[ErrorKind, int]] = {
    ErrorKind.ROUTE_NOT_FOUND: UNKNOWN_TOPIC_OR_PARTITION,
    ErrorKind.CLUSTER_NOT_FOUND: UNKNOWN_TOPIC_OR_PARTITION,
    ErrorKind.NO_HEALTHY_UPSTREAM: NETWORK_EXCEPTION,
    ErrorKind.UPSTREAM_RESET: NETWORK_EXCEPTION,
    ErrorKind.TIMEOUT: REQUEST_TIMED_OUT,
    ErrorKind.OVER_LIMIT: THROTTLING_QUOTA_EXCEEDED,
    ErrorKind.UNAUTHORIZED: TOPIC_AUTHORIZATION_FAILED,
    ErrorKind.BAD_REQUEST: INVALID_REQUEST,
}


class AddressRewrite(ReplyPart):
    """The ``codec_state`` of a Metadata or FindCoordinator request whose response must have
    its broker addresses rewritten (the proxy hands the response to ``merge_reply``)."""

    __slots__ = ("api_key", "api_version")

    def __init__(self, api_key: int, api_version: int) -> None:
        self.api_key = api_key
        self.api_version = api_version


def parse_advertise(text: str) -> dict[Address, Address]:
    """``"b1:9092=127.0.0.1:19092, b2:9092=..."`` -> {(host, port): (host, port)}."""
    table: dict[Address, Address] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        broker, sep, listener = item.partition("=")
        if not sep:
            raise ValueError(f"advertise entry {item!r} is not broker-host:port=host:port")
        table[_address(broker)] = _address(listener)
    return table


def _address(text: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.lower(), int(port)


class KafkaCodec(Codec):
    """Kafka (any broker speaking the Apache Kafka wire protocol)."""

    name: ClassVar[str] = "kafka"
    request_id_bits: ClassVar[int | None] = None
    shares_upstream: ClassVar[bool] = False

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_SIZE, options: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self.upstream = False
        self.addresses = parse_advertise((options or {}).get("advertise", ""))

    # -- framing ----------------------------------------------------------------------------
    def _frame_size(self, data: bytes | bytearray, pos: int) -> int:
        size: int = _SIZE.unpack_from(data, pos)[0] + 4
        least = _MIN_RESPONSE if self.upstream else MIN_REQUEST
        if size > self.max_frame_size:
            raise FrameTooLargeError(
                f"kafka: frame of {size - 4} bytes is over the limit of {self.max_frame_size}"
            )
        if size < least:
            raise CodecError(f"kafka: frame size {size - 4} is below a header's")
        return size

    def decode(self, buffer: bytearray) -> Message | None:
        if len(buffer) < 4:
            return None
        size = self._frame_size(buffer, 0)
        if len(buffer) < size:
            return None
        frame = bytes(buffer[:size])
        del buffer[:size]
        return self._message(frame)

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        if len(data) - pos < 4:
            return None
        try:
            size = self._frame_size(data, pos)
        except CodecError:
            return None  # decode raises it
        if len(data) - pos < size:
            return None
        frame = data if size == len(data) and not pos else data[pos : pos + size]
        return self._message(frame)

    def _message(self, frame: bytes) -> Message:
        size = len(frame)
        if self.upstream:
            correlation_id: int = _SIZE.unpack_from(frame, 4)[0]
            return Message(MessageType.RESPONSE, correlation_id, frame, 8, size - 8)
        header = parse_header(frame)
        api = api_name(header.api_key)
        metadata = {
            "api": api,
            "command": api,
            "api_key": str(header.api_key),
            "api_version": str(header.api_version),
            "correlation_id": str(header.correlation_id),
            "client_id": header.client_id or "",
        }
        kind = MessageType.REQUEST
        state: AddressRewrite | None = None
        topics = topic_partitions(frame, header) if header.api_key in (PRODUCE, FETCH) else None
        if topics:
            names = list(dict.fromkeys(name for name, _ in topics))
            metadata["topic"] = names[0]
            metadata["topics"] = ",".join(names)
            metadata["command"] = f"{api}/{names[0]}"
        if header.api_key == PRODUCE and produce_acks(frame, header) == 0:
            kind = MessageType.ONEWAY
        elif self.addresses and header.api_key in (METADATA, FIND_COORDINATOR):
            state = AddressRewrite(header.api_key, header.api_version)
        return Message(
            kind, header.correlation_id, frame, header.body, size - header.body, metadata,
            codec_state=state,
        )  # fmt: skip

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if mutation:
            self.dropped_mutations += 1
        return message.frame

    def merge_reply(self, part: ReplyPart, reply: bytes) -> bytes:
        if isinstance(part, AddressRewrite):
            try:
                rewritten = rewrite_addresses(reply, part.api_key, part.api_version, self.addresses)
            except CodecError:
                return reply  # not the schema we know: forwarded as the broker wrote it
            if rewritten is not None:
                return rewritten
        return reply

    def error_reply(self, request: Message, error: LocalError) -> bytes:
        header = parse_header(request.frame)
        code = ERROR_CODES.get(error.kind, UNKNOWN_SERVER_ERROR)
        keys: list[str] = []
        try:  # decode read Produce and Fetch bodies already; the others are read only here
            topics = topic_partitions(request.frame, header)
            keys = coordinator_keys(request.frame, header)
        except CodecError:
            topics = None
        if error.kind is ErrorKind.UNAUTHORIZED and topics is None:
            code = CLUSTER_AUTHORIZATION_FAILED
        return error_response(header, topics, code, keys)

    def upstream_preamble(self, options: Mapping[str, str]) -> bytes | None:
        """Make this codec read responses (see the module docstring); nothing to send."""
        self.upstream = True
        return None


class SharedKafkaCodec(KafkaCodec):
    """:class:`KafkaCodec` for listeners whose clients share upstream connections (the
    ``share_upstream: "true"`` option): requests of many clients go down one connection in
    order, and responses come back by that order, so correlation ids still pass unchanged (a
    broker only echoes them). For producers and other short requests; never for consumers,
    whose Fetch long polls and group joins would hold up everyone else on the connection."""

    shares_upstream: ClassVar[bool] = True


def kafka_codec(
    *, max_frame_size: int = DEFAULT_MAX_SIZE, options: Mapping[str, str] | None = None
) -> KafkaCodec:
    """The codec factory registered as ``kafka``: :class:`SharedKafkaCodec` when the
    listener's options say ``share_upstream: "true"``, else :class:`KafkaCodec`."""
    share = (options or {}).get("share_upstream", "false").strip().lower()
    if share not in ("true", "false"):
        raise ValueError(f"share_upstream must be 'true' or 'false', not {share!r}")
    cls = SharedKafkaCodec if share == "true" else KafkaCodec
    return cls(max_frame_size=max_frame_size, options=options)


__all__ = [
    "AddressRewrite",
    "KafkaCodec",
    "RequestHeader",
    "SharedKafkaCodec",
    "kafka_codec",
    "parse_advertise",
]
