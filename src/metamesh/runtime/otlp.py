"""The OpenTelemetry SDK side of tracing: core span records out over OTLP (gRPC or HTTP).

:class:`SpanExporter` turns each ``SpanRecord`` of the core (:mod:`metamesh.proxy.tracing`)
into the SDK's ``ReadableSpan``, keeping the ids the core chose (so the context written into the
forwarded request names this very span), and gives it to a ``BatchSpanProcessor``, whose own
thread batches and sends them with the SDK's OTLP exporter: ``grpc`` to ``HOST:PORT``
(``opentelemetry.proto.collector.trace.v1.TraceService/Export``) or ``http`` to
``http://HOST:PORT/v1/traces``. The proxy loop only builds the span object and queues it.
Imported only when tracing is on (the SDK is not loaded otherwise).

Times: the core's clock is the loop's time, the monotonic clock (asyncio's and uvloop's); the
exporter maps it to wall-clock nanoseconds with the offset taken when it is created.
"""

from __future__ import annotations

import time
from typing import Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter as OtelExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from metamesh import __version__
from metamesh.proxy.tracing import SpanRecord
from metamesh.runtime.tracing import PROTOCOLS, TracingSettings

#: a message of OTLP 1.x that the older copy of ``opentelemetry/proto`` bundled by xds-protos lacks
_NEWER_MESSAGE: Final = "InstrumentationScope"


def check_otlp_protos() -> None:
    """Raise :class:`TracingUnavailable` when ``opentelemetry.proto`` is not opentelemetry-proto's.

    xds-protos ships its own, older copy of the OpenTelemetry protos under the same package path,
    so whichever of the two pip installs last owns the files; when xds-protos wins, the SDK's OTLP
    exporters fail to import. Said here, once, with the command that repairs the environment."""
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


def otlp_exporter(settings: TracingSettings) -> OtelExporter:
    """The SDK's OTLP exporter for ``settings`` (plaintext: the collector is local)."""
    check_otlp_protos()
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.endpoint, insecure=True, timeout=5)
    if settings.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=f"http://{settings.endpoint}/v1/traces", timeout=5)
    raise ValueError(f"tracing protocol {settings.protocol!r}: one of {', '.join(PROTOCOLS)}")


class SpanExporter:
    """Turns core span records into SDK spans and queues them for export."""

    def __init__(self, settings: TracingSettings, loop_time: float) -> None:
        self.resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self.processor = BatchSpanProcessor(otlp_exporter(settings), schedule_delay_millis=500)
        #: wall-clock ns = loop seconds * 1e9 + offset
        self.offset_ns = time.time_ns() - int(loop_time * 1e9)
        self.exported = 0

    def export(self, record: SpanRecord) -> None:
        context = SpanContext(record.trace_id, record.span_id, False, TraceFlags(1))
        parent = (
            SpanContext(record.trace_id, record.parent_id, True, TraceFlags(1))
            if record.parent_id
            else None
        )
        span = ReadableSpan(
            name=record.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=dict(record.attributes),
            kind=SpanKind.SERVER if record.server else SpanKind.CLIENT,
            status=Status(StatusCode.ERROR if record.error else StatusCode.OK),
            start_time=int(record.start * 1e9) + self.offset_ns,
            end_time=int(record.end * 1e9) + self.offset_ns,
        )
        self.processor.on_end(span)
        self.exported += 1

    def close(self) -> None:
        """Send what is queued and stop the processor's thread."""
        self.processor.shutdown()  # type: ignore[no-untyped-call]
