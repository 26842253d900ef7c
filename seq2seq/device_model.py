"""Loading a model directory for inference: :func:`load_model` gives a :class:`DeviceModel`.

The engine builds its batches from one; the benchmark's step profile and the tests load one
the same way, so all of them run the form the server runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from seq2seq.checkpoint import LoadedModel, load_model_dir
from seq2seq.cuda_graphs import GraphedDecodeStep
from seq2seq.decoding import DecodeParams
from seq2seq.generation import DecodeStep, GenerationBatch, GenerationRequest, generate
from seq2seq.optimize import Quantization, optimize_for_inference

log = logging.getLogger("seq2seq.device_model")


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
        loaded = self.loaded
        return GenerationBatch(
            loaded.model, self.device, self.decode_step, loaded.backward, loaded.target_tokenizer.blank_ids
        )

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
