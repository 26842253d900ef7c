"""CUDA end to end: a model served on a GPU gives the CPU's greedy results. Skipped without CUDA."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from seq2seq.cuda_graphs import GraphedDecodeStep
from seq2seq.decoding import DecodeParams
from seq2seq.device_model import load_model
from seq2seq.generation import GenerationBatch, GenerationRequest

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_model_matches_cpu(tiny_store: Path, dtype: str) -> None:
    path = tiny_store / "translate-de-en" / "1"
    cpu = load_model(path, device="cpu", dtype="float32")
    gpu = load_model(path, device="cuda", dtype=dtype)
    gpu.warmup()
    ids = cpu.loaded.source_tokenizer.encode("ein mann spielt im park")
    outputs = []
    for model in (cpu, gpu):
        batch = model.new_batch()
        batch.add([GenerationRequest("r", ids, DecodeParams(max_length=12))])
        tokens: list[int] = []
        while len(batch):
            for event in batch.step():
                if event.token is not None:
                    tokens.append(event.token)
        outputs.append(tokens)
    if dtype == "float32":
        assert outputs[0] == outputs[1]
    else:  # half precision may flip a near-tie late in the sequence
        assert outputs[0][:3] == outputs[1][:3]


def decode_all(batch: GenerationBatch, requests: list[GenerationRequest]) -> dict[str, list[list[int]]]:
    """Every request's n-best tokens; the second half joins the running batch after two steps."""
    half = len(requests) // 2
    batch.add(requests[:half])
    results: dict[str, list[list[int]]] = {}
    for step in itertools.count():
        if step == 2:
            batch.add(requests[half:])
        if not len(batch):
            break
        for event in batch.step():
            if event.finished is not None:
                results[event.request_id] = [h.tokens for h in event.finished]
    return results


def test_cuda_graphs_replay_the_eager_step(tiny_store: Path) -> None:
    path = tiny_store / "translate-de-en" / "1"
    eager = load_model(path, device="cuda", dtype="float32")
    graphed = load_model(path, device="cuda", dtype="float32", cuda_graphs=(16, 32))
    assert isinstance(graphed.decode_step, GraphedDecodeStep)
    assert sorted(graphed.decode_step.graphs) == [1, 2, 4, 8, 16]
    tok = eager.loaded.source_tokenizer
    texts = ["ein mann", "eine frau spielt im park mit einem hund", "zwei kinder", "ein hund läuft", "hallo"] * 4
    params = [DecodeParams(max_length=12), DecodeParams(max_length=9, beam_size=3, n_best=2)]
    requests = [
        GenerationRequest(f"r{i}", tok.encode(text), params[1] if i % 7 == 3 else params[0])
        for i, text in enumerate(texts)
    ]  # 20 requests, some beams: more rows than the largest graph at first, fewer as they finish
    assert decode_all(graphed.new_batch(), requests) == decode_all(eager.new_batch(), requests)
