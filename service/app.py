"""The FastAPI application: ``create_app(settings)`` wires registry, engines, routes and middleware."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import chat, health, models, translate, ui
from service.api import metrics as metrics_api
from service.api.errors import install_error_handlers
from service.engine.engine import Engine
from service.engine.runner import ModelRunner
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.registry import ModelEntry, Registry
from service.settings import Settings

log = logging.getLogger("service")


def engine_factory(settings: Settings, metrics: Metrics):
    """Turn a model directory into a warmed-up, started engine (runs in the loader thread)."""

    def build(entry: ModelEntry) -> Engine:
        runner = ModelRunner.load(str(entry.path), settings.device, settings.dtype, settings.quantize)
        runner.warmup()
        engine = Engine(
            entry.name,
            runner,
            metrics,
            policy=settings.batching,
            max_rows=settings.max_batch_rows,
            max_tokens=settings.max_batch_tokens,
            max_queue=settings.max_queue,
            max_delay_s=settings.static_max_delay_ms / 1000,
            admit_delay_s=settings.admit_delay_ms / 1000,
            overlap_encode=overlap_encode(settings),
        )
        engine.start()
        return engine

    return build


def overlap_encode(settings: Settings) -> bool:
    """Whether continuous batching encodes on its own thread: as asked, else when a core is free for it.

    With every core in torch's intra-op pool, an encoder thread would run its own OpenMP team
    on the same cores as the decoder's: oversubscribed, both slow down (measured with
    ``--threads 2 --quantize int8`` on 2 cores: continuous batching fell behind static).
    """
    if settings.overlap_encode is not None:
        return settings.overlap_encode
    return torch.get_num_threads() < (os.cpu_count() or 1)


def freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the garbage collector's reach.

    torch, FastAPI and the loaded models leave ~200k long-lived objects. Under load each full
    collection walked all of them: about 170 ms holding the GIL, pausing the engine and the
    event loop alike, every few seconds at 150 req/s (measured with ``gc.callbacks``). The
    frozen objects are still freed by reference counting; only cycle detection skips them.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, load_in_background: bool = True) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One core stays with the event loop (HTTP, JSON, streams): on small machines torch
        # threads that compete with it for every core make the whole server slower.
        torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 2) - 1))
        registry = Registry(Path(settings.model_store), settings.models)
        app.state.registry = registry
        factory = engine_factory(settings, metrics)

        def load_models() -> None:
            registry.load_all(factory)
            freeze_startup_heap()

        if load_in_background:  # /health/live answers while models load; /health/ready waits for them
            threading.Thread(target=load_models, name="model-loader", daemon=True).start()
        else:
            await asyncio.to_thread(load_models)
        yield
        registry.draining = True
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
    install_error_handlers(app)
    for module in (translate, chat, models, health, metrics_api, ui):
        app.include_router(module.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # outermost, so every reply (errors too) carries the CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["content-type", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
        )
    return app
