"""Kafka responses the proxy writes or rewrites (sans-IO).

**Broker addresses.** A client learns where brokers are from Metadata responses (the broker
list) and FindCoordinator responses (its group or transaction coordinator), then connects to
those addresses directly. To keep it talking through the mesh, :func:`rewrite_addresses`
replaces each broker address found in the codec's address map with the proxy listener that
leads to that broker, re-encoding only the broker entries and copying every other byte; an
address not in the map is left as it is (that client then leaves the mesh for that broker).

**Error responses.** Kafka has no generic error frame: each API answers in its own schema.
:func:`error_response` writes a complete, well-formed response for Produce and Fetch
(v0-v12: the error on every partition), Metadata (every version: no brokers, the error on each
topic asked about), FindCoordinator (every version: no coordinator, the error per key),
JoinGroup, SyncGroup, Heartbeat, LeaveGroup and InitProducerId (every version: the error at
the top, every other field empty) and ApiVersions (any version, in v0's body, as brokers
answer a version they do not know), which clients surface as that error and, for retriable
codes, retry. Other APIs (offsets, transactions, admin) get a response holding
``throttle_time_ms`` and the error code, which is where most of their schemas keep them, but
not the rest of their fields: their clients fail to read it, and close and reconnect.
"""

from __future__ import annotations

from collections.abc import Mapping

from metamesh.codecs.kafka.apis import (
    API_VERSIONS,
    FETCH,
    FIND_COORDINATOR,
    HEARTBEAT,
    INIT_PRODUCER_ID,
    JOIN_GROUP,
    LEAVE_GROUP,
    METADATA,
    PRODUCE,
    SYNC_GROUP,
    is_flexible,
    response_header_flexible,
)
from metamesh.codecs.kafka.requests import RequestHeader, TopicPartitions
from metamesh.codecs.kafka.wire import (
    Reader,
    write_array_length,
    write_int16,
    write_int32,
    write_int64,
    write_string,
    write_uvarint,
)

Address = tuple[str, int]
AddressMap = Mapping[Address, Address]

# Kafka error codes (org.apache.kafka.common.protocol.Errors).
UNKNOWN_SERVER_ERROR = -1
UNKNOWN_TOPIC_OR_PARTITION = 3
REQUEST_TIMED_OUT = 7
NETWORK_EXCEPTION = 13
TOPIC_AUTHORIZATION_FAILED = 29
CLUSTER_AUTHORIZATION_FAILED = 31
INVALID_REQUEST = 42
THROTTLING_QUOTA_EXCEEDED = 89


def _header_end(frame: bytes, api_key: int, api_version: int) -> Reader:
    r = Reader(frame, 8)  # size, correlation_id
    if response_header_flexible(api_key, api_version):
        r.tagged_fields()
    return r


def rewrite_addresses(
    frame: bytes, api_key: int, api_version: int, addresses: AddressMap
) -> bytes | None:
    """``frame`` (a Metadata or FindCoordinator response) with its broker addresses mapped
    through ``addresses``; ``None`` when nothing changed (or for another API)."""
    if api_key == METADATA:
        return _metadata(frame, api_version, addresses)
    if api_key == FIND_COORDINATOR:
        return _find_coordinator(frame, api_version, addresses)
    return None


def _node(r: Reader, flex: bool, addresses: AddressMap) -> tuple[bytes, bool]:
    """Read node_id, host, port at ``r``; their bytes, rewritten if the address is mapped."""
    node_id = r.int32()
    host = r.string(flex) or ""
    port = r.int32()
    new = addresses.get((host, port))
    if new is None:
        new = addresses.get((host.lower(), port))
    if new is None:
        return write_int32(node_id) + write_string(host, flex) + write_int32(port), False
    return write_int32(node_id) + write_string(new[0], flex) + write_int32(new[1]), True


def _framed(frame: bytes, start: int, middle: list[bytes], end: int) -> bytes:
    body = frame[4:start] + b"".join(middle) + frame[end:]
    return write_int32(len(body)) + body


def _metadata(frame: bytes, version: int, addresses: AddressMap) -> bytes | None:
    flex = version >= 9
    r = _header_end(frame, METADATA, version)
    if version >= 3:
        r.int32()  # throttle_time_ms
    start = r.pos
    count = r.array_length(flex)
    parts = [write_array_length(count, flex)]
    changed = False
    for _ in range(count):
        node, mapped = _node(r, flex, addresses)
        changed |= mapped
        rest = r.pos
        if version >= 1:
            r.string(flex)  # rack
        if flex:
            r.tagged_fields()
        parts += [node, frame[rest : r.pos]]
    return _framed(frame, start, parts, r.pos) if changed else None


