"""Tracing settings of a proxy, and turning tracing on (``--tracing-*`` options).

The sans-IO core decides, ids and times its spans (:mod:`metamesh.proxy.tracing`) and hands
each finished one over in the exporter's queue (``CoreState.spans``, with a ``SPAN`` action when
the exporter has something to do); the runtime exports them with the
OTLP exporter (:mod:`metamesh.runtime.otlp`, imported only when tracing is on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from metamesh.proxy.telemetry import UNKNOWN
from metamesh.proxy.tracing import Tracer, TracingConfig

if TYPE_CHECKING:
    from metamesh.runtime.otlp import SpanExporter
    from metamesh.runtime.server import ProxyServer

PROTOCOLS: Final = ("grpc", "http")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``--tracing-endpoint HOST:PORT --tracing-protocol grpc|http --tracing-sample-rate R
    [--tracing-errors]``; ``service_name`` is the proxy's workload."""

    endpoint: str
    #: OTLP/HTTP by default, as OpenTelemetry's exporters (``http/protobuf``); it is also the
    #: cheaper one here: it runs on the proxy loop, where grpcio wakes threads of its own
    #: (docs/telemetry.md, "Paired runs")
    protocol: str = "http"
    sample_rate: float = 0.01
    errors: bool = False
    service_name: str = "metamesh"

    @property
    def config(self) -> TracingConfig:
        return TracingConfig(self.sample_rate, self.errors)


def enable_tracing(server: ProxyServer, settings: TracingSettings) -> SpanExporter:
    """Trace ``server``'s requests: a tracer in its core, an exporter in its runtime. The
    service name is the proxy's workload when ``settings`` names none."""
    from metamesh.runtime.otlp import SpanExporter

    name = settings.service_name
    local = server.core.stats.local.name
    if name == "metamesh" and local != UNKNOWN:
        name = local
    exporter = SpanExporter(
        TracingSettings(
            settings.endpoint, settings.protocol, settings.sample_rate, settings.errors, name
        ),
        time.monotonic(),
    )
    server.core.tracer = Tracer(settings.config, server.core.rng)
    server.core.spans = exporter.pending  # the core queues its spans for the exporter
    server.core.span_batch = exporter.batch
    server.tracing = exporter
    return exporter
