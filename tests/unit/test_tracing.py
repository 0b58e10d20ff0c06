"""services/edge/tracing.py on its own: off unless configured; on, it continues the client's W3C trace
and hands the engine a traceparent under the request's span. (The exported spans, from the edge
and from vLLM, are checked end to end in tests/live/one_engine/test_classes_and_traces.py.)"""

from __future__ import annotations

import http.server
import threading

from services import runtime
from services.core.catalog import TracingOptions
from services.edge.tracing import ENDPOINT_ENV, Tracing, traces_endpoint

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_off_unless_the_catalog_or_the_environment_names_an_endpoint(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    tracing = Tracing(TracingOptions())
    span = tracing.start_request({"traceparent": PARENT}, "chat")
    assert not tracing.enabled and not span.is_recording() and tracing.headers_for(span) is None
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:4318/v1/traces")
    assert traces_endpoint(TracingOptions()) == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint(TracingOptions(otlp_traces_endpoint="http://c:4318/v1/traces")) == "http://c:4318/v1/traces"


class _Accepting(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # http.server's name for the handler
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_engine_gets_a_traceparent_under_the_requests_span_in_the_clients_trace():
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", runtime.free_ports(1)[0]), _Accepting)  # takes the export
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    tracing = Tracing(TracingOptions(otlp_traces_endpoint=f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"))
    span = tracing.start_request({"traceparent": PARENT}, "chat")
    context = span.get_span_context()
    assert format(context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = tracing.headers_for(span)
    assert headers == {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-01"}
    with tracing.phase(span, "admission") as phase:
        assert phase.get_span_context().trace_id == context.trace_id and phase.parent.span_id == context.span_id
    tracing.end(span, 200)
    assert not span.is_recording()