def _find_coordinator(frame: bytes, version: int, addresses: AddressMap) -> bytes | None:
    flex = version >= 3
    r = _header_end(frame, FIND_COORDINATOR, version)
    if version >= 1:
        r.int32()  # throttle_time_ms
    if version < 4:
        r.int16()  # error_code
        if version >= 1:
            r.string(flex)  # error_message
        start = r.pos
        node, mapped = _node(r, flex, addresses)
        return _framed(frame, start, [node], r.pos) if mapped else None
    start = r.pos
    count = r.array_length(True)
    parts = [write_array_length(count, True)]
    changed = False
    for _ in range(count):
        key_start = r.pos
        r.string(True)  # key
        key = frame[key_start : r.pos]
        node, mapped = _node(r, True, addresses)
        changed |= mapped
        rest = r.pos
        r.int16()  # error_code
        r.string(True)  # error_message
        r.tagged_fields()
        parts += [key, node, frame[rest : r.pos]]
    return _framed(frame, start, parts, r.pos) if changed else None


def error_response(
    header: RequestHeader,
    topics: TopicPartitions | None,
    code: int,
    keys: list[str] | None = None,
) -> bytes:
    """A response to the request ``header`` describes carrying Kafka error ``code``
    (``topics``: a Produce, Fetch or Metadata request's; ``keys``: a FindCoordinator's)."""
    api_key, version = header.api_key, header.api_version
    flex = is_flexible(api_key, version)
    if api_key == PRODUCE and topics is not None:
        body = _produce_error(topics, version, flex, code)
    elif api_key == FETCH and topics is not None:
        body = _fetch_error(topics, version, flex, code)
    elif api_key == METADATA:
        body = _metadata_error(topics or [], version, flex, code)
    elif api_key == FIND_COORDINATOR:
        body = _find_coordinator_error(keys or [], version, code)
    elif api_key in _GROUP_ERRORS:
        body = _GROUP_ERRORS[api_key](version, flex, code)
    elif api_key == API_VERSIONS:
        # Version 0's body whatever the request's: clients read a failed ApiVersions response
        # as v0 (how a broker answers a version it does not know), and its header is v0 too.
        body = write_int16(code) + write_array_length(0)
    else:
        body = write_int32(0) + write_int16(code)
    head = write_int32(header.correlation_id)
    if response_header_flexible(api_key, version):
        head += b"\x00"
    return write_int32(len(head) + len(body)) + head + body


def _produce_error(topics: TopicPartitions, version: int, flex: bool, code: int) -> bytes:
    tag = b"\x00" if flex else b""
    out = [write_array_length(len(topics), flex)]
    for name, partitions in topics:
        out += [write_string(name, flex), write_array_length(len(partitions), flex)]
        for index in partitions:
            out += [write_int32(index), write_int16(code), write_int64(-1)]  # base_offset
            if version >= 2:
                out.append(write_int64(-1))  # log_append_time_ms
            if version >= 5:
                out.append(write_int64(-1))  # log_start_offset
            if version >= 8:
                out += [write_array_length(0, flex), write_string(None, flex)]
            out.append(tag)
        out.append(tag)
    if version >= 1:
        out.append(write_int32(0))  # throttle_time_ms
    out.append(tag)
    return b"".join(out)


def _fetch_error(topics: TopicPartitions, version: int, flex: bool, code: int) -> bytes:
    tag = b"\x00" if flex else b""
    out: list[bytes] = []
    if version >= 1:
        out.append(write_int32(0))  # throttle_time_ms
    if version >= 7:
        out += [write_int16(0), write_int32(0)]  # error_code, session_id
    out.append(write_array_length(len(topics), flex))
    for name, partitions in topics:
        out += [write_string(name, flex), write_array_length(len(partitions), flex)]
        for index in partitions:
            out += [write_int32(index), write_int16(code), write_int64(-1)]  # high_watermark
            if version >= 4:
                out.append(write_int64(-1))  # last_stable_offset
            if version >= 5:
                out.append(write_int64(-1))  # log_start_offset
            if version >= 4:
                out.append(write_uvarint(0) if flex else write_int32(-1))  # aborted: null
            if version >= 11:
                out.append(write_int32(-1))  # preferred_read_replica
            out += [write_uvarint(0) if flex else write_int32(-1), tag]  # records: null
        out.append(tag)
    out.append(tag)
    return b"".join(out)


