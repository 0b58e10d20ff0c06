"""An OTLP/HTTP trace receiver for the tests: OpenTelemetry's own protobuf messages, decoded as a
collector would (no collector package runs here)."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver(http.server.ThreadingHTTPServer):
    spans: list[ExportedSpan]


class OTLPHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # http.server's name for the handler
        exported = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in exported.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.spans.append(
                        ExportedSpan(  # type: ignore[attr-defined]
                            attributes.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def spans_of(receiver: Receiver, trace_id: str, names: set[str], timeout_s: float = 30) -> list[ExportedSpan]:
    """The trace's spans once every name in `names` has arrived (exporters send in batches)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = [span for span in receiver.spans if span.trace_id == trace_id]
        if names <= {span.name for span in spans}:
            return spans
        time.sleep(0.5)
    raise AssertionError(
        f"trace {trace_id}: {sorted({s.name for s in receiver.spans if s.trace_id == trace_id})}"
        f" arrived, wanted {sorted(names)}"
    )


def start_receiver(port: int) -> Receiver:
    server = Receiver(("127.0.0.1", port), OTLPHandler)
    server.spans = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
