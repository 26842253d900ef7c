"""OpenTelemetry traces: a server span per request, with each text's queue, encode and generate spans under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.app import create_app
from service.settings import Settings
from tests.server_process import ROOT, ServiceProcess

STAGES = ("queue", "encode", "generate")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_engine_stages_are_children_of_the_server_span(tiny_store: Path, exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Engine processes (the default): the stages' times cross the process boundary with the results.
    settings = Settings(model_store=tiny_store, models=["translate-de-en", "chat-en"], threads=1)
    app = create_app(settings, load_in_background=False, tracer_provider=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            body = {"texts": ["Ein Mann läuft.", "Zwei Hunde."], "source_lang": "de", "target_lang": "en"}
            assert (await client.post("/translate", json=body)).status_code == 200
            chat = {"message": "a man runs", "language": "en", "stream": True}
            assert (await client.post("/chat", json=chat)).status_code == 200
            assert (await client.post("/translate", json={})).status_code == 422
            assert (await client.get("/health/ready")).status_code == 200  # not traced
    spans = exporter.get_finished_spans()
    by_route = _server_spans(spans)
    assert sorted(by_route) == ["/chat", "/translate"]
    translate, bad = sorted(by_route["/translate"], key=lambda s: len(_children(spans, s)), reverse=True)
    (chat_span,) = by_route["/chat"]

    stages = _children(spans, translate)
    assert sorted(s.name for s in stages) == sorted(STAGES * 2)  # two texts
    for index in (0, 1):
        queue, encode, generate = (
            next(s for s in stages if s.name == n and s.attributes["seq2seq.text_index"] == index) for n in STAGES
        )
        assert queue.attributes["seq2seq.model"] == "translate-de-en"
        assert queue.attributes["seq2seq.model_version"] == "1"
        assert queue.attributes["seq2seq.input_tokens"] > 0
        assert translate.start_time <= queue.start_time <= queue.end_time == encode.start_time
        assert encode.start_time < encode.end_time == generate.start_time < generate.end_time <= translate.end_time
    assert sorted(s.name for s in _children(spans, chat_span)) == sorted(STAGES)
    assert _children(spans, bad) == []  # refused before any engine saw it
    assert all(not s.name.startswith("GET /health") for s in spans)


def _server_spans(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    routes: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span.kind is SpanKind.SERVER:
            routes.setdefault(str(span.attributes["http.route"]), []).append(span)
    return routes


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    """The spans whose parent is ``parent``, in its trace (the engine's stages)."""
    ctx = parent.get_span_context()
    return [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == ctx.span_id
        and s.context.trace_id == ctx.trace_id
        and s.name in STAGES
    ]


def test_off_without_an_endpoint_nothing_is_installed(tiny_store: Path) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT the app has no tracer, and no OpenTelemetry SDK or
    instrumentation is even imported (a fresh interpreter, to see its modules)."""
    script = f"""
import sys
from service.app import create_app
from service.settings import Settings
app = create_app(Settings(model_store={str(tiny_store)!r}))
stack = app.build_middleware_stack()
layers = []
while stack is not None:
    layers.append(type(stack).__module__)
    stack = getattr(stack, "app", None)
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))]
print(app.state.tracer, loaded, [m for m in layers if m.startswith("opentelemetry")])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None [] []"


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: decodes each export, keeps its spans, answers as a collector does."""

    spans: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "name": span.name,
                                "span_id": span.span_id,
                                "parent_span_id": span.parent_span_id,
                                "trace_id": span.trace_id,
                                "service": resource.get("service.name"),
                                "model": next(
                                    (a.value.string_value for a in span.attributes if a.key == "seq2seq.model"), None
                                ),
                            }
                        )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    spans: list[dict[str, Any]] = []
    handler = type("Collector", (_Collector,), {"spans": spans})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", spans
    server.shutdown()
    server.server_close()


def test_a_real_server_exports_its_spans_over_otlp(
    tiny_store: Path, tmp_path: Path, collector: tuple[str, list[dict[str, Any]]]
) -> None:
    endpoint, spans = collector
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with ServiceProcess(tmp_path / "server.log", "--models", "translate-de-en", store=tiny_store, env=env) as server:
        server.wait_ready(60)
        body = {"text": "Ein Mann läuft.", "source_lang": "de", "target_lang": "en"}
        assert httpx.post(f"{server.url}/translate", json=body, timeout=30).status_code == 200
        deadline = time.monotonic() + 20
        while len(spans) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    (root,) = [s for s in spans if s["name"] == "POST /translate"]
    stages = [s for s in spans if s["name"] in STAGES]
    assert sorted(s["name"] for s in stages) == sorted(STAGES), json.dumps([s["name"] for s in spans])
    for span in stages:
        assert (span["trace_id"], span["parent_span_id"]) == (root["trace_id"], root["span_id"])
        assert span["model"] == "translate-de-en"
    assert {s["service"] for s in spans} == {"seq2seq-serve"}
