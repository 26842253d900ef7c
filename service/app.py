"""The FastAPI application: ``create_app(settings)`` wires registry, engines, routes and middleware."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import tracing
from service.api import admin, chat, health, models, openapi, prometheus, translate, ui
from service.api.errors import install_error_handlers
from service.auth import AuthMiddleware, KeyStore
from service.engine.client import EngineClient, LocalEngine
from service.engine.loader import freeze_startup_heap, torch_threads
from service.engine.process import EngineProcess
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.ratelimit import RATE_LIMIT_HEADERS
from service.registry import EngineFactory, ModelEntry, Registry
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("service")


def engine_factory(settings: Settings, metrics: Metrics, loop: asyncio.AbstractEventLoop) -> EngineFactory:
    """Turn a model directory into a warmed-up, started engine (runs in the loader thread)."""

    def build(entry: ModelEntry) -> EngineClient:
        if settings.engine_process:
            return EngineProcess.start(entry.name, entry.path, entry.manifest, settings, metrics, loop)
        return LocalEngine(entry.name, entry.path, settings, metrics, loop)

    return build


async def watch_store(registry: Registry, factory: EngineFactory, metrics: Metrics, settings: Settings) -> None:
    """``--watch-store``: every so often, what ``POST /admin/reload`` does to the models."""
    while True:
        await asyncio.sleep(settings.watch_store_s)
        if not registry.loaded or registry.draining:
            continue
        try:
            results = await admin.reload_store(registry, factory, metrics, settings.shutdown_grace_s)
        except OSError as exc:  # the store is unreadable for now (a volume being replaced): next time
            log.error("model store watch: %s", exc)
            continue
        for result in results:
            log.info("model store watch: %s", result.model_dump_json(exclude_none=True))


def create_app(
    settings: Settings | None = None, *, load_in_background: bool = True, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """``tracer_provider``: trace with it (service/tracing.py); by default only with ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    settings = settings or Settings()
    metrics = Metrics()
    keys = KeyStore(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(torch_threads(settings))
        unwatch_keys = keys.reload_on_sighup()
        registry = Registry(Path(settings.model_store), settings.models, settings.required_models)
        app.state.registry = registry
        factory = engine_factory(settings, metrics, asyncio.get_running_loop())
        app.state.engine_factory = factory

        def load_models() -> None:
            registry.load_all(factory)
            freeze_startup_heap()
            if settings.restart_engines:
                threading.Thread(
                    target=registry.supervise,
                    args=(factory, lambda name: metrics.engine_restarts.labels(name).inc()),
                    name="model-supervisor",
                    daemon=True,
                ).start()

        if load_in_background:  # /health/live answers while models load; /health/ready waits for them
            threading.Thread(target=load_models, name="model-loader", daemon=True).start()
        else:
            await asyncio.to_thread(load_models)
        watcher = (
            asyncio.create_task(watch_store(registry, factory, metrics, settings)) if settings.watch_store_s else None
        )
        try:
            yield
        finally:  # also when the app's host fails: engines and their processes never outlive it
            if watcher is not None:
                watcher.cancel()
            registry.draining = True
            unwatch_keys()
            await asyncio.to_thread(registry.stop, settings.shutdown_grace_s)

    app = FastAPI(
        title="seq2seq-serve",
        version="0.1.0",
        description="Translation and chat with LSTM encoder-decoder models: continuous batching, "
        'beam search, sampling, streaming. Errors are always `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys
    install_error_handlers(app)
    openapi.install(app, settings)
    for module in (translate, chat, models, admin, health, prometheus, ui):
        app.include_router(module.router)
    if keys.enabled:  # inside the request context: a 401 gets a request id, the log line the key's name
        app.add_middleware(AuthMiddleware, keys=keys, settings=settings, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # outermost, so every reply (errors too) carries the CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["content-type", "x-request-id", "authorization"],
            expose_headers=[
                "x-request-id",
                "retry-after",
                "x-model",
                "x-model-version",
                "www-authenticate",
                *RATE_LIMIT_HEADERS,
            ],
        )
    app.state.tracer = tracing.install(app, tracer_provider)  # the server span encloses every middleware
    return app
