"""Model runner: owns the device, the dtype and the running decoder batch of one model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from seq2seq.checkpoint import LoadedModel, load_model_dir
from seq2seq.cuda_graphs import GraphedDecodeStep
from seq2seq.decoding import DecodeParams
from seq2seq.generation import DecodeStep, GenerationBatch, GenerationRequest, StepEvent, generate
from seq2seq.optimize import Quantization, optimize_for_inference
from seq2seq.state import DecoderState
from service.engine.handle import EngineInfo

log = logging.getLogger("service.runner")


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


class ModelRunner:
    """Tensor work for one model. Used from its engine's worker thread; :meth:`encode` also from its encoder thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        quantization: Quantization = "none",
        dtype: torch.dtype = torch.float32,
        decode_step: DecodeStep | None = None,
    ) -> None:
        self.loaded = loaded
        self.device = device
        self.quantization = quantization
        self.dtype = dtype
        self.batch = GenerationBatch(loaded.model, device, decode_step)

    @classmethod
    def load(
        cls,
        path: str,
        device: str = "auto",
        dtype: str = "auto",
        quantize: Quantization = "none",
        cuda_graphs: tuple[int, int] | None = None,
    ) -> ModelRunner:
        """``cuda_graphs``: (max rows, max source tokens) of the decoder step's CUDA graphs, on a GPU."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        loaded = load_model_dir(path, dev, dt)
        if quantize == "int8" and dev.type != "cpu":
            raise RuntimeError(f"int8 quantisation runs on the CPU, not on {dev}")
        loaded = replace(loaded, model=optimize_for_inference(loaded.model, quantize))
        graphed = None
        if cuda_graphs is not None and dev.type == "cuda":
            graphed = GraphedDecodeStep(loaded.model, *cuda_graphs)
            log.info("captured %d CUDA graphs of the decoder step (up to %d rows)", len(graphed.graphs), cuda_graphs[0])
        return cls(loaded, dev, quantize, dt, graphed)

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            self.loaded.source_tokenizer,
            self.loaded.target_tokenizer,
            str(self.device),
            str(self.dtype).removeprefix("torch."),
            self.quantization,
        )

    def encode(self, requests: Sequence[GenerationRequest]) -> DecoderState:
        """Encode ``requests`` for :meth:`join`; safe on another thread while the batch steps."""
        return self.batch.encode(requests)

    def join(self, requests: Sequence[GenerationRequest], state: DecoderState) -> None:
        self.batch.join(requests, state)

    def step(self) -> list[StepEvent]:
        return self.batch.step()

    def remove(self, request_ids: set[str]) -> list[str]:
        return self.batch.remove(request_ids)

    def reset(self) -> list[str]:
        """Drop every row (after a failed step); returns the ids that were running."""
        ids = self.batch.request_ids
        self.batch = GenerationBatch(self.loaded.model, self.device, self.batch.decode_step)
        return ids

    def warmup(self) -> None:
        """Run greedy and beam decoding once so the first real request pays no start-up cost."""
        tok = self.loaded.source_tokenizer
        ids = tok.encode("warm up") or [1]
        generate(
            self.loaded.model,
            [
                GenerationRequest("warmup-greedy", ids, DecodeParams(max_length=8)),
                GenerationRequest("warmup-beam", ids, DecodeParams(max_length=8, beam_size=2)),
            ],
            device=self.device,
        )
