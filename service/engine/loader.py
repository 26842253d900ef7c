"""Turn a model directory and the settings into a warmed-up, started :class:`Engine`.

Used in the HTTP process (``--engine-process false``) and in an engine process alike, so
both run the same engine with the same limits and threads.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.engine.engine import Engine
from service.engine.runner import ModelRunner
from service.engine.streams import Publish, publish
from service.metrics import Metrics
from service.settings import Settings


def torch_threads(settings: Settings) -> int:
    """torch intra-op threads: as asked, else every core but one.

    One core stays with the event loop (HTTP, JSON, streams): on small machines torch
    threads that compete with it for every core make the whole server slower.
    """
    return settings.threads or max(1, (os.cpu_count() or 2) - 1)


def overlap_encode(settings: Settings) -> bool:
    """Whether continuous batching encodes on its own thread: as asked, else when a core is free for it.

    With every core in torch's intra-op pool, an encoder thread would run its own OpenMP team
    on the same cores as the decoder's: oversubscribed, both slow down (measured with
    ``--threads 2 --quantize int8`` on 2 cores: continuous batching fell behind static).
    """
    if settings.overlap_encode is not None:
        return settings.overlap_encode
    return torch_threads(settings) < (os.cpu_count() or 1)


def build_engine(name: str, path: Path, settings: Settings, metrics: Metrics, publish: Publish = publish) -> Engine:
    # Loaded and warmed up on a thread that then exits. A thread that ran torch ops keeps its
    # OpenMP team, and with more OpenMP threads alive than cores libgomp stops spinning between
    # parallel regions: every op of a 2-thread worker then waited for wake-ups (measured: int8
    # with --threads 2 decoded at half speed when an engine process loaded on its main thread).
    with ThreadPoolExecutor(1, thread_name_prefix="load") as loader:
        runner = loader.submit(load_runner, path, settings).result()
    engine = Engine(
        name,
        runner,
        metrics,
        policy=settings.batching,
        max_rows=settings.max_batch_rows,
        max_tokens=settings.max_batch_tokens,
        max_queue=settings.max_queue,
        max_delay_s=settings.static_max_delay_ms / 1000,
        admit_delay_s=settings.admit_delay_ms / 1000,
        overlap_encode=overlap_encode(settings),
        publish=publish,
    )
    engine.start()
    return engine


def load_runner(path: Path, settings: Settings) -> ModelRunner:
    graphs = (settings.max_batch_rows, settings.max_input_tokens) if settings.cuda_graphs else None
    runner = ModelRunner.load(str(path), settings.device, settings.dtype, settings.quantize, cuda_graphs=graphs)
    runner.warmup()
    return runner


def freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the garbage collector's reach.

    torch, FastAPI and the loaded models leave ~200k long-lived objects. Under load each full
    collection walked all of them: about 170 ms holding the GIL, pausing the engine and the
    event loop alike, every few seconds at 150 req/s (measured with ``gc.callbacks``). The
    frozen objects are still freed by reference counting; only cycle detection skips them.
    """
    gc.collect()
    gc.freeze()
