"""Spans out over OTLP (gRPC or HTTP): core span records batched and encoded on the proxy loop.

:class:`SpanExporter` keeps the queue of finished ``SpanRecord`` objects, into which the core
(:mod:`metamesh.proxy.tracing`) appends each span as it ends, as it is, on the proxy loop (a
``SPAN`` action only when the queue starts to fill or a batch waits). Each full batch of
:data:`BATCH` spans, and what is left every :data:`FLUSH_SECONDS`, one task on the same loop
serializes (:class:`OtlpEncoder`, a few microseconds a span: attributes are serialized once
per distinct tuple of them, which the core shares between the spans of a route, endpoint and
outcome), wraps into one OTLP
``ExportTraceServiceRequest`` (the OpenTelemetry protocol's own messages,
``opentelemetry-proto``; the ids the core chose are kept, so the context written into the
forwarded request names this very span) and sends it: ``grpc`` with the official
``TraceService`` stub over ``grpc.aio`` to ``HOST:PORT``, or ``http`` as a protobuf
``POST /v1/traces`` to ``http://HOST:PORT`` (OTLP/HTTP, with ``aiohttp``'s client on the loop).

Why on the loop and not in a thread of its own, as this module did first: a thread that
encodes and sends must take the interpreter lock from a busy loop, and measured at 116,000
requests/s with 1% sampled (Dubbo c4k32, ``docs/telemetry.md``) that thread spent about 25 us
per span and woke thousands of times per second, against 3-4 us per span for the encoding
itself. Why the records wait unencoded, and are encoded together when a batch goes: at 1%
sampling a span ends once in a hundred requests, with the encoder's code and caches cold by
then; encoded as it ended, a span cost about 25 us of CPU on the loop (``docs/telemetry.md``),
encoded in a batch about 3-5 us. Why not the OpenTelemetry SDK's span processor and exporters,
used before that: building the SDK's ``ReadableSpan`` and queueing it cost about 29 us per span
on the loop, and the SDK's encoder about 100 us more per span (``encode_spans`` walks every
attribute in Python).

Failures never reach the request path: a batch the receiver refuses or cannot take (not
listening, timeout, an HTTP error) is dropped, counted in :attr:`SpanExporter.dropped`, and
logged at most once per :data:`LOG_EVERY` seconds; so is a span arriving while
:data:`MAX_PENDING` wait (a receiver slower than the traffic), and a record the encoder cannot
write (the rest of its batch goes). One batch is in flight at a time.
Spans are best-effort, as in every tracer.

Times: the core's clock is the loop's time, the monotonic clock (asyncio's and uvloop's); the
exporter maps it to wall-clock nanoseconds with the offset taken when it is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from metamesh import __version__
from metamesh.proxy.tracing import Attributes, SpanRecord
from metamesh.runtime.tracing import PROTOCOLS, TracingSettings

if TYPE_CHECKING:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

log = logging.getLogger("metamesh.tracing")

#: a message of OTLP 1.x that the older copy of ``opentelemetry/proto`` bundled by xds-protos lacks
_NEWER_MESSAGE: Final = "InstrumentationScope"
FLUSH_SECONDS: Final = 0.5
BATCH: Final = 512
MAX_PENDING: Final = 8192
LOG_EVERY: Final = 10.0
TIMEOUT_SECONDS: Final = 5.0
#: Serialized attributes kept for reuse, (key, value) -> bytes; cleared when it grows past this.
_ATTRIBUTE_CACHE: Final = 4096
# Span.flags (OTLP 1.1): the W3C sampled bit, and "whether the parent is remote" is known.
_SAMPLED: Final = 0x01
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200


def check_otlp_protos() -> None:
    """Raise :class:`TracingUnavailable` when ``opentelemetry.proto`` is not opentelemetry-proto's.

    xds-protos ships its own, older copy of the OpenTelemetry protos under the same package path,
    so whichever of the two pip installs last owns the files; when xds-protos wins, the OTLP
    messages this module builds are missing. Said here, once, with the command that repairs the
    environment."""
    from opentelemetry.proto.common.v1 import common_pb2

    if hasattr(common_pb2, _NEWER_MESSAGE):
        return
    try:
        from importlib.metadata import version

        pin = f"=={version('opentelemetry-proto')}"
    except Exception:  # any failure: print the command without a pin
        pin = ""
    raise TracingUnavailable(
        "tracing: the installed opentelemetry/proto modules are xds-protos' older copy, which "
        "overwrote opentelemetry-proto's (both packages own those files); repair with: "
        f"pip install --force-reinstall --no-deps 'opentelemetry-proto{pin}'"
    )


class TracingUnavailable(RuntimeError):
    """The environment cannot export spans (see :func:`check_otlp_protos`)."""


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (one byte: field number << 3 | 2), length, payload."""
    return bytes((tag,)) + _varint(len(payload)) + payload


