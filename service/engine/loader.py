"""Turn a model directory and the settings into a served model and a started engine.

Used in the HTTP process (``--engine-process false``) and in an engine process alike, so
both run the same engine with the same limits and threads.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seq2seq.device_model import DeviceModel, load_model
from service.engine.engine import Engine, Sink
from service.settings import Settings


def load_served_model(path: Path, settings: Settings) -> DeviceModel:
    """The model as ``settings`` serve it, warmed up."""
    graphs = (settings.max_batch_rows, settings.max_input_tokens) if settings.cuda_graphs else None
    model = load_model(path, settings.device, settings.dtype, settings.quantize, cuda_graphs=graphs)
    model.warmup()
    return model


def torch_threads(settings: Settings) -> int:
    """torch intra-op threads: as asked, else every core but one.

    One core stays with the event loop (HTTP, JSON, streams): on small machines torch
    threads that compete with it for every core make the whole server slower.
    """
    return settings.threads or max(1, (os.cpu_count() or 2) - 1)


def overlap_encode(settings: Settings) -> bool:
    """Whether continuous batching encodes on its own thread: as asked, else when a core is free for it.

    With every core in torch's intra-op pool, an encoder thread would run its own OpenMP team
    on the same cores as the decoder's: oversubscribed, both slow down.
    """
    if settings.overlap_encode is not None:
        return settings.overlap_encode
    return torch_threads(settings) < (os.cpu_count() or 1)


def build_engine(name: str, path: Path, settings: Settings, sink: Sink) -> Engine:
    # Loaded and warmed up on a thread that then exits. A thread that ran torch ops keeps its
    # OpenMP team, and with more OpenMP threads alive than cores libgomp stops spinning between
    # parallel regions: every op of a multi-threaded worker would then wait for wake-ups.
    with ThreadPoolExecutor(1, thread_name_prefix="load") as loader:
        model = loader.submit(load_served_model, path, settings).result()
    engine = Engine(
        name,
        model,
        sink,
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


def freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the garbage collector's reach.

    torch, FastAPI and the loaded models leave a large heap of long-lived objects; under
    load each full collection walked all of them while holding the GIL, pausing the engine
    and the event loop alike. The frozen objects are still freed by reference counting;
    only cycle detection skips them.
    """
    gc.collect()
    gc.freeze()
