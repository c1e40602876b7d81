"""An OTLP trace receiver for tests: the official OpenTelemetry protobuf service, on loopback.

gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` served by grpcio with the
``opentelemetry-proto`` stubs. HTTP: ``POST /v1/traces`` with a protobuf
``ExportTraceServiceRequest`` body (OTLP/HTTP). Both keep every span with its resource's
``service.name``."""

from __future__ import annotations

import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """``grpc_address`` and ``http_address`` (HOST:PORT) receive spans into ``spans``."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self._lock = threading.Lock()
        self._grpc = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self.grpc_address = f"127.0.0.1:{port}"
        self._grpc.start()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_address = f"127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def Export(self, request: Any, context: Any) -> Any:
        self._keep(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def _keep(self, request: Any) -> None:
        with self._lock:
            for rs in request.resource_spans:
                name = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    self.spans.extend((name, s) for s in ss.spans)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[tuple[str, Span]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            assert time.monotonic() < deadline, f"{len(self.spans)} spans, {n} expected"
            time.sleep(0.05)

    def stop(self) -> None:
        self._grpc.stop(0)
        self._http.shutdown()
        self._http.server_close()