# Field tags (number << 3 | wire type) of the OTLP messages written here; the numbers are
# opentelemetry-proto's (trace/v1/trace.proto), checked against its classes by the tests.
_T_TRACE_ID: Final = b"\x0a\x10"  # Span.trace_id = 1, 16 bytes
_T_SPAN_ID: Final = b"\x12\x08"  # Span.span_id = 2, 8 bytes
_T_PARENT_ID: Final = b"\x22\x08"  # Span.parent_span_id = 4, 8 bytes
_T_FLAGS: Final = b"\x85\x01"  # Span.flags = 16, fixed32
_T_NAME: Final = 0x2A  # Span.name = 5
_T_KIND_SERVER: Final = b"\x30\x02"  # Span.kind = 6: SPAN_KIND_SERVER
_T_KIND_CLIENT: Final = b"\x30\x03"  # SPAN_KIND_CLIENT
_T_START: Final = b"\x39"  # Span.start_time_unix_nano = 7, fixed64
_T_END: Final = b"\x41"  # Span.end_time_unix_nano = 8, fixed64
_T_ATTRIBUTE: Final = 0x4A  # Span.attributes = 9 (also Resource.attributes = 1: 0x0A)
_STATUS_OK: Final = b"\x7a\x02\x18\x01"  # Span.status = 15 {code = 3: STATUS_CODE_OK}
_STATUS_ERROR: Final = b"\x7a\x02\x18\x02"  # ... STATUS_CODE_ERROR
_T_SPANS: Final = 0x12  # ScopeSpans.spans = 2
_T_SCOPE: Final = 0x0A  # ScopeSpans.scope = 1
_T_RESOURCE: Final = 0x0A  # ResourceSpans.resource = 1
_T_SCOPE_SPANS: Final = 0x12  # ResourceSpans.scope_spans = 2
_T_RESOURCE_SPANS: Final = 0x0A  # ExportTraceServiceRequest.resource_spans = 1


