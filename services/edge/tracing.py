"""Request traces (OpenTelemetry, exported over OTLP/HTTP), off unless configured: the catalog's
`tracing.otlp_traces_endpoint` or the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.

The edge continues a W3C `traceparent` sent by the client (or starts a trace), records its own
spans (the request, admission, image preparation, the engine's first answer), and hands the trace
context to vLLM, whose engine exports its `llm_request` span into the same trace (services/app.py
gives the engines `otlp_traces_endpoint`). The edge keeps a tracer provider of its own: in direct
mode vLLM's engine shares the process and sets the global one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.core.catalog import TracingOptions

__all__ = ["Span", "Tracing", "traces_endpoint"]  # Span: the type the edge passes around
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent / tracestate


def traces_endpoint(options: TracingOptions) -> str | None:
    return options.otlp_traces_endpoint or os.environ.get(ENDPOINT_ENV) or None


class Tracing:
    def __init__(self, options: TracingOptions) -> None:
        endpoint = traces_endpoint(options)
        self._tracer: trace.Tracer | None = None
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=Resource.create({"service.name": options.service_name}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            self._tracer = provider.get_tracer("slmserve.edge")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_request(self, headers: Mapping[str, str], route: str) -> Span:
        """The request's span, child of the client's `traceparent` if it sent one; end it with `end`."""
        if self._tracer is None:
            return trace.INVALID_SPAN
        parent = PROPAGATOR.extract(carrier=dict(headers))
        return self._tracer.start_span(f"slmserve.{route}", context=parent, kind=SpanKind.SERVER)

    @contextmanager
    def phase(self, request_span: Span, name: str) -> Iterator[Span]:
        """A child span of the request for one step of the edge (admission, images, the engine)."""
        if self._tracer is None:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            f"slmserve.{name}", context=trace.set_span_in_context(request_span), end_on_exit=True
        ) as span:
            yield span

    def headers_for(self, request_span: Span) -> dict[str, str] | None:
        """The W3C headers that make the engine's spans children of the request's (None when off)."""
        if self._tracer is None:
            return None
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(request_span))
        return carrier

    @staticmethod
    def end(request_span: Span, status: int) -> None:
        if not request_span.is_recording():
            return
        request_span.set_attribute("http.response.status_code", status)
        if status >= 500:
            request_span.set_status(Status(StatusCode.ERROR))
        request_span.end()
