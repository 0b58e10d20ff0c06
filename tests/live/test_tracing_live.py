"""Request traces end to end (issue 19): an instance of the embedded model with the catalog's
`tracing.otlp_traces_endpoint` pointing at an OTLP/HTTP receiver in this test (OpenTelemetry's own
protobuf messages, decoded as a collector would: no collector package runs here), called with the
`openai` client. One request gives one trace that holds the edge's spans and vLLM's engine span,
under the client's own `traceparent` when it sends one."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from services import runtime
from testkit.serving import ServerProcess, catalog_variant, serving

pytestmark = pytest.mark.live
MODEL = "smollm2-135m-instruct"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


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


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", runtime.free_ports(1)[0]), OTLPHandler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced_server(receiver: Receiver) -> Iterator[ServerProcess]:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"

    def traced(catalog: dict) -> None:
        catalog["tracing"] = {"otlp_traces_endpoint": endpoint}

    with serving(catalog_variant("cpu", traced)) as running:
        yield running


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


def test_one_trace_holds_the_edges_and_the_engines_spans_under_the_clients_parent(traced_server, receiver):
    client = openai.OpenAI(base_url=f"{traced_server.base_url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        stream=True,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
    )
    assert [chunk for chunk in stream]
    spans = spans_of(
        receiver, CLIENT_TRACE, {"slmserve.chat", "slmserve.admission", "slmserve.engine.head", "llm_request"}
    )
    by_name = {span.name: span for span in spans}
    request = by_name["slmserve.chat"]
    assert request.service == "slmserve" and request.parent_id == CLIENT_PARENT
    assert by_name["slmserve.admission"].parent_id == request.span_id
    assert by_name["slmserve.engine.head"].parent_id == request.span_id
    assert by_name["llm_request"].parent_id == request.span_id  # vLLM's engine span, exported by vLLM
    assert by_name["llm_request"].service == "vllm"


def test_without_a_traceparent_the_edge_starts_the_trace_and_the_engine_joins_it(traced_server, receiver):
    client = openai.OpenAI(base_url=f"{traced_server.base_url}/v1", api_key="unused", max_retries=0)
    before = {span.trace_id for span in receiver.spans}
    client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = {span.trace_id for span in receiver.spans if span.name == "slmserve.completions"} - before
        if new:
            break
        time.sleep(0.5)
    (trace_id,) = new
    spans = spans_of(receiver, trace_id, {"slmserve.completions", "llm_request"})
    request = next(span for span in spans if span.name == "slmserve.completions")
    assert request.parent_id == ""  # a root: the client sent no parent
    assert next(span for span in spans if span.name == "llm_request").parent_id == request.span_id


def test_a_rejected_request_is_traced_too(traced_server, receiver):
    client = openai.OpenAI(base_url=f"{traced_server.base_url}/v1", api_key="unused", max_retries=0)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
    (request,) = spans_of(receiver, trace_id, {"slmserve.chat"})
    assert request.parent_id == "b7ad6b7169203331"