class OtlpEncoder:
    """Span records -> one serialized OTLP ``ExportTraceServiceRequest``.

    The fixed parts (resource, scope) and every distinct attribute key/value are serialized
    once with the official opentelemetry-proto classes and kept as bytes; a span is then its
    ids, name, kind, times and status written by tag (the few wire-format rules above) plus
    the kept attribute bytes. Building each span as a protobuf object instead cost about
    25 us per span (the attribute messages are copied into every span), this about 3 us."""

    def __init__(self, service_name: str, offset_ns: int) -> None:
        check_otlp_protos()
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource

        self.offset_ns = offset_ns
        resource = Resource(
            attributes=[
                self._key_value("service.name", service_name),
                self._key_value("service.version", __version__),
                self._key_value("telemetry.sdk.name", "metamesh"),
                self._key_value("telemetry.sdk.language", "python"),
                self._key_value("telemetry.sdk.version", __version__),
            ]
        )
        self._resource = _field(_T_RESOURCE, resource.SerializeToString())
        scope = InstrumentationScope(name="metamesh", version=__version__)
        self._scope = _field(_T_SCOPE, scope.SerializeToString())
        self._attributes: dict[tuple[str, str | int], bytes] = {}
        #: id(attributes tuple) -> (the tuple, kept so its id is not reused; its bytes)
        self._blocks: dict[int, tuple[Attributes, bytes]] = {}

    @staticmethod
    def _key_value(key: str, value: str | int | bool) -> KeyValue:
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

        if isinstance(value, bool):
            return KeyValue(key=key, value=AnyValue(bool_value=value))
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    def _attribute(self, key: str, value: str | int) -> bytes:
        """The serialized ``Span.attributes`` entry of one key and value (kept)."""
        cache = self._attributes
        found = cache.get((key, value))
        if found is None:
            if len(cache) >= _ATTRIBUTE_CACHE:
                cache.clear()
            kv = self._key_value(key, value).SerializeToString()
            found = cache[(key, value)] = _field(_T_ATTRIBUTE, kv)
        return found

    def span(self, r: SpanRecord) -> bytes:
        """One serialized ``Span``."""
        offset = self.offset_ns
        parent = r.parent_id
        name = r.name.encode()
        parts = [
            _T_TRACE_ID,
            r.trace_id.to_bytes(16, "big"),
            _T_SPAN_ID,
            r.span_id.to_bytes(8, "big"),
        ]
        if parent:
            parts += (_T_PARENT_ID, parent.to_bytes(8, "big"))
        flags = _SAMPLED | _HAS_IS_REMOTE | (_IS_REMOTE if parent else 0)
        parts += (
            _T_FLAGS,
            flags.to_bytes(4, "little"),
            bytes((_T_NAME,)),
            _varint(len(name)),
            name,
            _T_KIND_SERVER if r.server else _T_KIND_CLIENT,
            _T_START,
            (int(r.start * 1e9) + offset).to_bytes(8, "little"),
            _T_END,
            (int(r.end * 1e9) + offset).to_bytes(8, "little"),
        )
        # The whole set repeats too, as the very same tuple (the core shares one between the
        # spans of a route, endpoint and outcome): found by identity; another tuple is joined
        # from its pairs' kept bytes.
        items = r.attributes
        kept = self._blocks.get(id(items))
        if kept is not None and kept[0] is items:  # held in kept: its id is not reused
            block = kept[1]
        else:
            block = b"".join(self._attribute(k, v) for k, v in items)
            if len(self._blocks) >= _ATTRIBUTE_CACHE:
                self._blocks.clear()
            self._blocks[id(items)] = (items, block)
        parts += (block, _STATUS_ERROR if r.error else _STATUS_OK)
        return b"".join(parts)

    def framed(self, r: SpanRecord) -> bytes:
        """One span as an entry of ``ScopeSpans.spans``, ready for :meth:`request`."""
        return _field(_T_SPANS, self.span(r))

    def request(self, framed: list[bytes]) -> bytes:
        """The ``ExportTraceServiceRequest`` of spans from :meth:`framed`: one resource, one
        scope."""
        scope_spans = _field(_T_SCOPE_SPANS, self._scope + b"".join(framed))
        return _field(_T_RESOURCE_SPANS, self._resource + scope_spans)