_NO_OPERATIONS = -(2**31)  # authorized operations not asked for


def _metadata_error(topics: TopicPartitions, version: int, flex: bool, code: int) -> bytes:
    """No brokers, and each topic asked about with ``code`` (v13 has a top-level code too)."""
    tag = b"\x00" if flex else b""
    out: list[bytes] = []
    if version >= 3:
        out.append(write_int32(0))  # throttle_time_ms
    out.append(write_array_length(0, flex))  # brokers
    if version >= 2:
        out.append(write_string(None, flex))  # cluster_id
    if version >= 1:
        out.append(write_int32(-1))  # controller_id
    out.append(write_array_length(len(topics), flex))
    for name, _ in topics:
        out += [write_int16(code), write_string(name, flex)]
        if version >= 10:
            out.append(bytes(16))  # topic_id
        if version >= 1:
            out.append(b"\x00")  # is_internal
        out.append(write_array_length(0, flex))  # partitions
        if version >= 8:
            out.append(write_int32(_NO_OPERATIONS))
        out.append(tag)
    if 8 <= version <= 10:
        out.append(write_int32(_NO_OPERATIONS))  # cluster_authorized_operations
    if version >= 13:
        out.append(write_int16(code))
    out.append(tag)
    return b"".join(out)


def _find_coordinator_error(keys: list[str], version: int, code: int) -> bytes:
    """No coordinator (node -1, no host, port -1) with ``code``, per key from v4 on."""
    flex = version >= 3
    nobody = write_int32(-1) + write_string("", flex) + write_int32(-1)
    if version == 0:
        return write_int16(code) + nobody
    out = [write_int32(0)]  # throttle_time_ms
    if version < 4:
        out += [write_int16(code), write_string(None, flex), nobody]
        if flex:
            out.append(b"\x00")
        return b"".join(out)
    out.append(write_array_length(len(keys), True))
    for key in keys:
        out += [write_string(key, True), nobody, write_int16(code), write_string(None, True)]
        out.append(b"\x00")
    out.append(b"\x00")
    return b"".join(out)


def _throttle_then_code(version: int, code: int, first_throttled: int = 1) -> list[bytes]:
    head = [write_int32(0)] if version >= first_throttled else []  # throttle_time_ms
    return [*head, write_int16(code)]


def _heartbeat_error(version: int, flex: bool, code: int) -> bytes:
    return b"".join(_throttle_then_code(version, code)) + (b"\x00" if flex else b"")


def _leave_group_error(version: int, flex: bool, code: int) -> bytes:
    out = _throttle_then_code(version, code)
    if version >= 3:
        out.append(write_array_length(0, flex))  # members
    return b"".join(out) + (b"\x00" if flex else b"")


def _sync_group_error(version: int, flex: bool, code: int) -> bytes:
    out = _throttle_then_code(version, code)
    if version >= 5:
        out += [write_string(None, flex), write_string(None, flex)]  # protocol type and name
    out.append(write_uvarint(1) if flex else write_int32(0))  # assignment: empty
    return b"".join(out) + (b"\x00" if flex else b"")


def _join_group_error(version: int, flex: bool, code: int) -> bytes:
    out = _throttle_then_code(version, code, first_throttled=2)
    out.append(write_int32(-1))  # generation_id
    if version >= 7:
        out += [write_string(None, flex), write_string(None, flex)]  # protocol type and name
    else:
        out.append(write_string("", flex))  # protocol_name
    out.append(write_string("", flex))  # leader
    if version >= 9:
        out.append(b"\x00")  # skip_assignment
    out += [write_string("", flex), write_array_length(0, flex)]  # member_id, members
    return b"".join(out) + (b"\x00" if flex else b"")


def _init_producer_id_error(version: int, flex: bool, code: int) -> bytes:
    no_producer = write_int64(-1) + write_int16(-1)  # producer id and epoch
    out = [*_throttle_then_code(version, code, first_throttled=0), no_producer]
    if version >= 6:
        out.append(no_producer)  # the ongoing transaction's producer id and epoch
    return b"".join(out) + (b"\x00" if flex else b"")


#: Error bodies of the group and producer APIs whose error is one top-level code.
_GROUP_ERRORS = {
    HEARTBEAT: _heartbeat_error,
    LEAVE_GROUP: _leave_group_error,
    SYNC_GROUP: _sync_group_error,
    JOIN_GROUP: _join_group_error,
    INIT_PRODUCER_ID: _init_producer_id_error,
}
