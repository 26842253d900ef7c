"""OpenTelemetry traces: a server span per HTTP request, with the engine's stages as its children.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or a test hands in a tracer provider): then
nothing is imported or installed, and a request does no tracing work at all. On, the FastAPI
instrumentation makes the server span of every request, and each text that an engine
answered adds three child spans, ``queue``, ``encode`` and ``generate``. An engine may run in
another process, where no span can be opened, so these are made after the fact, when the
result is in, from the timestamps the engine sent with it (:class:`~service.engine.request.Timings`).

The exporter is OTLP over HTTP (protobuf) and reads the standard variables itself
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``, ...);
``OTEL_SERVICE_NAME`` defaults to ``seq2seq-serve``. The packages are the ``otel`` extra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import FastAPI

from service.engine.request import Request, Timings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

# Probes and scrapes come every few seconds and say nothing about a request's path.
DEFAULT_EXCLUDED_URLS = "/health/,/metrics"


def install(app: FastAPI, provider: TracerProvider | None = None) -> Tracer | None:
    """Instrument ``app`` and return the tracer for the engine's spans; ``None`` (and nothing
    installed) when no ``provider`` is given and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is not set."""
    if provider is None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return None
        provider = otlp_provider()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS),
        exclude_spans=["receive", "send"],  # a span per ASGI message: one per token of a stream
    )
    return provider.get_tracer("service")


def otlp_provider() -> TracerProvider:
    """A provider that batches spans to the OTLP/HTTP endpoint of the environment."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc}): "
            "install the otel extra, pip install 'seq2seq-serve[otel]'"
        ) from exc
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "seq2seq-serve")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def record_engine_spans(
    tracer: Tracer, model: str, version: str | None, requests: Sequence[Request], timings: Sequence[Timings | None]
) -> None:
    """The ``queue``, ``encode`` and ``generate`` spans of each text, children of the current
    (server) span, placed on the wall clock from the engine's monotonic timestamps."""
    offset_ns = time.time_ns() - time.monotonic_ns()

    def ns(monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + offset_ns

    for index, (request, t) in enumerate(zip(requests, timings, strict=True)):
        if t is None:
            continue
        attributes = {
            "seq2seq.model": model,
            "seq2seq.model_version": version or "",
            "seq2seq.engine_request_id": request.id,
            "seq2seq.text_index": index,
            "seq2seq.input_tokens": len(request.src_ids),
        }
        for name, start, end in (
            ("queue", t.arrival, t.encode_start),
            ("encode", t.encode_start, t.encode_end),
            ("generate", t.encode_end, t.finished),
        ):
            tracer.start_span(name, attributes=attributes, start_time=ns(start)).end(end_time=ns(end))
