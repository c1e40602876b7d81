"""The span exporter: OTLP bytes the official classes read back, batches sent from the loop,
failures counted (``metamesh.runtime.otlp``).

The encoder writes the span's framing by tag; every field is checked here by decoding with
opentelemetry-proto's own ``ExportTraceServiceRequest``, and the exporter is run against the
official TraceService (gRPC) and OTLP/HTTP receiver of ``tests/support/otlp.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from metamesh import __version__
from metamesh.proxy.tracing import SpanRecord
from metamesh.runtime import otlp
from metamesh.runtime.tracing import TracingSettings
from tests.support.otlp import OtlpReceiver

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
ATTRS: dict[str, str | int] = {
    "rpc.system": "dubbo",
    "rpc.method": "sayHello",
    "metamesh.response_code": 0,
    "server.port": 20880,
    "metamesh.route": "r\u00e9",  # non-ASCII survives
}


def record(span_id: int, parent: int = 0, **kw: object) -> SpanRecord:
    fields: dict[str, object] = dict(
        trace_id=TRACE,
        span_id=span_id,
        parent_id=parent,
        server=False,
        name="demo.Greeter/sayHello",
        start=10.5,
        end=10.75,
        error=False,
        attributes=ATTRS,
    )
    fields.update(kw)
    return SpanRecord(**fields)  # type: ignore[arg-type]


def encode(enc: otlp.OtlpEncoder, records: list[SpanRecord]) -> bytes:
    """The exporter's way: each span framed as it ends, then one request of them."""
    return enc.request([enc.framed(r) for r in records])


def decode(payload: bytes) -> ExportTraceServiceRequest:
    request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(payload)
    return request