class _GrpcSender:
    """``TraceService/Export`` with the official stub over one plaintext ``grpc.aio`` channel
    (the receiver is a local collector), made on the loop at the first send."""

    def __init__(self, endpoint: str) -> None:
        import grpc  # noqa: F401  (imported now, at start, not by the first span)

        self._endpoint = endpoint
        self._channel: Any = None
        self._export: Any = None

    async def send(self, payload: bytes) -> None:
        if self._channel is None:
            import grpc
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            self._channel = grpc.aio.insecure_channel(self._endpoint)
            self._export = self._channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=None,  # the request is already serialized
                response_deserializer=ExportTraceServiceResponse.FromString,
            )
        await self._export(payload, timeout=TIMEOUT_SECONDS)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class _HttpSender:
    """OTLP/HTTP: ``POST /v1/traces`` with a protobuf body, through ``aiohttp``'s client on the
    proxy loop itself (one kept-alive connection, made at the first send): no thread, so no
    other thread to wake nor to take the interpreter lock from the loop."""

    def __init__(self, endpoint: str) -> None:
        # imported now, at start: importing aiohttp takes ~90 ms of CPU, which at the first
        # span would stall the proxy loop and every request on it
        import aiohttp  # noqa: F401

        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        self._url = f"http://{f'[{host}]' if ':' in host else host}:{int(port)}/v1/traces"
        self._session: Any = None

    async def send(self, payload: bytes) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            )
        for attempt in (1, 2):  # a kept-alive connection the receiver closed: once more
            try:
                async with self._session.post(
                    self._url, data=payload, headers={"Content-Type": "application/x-protobuf"}
                ) as response:
                    await response.read()
                    if response.status // 100 != 2:
                        raise OSError(f"HTTP {response.status} {response.reason}")
                    return
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:
                    raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SpanExporter:
    """Queues each span on the loop as it ends; one task on the loop encodes and sends them in
    batches.

    :meth:`export` is called on the proxy loop; :meth:`flush` and :meth:`close` are coroutines
    of that loop."""

    def __init__(self, settings: TracingSettings, loop_time: float) -> None:
        if settings.protocol not in PROTOCOLS:
            raise ValueError(
                f"tracing protocol {settings.protocol!r}: one of {', '.join(PROTOCOLS)}"
            )
        #: wall-clock ns = loop seconds * 1e9 + offset
        self.offset_ns = time.time_ns() - int(loop_time * 1e9)
        self.encoder = OtlpEncoder(settings.service_name, self.offset_ns)
        self.endpoint = settings.endpoint
        self.sender: _GrpcSender | _HttpSender = (
            _GrpcSender(settings.endpoint)
            if settings.protocol == "grpc"
            else _HttpSender(settings.endpoint)
        )
        #: finished spans waiting to be encoded and sent (the proxy core appends to this list
        #: itself: see :meth:`arrived`)
        self.pending: list[SpanRecord] = []
        #: the batch size, which the core reads to know when to call :meth:`arrived`
        self.batch = BATCH
        #: spans handed to the receiver, and spans lost (queue full, not encodable, or a batch
        #: refused)
        self.exported = 0
        self.dropped = 0
        self._last_log = -LOG_EVERY
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        #: the timer or a flush asked for everything waiting, not only full batches
        self._due = False

    def export(self, record: SpanRecord) -> None:
        """Queue one finished span (on the proxy loop)."""
        self.pending.append(record)
        self.arrived()

    def arrived(self) -> None:
        """Spans were added to :attr:`pending` (by :meth:`export`, or by the proxy core, which
        appends to this very list and calls this when it goes from empty to one span and for
        each span once a batch waits): arm the timer, send a full batch, drop what is over
        :data:`MAX_PENDING`."""
        pending = self.pending
        n = len(pending)
        if n > MAX_PENDING:
            over = n - MAX_PENDING
            del pending[MAX_PENDING:]
            self.dropped += over
            self._warn("tracing: %d spans waiting, %d dropped (receiver too slow?)", n, over)
            n = MAX_PENDING
        if n >= BATCH:
            self._start()
        elif n:
            self._arm()

    def _arm(self) -> None:
        """Send what waits within :data:`FLUSH_SECONDS`, unless the timer is already set."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._kick)

    def _kick(self) -> None:
        """The timer, or a flush: send everything that waits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = True
        self._start()

    def _start(self) -> None:
        """Start sending, unless a send is already running (it goes on while there is work)."""
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send_pending())

    def _encode(self, records: list[SpanRecord]) -> list[bytes]:
        """The records' framed spans; a record the encoder cannot write is dropped, counted
        and logged, never raised."""
        framed = self.encoder.framed
        out: list[bytes] = []
        for record in records:
            try:
                out.append(framed(record))
            except Exception as e:  # lost, never the request's nor the batch's
                self.dropped += 1
                self._warn("tracing: span %r not encoded, dropped: %.200r", record.name, e)
        return out

    async def _send_pending(self) -> None:
        """Send what waits: every full batch, and the rest when the timer or a flush asked
        (``_due``). Spans that end during a send and make no full batch wait for the timer
        rather than go in a small request of their own: a request costs the loop about 0.4 ms
        of aiohttp's code (measured in a Dubbo c4k32 run: ~300 us to send, ~80 us for the
        answer), so a batch of 440 spans pays 0.9 us per span, one of 200 twice that."""
        pending = self.pending
        while pending and (self._due or len(pending) >= BATCH):
            if len(pending) <= BATCH:
                self._due = False
            part = self._encode(pending[:BATCH])
            del pending[:BATCH]
            if not part:
                continue
            try:
                await self.sender.send(self.encoder.request(part))
            except asyncio.CancelledError:
                self.dropped += len(part)
                raise
            except Exception as e:  # any failure of the receiver: drop
                self.dropped += len(part)
                self._warn(
                    "tracing: %d spans not exported to %s: %.200r", len(part), self.endpoint, e
                )
            else:
                self.exported += len(part)
        if pending:
            self._arm()

    async def flush(self) -> None:
        """Send every span queued so far, now, and return once the receiver has them (or
        they were dropped)."""
        while self.pending or (self._sending is not None and not self._sending.done()):
            self._kick()
            task = self._sending
            if task is not None:
                await task

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning(message, *args)

    async def close(self) -> None:
        """Send what is queued, then close the connection to the receiver."""
        await self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.sender.close()
