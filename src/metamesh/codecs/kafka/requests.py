"""Kafka request headers, and the topics of Produce and Fetch requests (sans-IO).

The header (v0-v2, see :mod:`.apis`) gives ``api_key``, ``api_version``, ``correlation_id``
and ``client_id``. Produce and Fetch bodies are walked only as far as their topic names (and,
for Produce, ``acks``: with ``acks=0`` the broker sends no response, so the proxy must not wait
for one). Partitions are skipped by their fixed size per version, their record batches by their
length; nothing else of a body is read.

Versions read: Produce v0-v12 and Fetch v0-v12, where topics are named. From Produce v13 and
Fetch v13 on, requests carry topic ids (UUIDs) instead of names; such requests get no topic
metadata (routes on ``topic`` do not match them) and :func:`topic_partitions` returns ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from metamesh.codecs.kafka.apis import (
    FETCH,
    FIND_COORDINATOR,
    METADATA,
    PRODUCE,
    request_header_version,
)
from metamesh.codecs.kafka.wire import Reader
from metamesh.codecs.message import CodecError

#: The smallest request: size (4) + api_key (2) + api_version (2) + correlation_id (4).
MIN_REQUEST: int = 12
#: The first versions that name topics by id instead of by name.
PRODUCE_TOPIC_IDS = 13
FETCH_TOPIC_IDS = 13


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    #: Offset of the body in the frame (the 4-byte size included).
    body: int


def parse_header(frame: bytes) -> RequestHeader:
    r = Reader(frame, 4)
    api_key = r.int16()
    api_version = r.int16()
    correlation_id = r.int32()
    if api_key < 0 or api_version < 0:
        raise CodecError(f"kafka: bad request header (api_key {api_key}, version {api_version})")
    version = request_header_version(api_key, api_version)
    client_id = r.string() if version >= 1 else None
    if version >= 2:
        r.tagged_fields()
    return RequestHeader(api_key, api_version, correlation_id, client_id, r.pos)


TopicPartitions = list[tuple[str, list[int]]]


def produce_acks(frame: bytes, header: RequestHeader) -> int:
    """The ``acks`` of a Produce request (0: the broker sends no response)."""
    version = header.api_version
    r = Reader(frame, header.body)
    if version >= 3:
        r.string(version >= 9)  # transactional_id
    return r.int16()


def topic_partitions(frame: bytes, header: RequestHeader) -> TopicPartitions | None:
    """(topic, partition indexes) of a Produce or Fetch request, in request order, or the
    topics a Metadata request names (no partitions); ``None`` for other APIs, for versions
    that name topics by id, and for a Metadata request about every topic."""
    if header.api_key == PRODUCE:
        return _produce(Reader(frame, header.body), header.api_version)
    if header.api_key == FETCH:
        return _fetch(Reader(frame, header.body), header.api_version)
    if header.api_key == METADATA:
        return _metadata(Reader(frame, header.body), header.api_version)
    return None


def _metadata(r: Reader, version: int) -> TopicPartitions | None:
    """The topics a Metadata request asks about (no partitions); ``None`` for "all topics"."""
    flex = version >= 9
    count = r.uvarint() - 1 if flex else r.int32()
    if count < 0:
        return None
    if count > r.end - r.pos:
        raise CodecError(f"kafka: array of {count} elements at offset {r.pos} is too long")
    topics: TopicPartitions = []
    for _ in range(count):
        if version >= 10:
            r.skip(16)  # topic_id
        name = r.string(flex)
        if flex:
            r.tagged_fields()
        if name is not None:
            topics.append((name, []))
    return topics


def _produce(r: Reader, version: int) -> TopicPartitions | None:
    if version >= PRODUCE_TOPIC_IDS:
        return None
    flex = version >= 9
    if version >= 3:
        r.string(flex)  # transactional_id
    r.skip(6)  # acks, timeout_ms
    topics: TopicPartitions = []
    for _ in range(r.array_length(flex)):
        name = r.string(flex) or ""
        partitions: list[int] = []
        for _ in range(r.array_length(flex)):
            partitions.append(r.int32())
            r.bytes_field(flex)  # records
            if flex:
                r.tagged_fields()
        if flex:
            r.tagged_fields()
        topics.append((name, partitions))
    return topics


def _fetch_partition_size(version: int) -> int:
    """Bytes of one partition entry after its index: fetch_offset and partition_max_bytes,
    then log_start_offset (v5), current_leader_epoch (v9), last_fetched_epoch (v12)."""
    if version >= 12:
        return 28
    if version >= 9:
        return 24
    if version >= 5:
        return 20
    return 12


def _fetch(r: Reader, version: int) -> TopicPartitions | None:
    if version >= FETCH_TOPIC_IDS:
        return None
    flex = version >= 12
    # replica_id, max_wait_ms, min_bytes; max_bytes (v3); isolation_level (v4);
    # session_id and session_epoch (v7)
    r.skip(
        12 + (4 if version >= 3 else 0) + (1 if version >= 4 else 0) + (8 if version >= 7 else 0)
    )
    size = _fetch_partition_size(version)
    topics: TopicPartitions = []
    for _ in range(r.array_length(flex)):
        name = r.string(flex) or ""
        partitions: list[int] = []
        for _ in range(r.array_length(flex)):
            partitions.append(r.int32())
            r.skip(size)
            if flex:
                r.tagged_fields()
        if flex:
            r.tagged_fields()
        topics.append((name, partitions))
    return topics


def coordinator_keys(frame: bytes, header: RequestHeader) -> list[str]:
    """The group (or transaction) ids a FindCoordinator request asks about: one before v4, a
    list from v4 on; empty for other APIs."""
    if header.api_key != FIND_COORDINATOR:
        return []
    version = header.api_version
    r = Reader(frame, header.body)
    if version < 4:
        return [r.string(version >= 3) or ""]
    r.int8()  # key_type
    return [r.string(True) or "" for _ in range(r.array_length(True))]
