"""An OTLP trace sink for the benchmarks: receives spans, counts them, keeps nothing.

``python benchmarks/otlp_sink.py --count-file F`` serves the official OpenTelemetry
``TraceService/Export`` (gRPC, the ``opentelemetry-proto`` stubs) on a fresh 127.0.0.1 port
(with ``--http``: OTLP/HTTP, ``POST /v1/traces`` with a protobuf body), prints ``PORT <n>``
and writes the number of spans received so far to ``F`` once a second (and on SIGTERM), so a
run can check that a traced target really exported. It runs as its own process so its CPU is
never counted as the measured proxy's.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans of every Export request."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


def http_server(sink: Sink) -> ThreadingHTTPServer:
    """OTLP/HTTP on a fresh port, served by a thread of its own."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            sink.Export(request, None)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count-file", required=True)
    p.add_argument("--http", action="store_true", help="serve OTLP/HTTP instead of gRPC")
    args = p.parse_args(argv)
    sink = Sink()
    if args.http:
        web = http_server(sink)
        port = web.server_address[1]
    else:
        server = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    print(f"PORT {port}", flush=True)
    out = Path(args.count_file)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(1.0):
        out.write_text(f"{sink.spans}\n")
    if args.http:
        web.shutdown()
    else:
        server.stop(0)
    out.write_text(f"{sink.spans}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
