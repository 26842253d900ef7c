"""Turn a model directory and the settings into a model on its device, and into a started engine.

Used in the HTTP process (``--engine-process false``) and in an engine process alike, so
both run the same engine with the same limits and threads.
"""

from __future__ import annotations

import gc
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from seq2seq.checkpoint import LoadedModel, load_model_dir
from seq2seq.cuda_graphs import GraphedDecodeStep
from seq2seq.decoding import DecodeParams
from seq2seq.generation import DecodeStep, GenerationBatch, GenerationRequest, generate
from seq2seq.optimize import Quantization, optimize_for_inference
from service.engine.engine import Engine, Sink
from service.settings import Settings

log = logging.getLogger("service.loader")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass(frozen=True)
class DeviceModel:
    """A checkpoint in the form the server runs it: on its device, in its dtype, optimised for
    inference, with the decoder step the batch calls (replayed from CUDA graphs on a GPU)."""

    loaded: LoadedModel
    device: torch.device
    dtype: torch.dtype
    quantization: Quantization
    decode_step: DecodeStep

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def new_batch(self) -> GenerationBatch:
        return GenerationBatch(self.loaded.model, self.device, self.decode_step, self.loaded.backward)

    def warmup(self) -> None:
        """Run greedy and beam decoding once so the first real request pays no start-up cost."""
        ids = self.loaded.source_tokenizer.encode("warm up") or [1]
        warmup = [
            GenerationRequest("warmup-greedy", ids, DecodeParams(max_length=8)),
            GenerationRequest("warmup-beam", ids, DecodeParams(max_length=8, beam_size=2)),
        ]
        if self.loaded.backward is not None:
            warmup.append(GenerationRequest("warmup-mmi", ids, DecodeParams(max_length=8, beam_size=2, mmi_weight=0.5)))
        generate(self.loaded.model, warmup, device=self.device, backward=self.loaded.backward)


def load_model(
    path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    quantize: Quantization = "none",
    cuda_graphs: tuple[int, int] | None = None,
) -> DeviceModel:
    """``cuda_graphs``: (max rows, max source tokens) of the decoder step's CUDA graphs, on a GPU."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if quantize == "int8" and dev.type != "cpu":
        raise RuntimeError(f"int8 quantisation runs on the CPU, not on {dev}")
    loaded = load_model_dir(path, dev, dt)
    loaded = replace(loaded, model=optimize_for_inference(loaded.model, quantize))
    step: DecodeStep = loaded.model.decode_step
    if cuda_graphs is not None and dev.type == "cuda":
        graphed = GraphedDecodeStep(loaded.model, *cuda_graphs)
        log.info("captured %d CUDA graphs of the decoder step (up to %d rows)", len(graphed.graphs), cuda_graphs[0])
        step = graphed
    return DeviceModel(loaded, dev, dt, quantize, step)


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