def attributes(kvs: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in kvs:  # type: ignore[attr-defined]
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


def test_every_field_reads_back_with_the_official_classes() -> None:
    enc = otlp.OtlpEncoder("reviews-v1", offset_ns=1_000)
    child = record(0x00F067AA0BA902B7, parent=0x1122334455667788, server=True)
    root = record(0x0102030405060708, error=True, name="svc")
    request = decode(encode(enc, [child, root]))
    (rs,) = request.resource_spans
    assert attributes(rs.resource.attributes) == {
        "service.name": "reviews-v1",
        "service.version": __version__,
        "telemetry.sdk.name": "metamesh",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("metamesh", __version__)
    a, b = ss.spans
    assert a.trace_id == TRACE.to_bytes(16, "big")
    assert a.span_id == bytes.fromhex("00f067aa0ba902b7")
    assert a.parent_span_id == bytes.fromhex("1122334455667788")
    assert a.kind == Span.SPAN_KIND_SERVER and b.kind == Span.SPAN_KIND_CLIENT
    assert a.name == "demo.Greeter/sayHello" and b.name == "svc"
    assert a.start_time_unix_nano == 10_500_001_000
    assert a.end_time_unix_nano == 10_750_001_000
    assert a.status.code == Status.STATUS_CODE_OK
    assert b.status.code == Status.STATUS_CODE_ERROR
    assert attributes(a.attributes) == ATTRS
    assert a.flags == 0x301  # sampled, and "the parent is remote" known and true
    assert b.flags == 0x101 and b.parent_span_id == b""
    assert not a.trace_state and not a.events and not a.links


def test_a_long_name_and_many_distinct_attributes() -> None:
    enc = otlp.OtlpEncoder("s", 0)
    name = "x" * 300  # a two-byte length
    records = [record(i + 1, name=name, attributes={"k": f"v{i}", "n": i}) for i in range(300)]
    spans = decode(encode(enc, records)).resource_spans[0].scope_spans[0].spans
    assert [attributes(s.attributes) for s in spans] == [{"k": f"v{i}", "n": i} for i in range(300)]
    assert {s.name for s in spans} == {name}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_exporter_delivers_to_a_real_receiver(protocol: str) -> None:
    receiver = OtlpReceiver()
    try:
        endpoint = receiver.grpc_address if protocol == "grpc" else receiver.http_address

        async def run() -> otlp.SpanExporter:
            exporter = otlp.SpanExporter(TracingSettings(endpoint, protocol), time.monotonic())
            for i in range(1200):  # more than two batches
                exporter.export(record(i + 1))
            await exporter.close()
            return exporter

        exporter = asyncio.run(run())
        spans = receiver.wait_for(1200)
        assert exporter.exported == 1200 and exporter.dropped == 0
        assert sorted(int.from_bytes(s.span_id, "big") for _, s in spans) == list(range(1, 1201))
        assert {name for name, _ in spans} == {"metamesh"}
    finally:
        receiver.stop()


def test_spans_go_out_on_the_timer_without_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "FLUSH_SECONDS", 0.05)
    receiver = OtlpReceiver()
    try:

        async def run() -> otlp.SpanExporter:
            exporter = otlp.SpanExporter(
                TracingSettings(receiver.grpc_address, "grpc"), time.monotonic()
            )
            for i in range(3):  # fewer than a batch: only the timer sends them
                exporter.export(record(i + 1))
            deadline = time.monotonic() + 10
            while exporter.exported < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await exporter.sender.close()
            return exporter

        exporter = asyncio.run(run())
        assert exporter.exported == 3 and not exporter.pending
        assert len(receiver.wait_for(3)) == 3
    finally:
        receiver.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_absent_receiver_drops_and_counts(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> otlp.SpanExporter:
        exporter = otlp.SpanExporter(
            TracingSettings(f"127.0.0.1:{closed_port()}", protocol), time.monotonic()
        )
        for i in range(10):
            exporter.export(record(i + 1))
        await exporter.flush()
        assert exporter.exported == 0 and exporter.dropped == 10
        await exporter.close()
        return exporter

    asyncio.run(run())
    assert "10 spans not exported" in caplog.text


def test_a_full_queue_drops_on_the_loop_without_blocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(otlp, "MAX_PENDING", 5)
    monkeypatch.setattr(otlp, "FLUSH_SECONDS", 60.0)  # the timer waits: nothing is sent

    async def run() -> None:
        exporter = otlp.SpanExporter(
            TracingSettings(f"127.0.0.1:{closed_port()}", "grpc"), time.monotonic()
        )
        for i in range(8):
            exporter.export(record(i + 1))
        assert len(exporter.pending) == 5 and exporter.dropped == 3
        await exporter.close()

    asyncio.run(run())


def test_a_span_the_encoder_cannot_write_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = OtlpReceiver()
    try:

        async def run() -> otlp.SpanExporter:
            exporter = otlp.SpanExporter(
                TracingSettings(receiver.grpc_address, "grpc"), time.monotonic()
            )
            exporter.export(record(-1))  # not an unsigned 64-bit id
            exporter.export(record(2))
            assert exporter.dropped == 0 and len(exporter.pending) == 2  # queued as they are
            await exporter.close()
            return exporter

        exporter = asyncio.run(run())
        assert exporter.dropped == 1 and exporter.exported == 1  # the rest of the batch went
        assert [int.from_bytes(s.span_id, "big") for _, s in receiver.wait_for(1)] == [2]
    finally:
        receiver.stop()
    assert "not encoded, dropped" in caplog.text


def test_shared_and_equal_attribute_tuples_encode_the_same() -> None:
    """The encoder keeps each attribute tuple's bytes by identity (the core shares one tuple
    between many spans); an equal tuple, and a tuple made later with the same id, read right."""
    enc = otlp.OtlpEncoder("s", 0)
    shared = tuple(ATTRS.items())
    first = [record(i + 1, attributes=shared) for i in range(3)]
    again = record(9, attributes=tuple(ATTRS.items()))  # equal, not the same object
    other = record(10, attributes=(("k", "v"),))
    spans = decode(encode(enc, [*first, again, other])).resource_spans[0].scope_spans[0].spans
    assert [attributes(s.attributes) for s in spans] == [ATTRS] * 4 + [{"k": "v"}]
    for n in range(50):  # fresh tuples, freed at once: their ids are reused
        spans = decode(encode(enc, [record(1, attributes=(("n", n),))]))
        got = spans.resource_spans[0].scope_spans[0].spans[0]
        assert attributes(got.attributes) == {"n": n}


def test_full_batches_go_at_once_and_the_rest_waits_for_the_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real OTLP/HTTP receiver: a full batch is sent as it fills, spans that end during the
    send go out as the next full batch, and a remainder waits for the timer instead of a
    small request of its own."""
    monkeypatch.setattr(otlp, "BATCH", 4)
    monkeypatch.setattr(otlp, "FLUSH_SECONDS", 0.3)
    receiver = OtlpReceiver()
    try:

        async def run() -> tuple[list[int], list[int]]:
            exporter = otlp.SpanExporter(
                TracingSettings(receiver.http_address, "http"), time.monotonic()
            )
            sizes: list[int] = []
            send = exporter.sender.send

            async def counted(payload: bytes) -> None:
                sizes.append(len(decode(payload).resource_spans[0].scope_spans[0].spans))
                await send(payload)

            exporter.sender.send = counted  # type: ignore[method-assign]
            for i in range(4):  # a full batch: its send starts
                exporter.export(record(i + 1))
            await asyncio.sleep(0)
            for i in range(4, 10):  # during that send: one more full batch and 2 left
                exporter.export(record(i + 1))
            deadline = time.monotonic() + 10
            while exporter.exported < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            before_timer = list(sizes)
            while exporter.exported < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await exporter.close()
            return before_timer, sizes

        before_timer, sizes = asyncio.run(run())
        assert before_timer == [4, 4]
        assert sizes == [4, 4, 2]  # the remainder, on the timer
        assert len(receiver.wait_for(10)) == 10
    finally:
        receiver.stop()
