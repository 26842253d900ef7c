"""CUDA end to end: the runner on a GPU gives the CPU's greedy results. Skipped without CUDA."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from seq2seq.cuda_graphs import GraphedDecodeStep
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest
from service.engine.runner import ModelRunner

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_runner_matches_cpu(tiny_store: Path, dtype: str) -> None:
    path = str(tiny_store / "translate-de-en" / "1")
    cpu = ModelRunner.load(path, device="cpu", dtype="float32")
    gpu = ModelRunner.load(path, device="cuda", dtype=dtype)
    gpu.warmup()
    ids = cpu.loaded.source_tokenizer.encode("ein mann spielt im park")
    outputs = []
    for runner in (cpu, gpu):
        requests = [GenerationRequest("r", ids, DecodeParams(max_length=12))]
        runner.join(requests, runner.encode(requests))
        tokens: list[int] = []
        while len(runner):
            for event in runner.step():
                if event.token is not None:
                    tokens.append(event.token)
        outputs.append(tokens)
    if dtype == "float32":
        assert outputs[0] == outputs[1]
    else:  # half precision may flip a near-tie late in the sequence
        assert outputs[0][:3] == outputs[1][:3]


def decode_all(runner: ModelRunner, requests: list[GenerationRequest]) -> dict[str, list[list[int]]]:
    """Every request's n-best tokens; the second half joins the running batch after two steps."""
    half = len(requests) // 2
    runner.join(requests[:half], runner.encode(requests[:half]))
    results: dict[str, list[list[int]]] = {}
    for step in itertools.count():
        if step == 2:
            runner.join(requests[half:], runner.encode(requests[half:]))
        if not len(runner):
            break
        for event in runner.step():
            if event.finished is not None:
                results[event.request_id] = [h.tokens for h in event.finished]
    return results


def test_cuda_graphs_replay_the_eager_step(tiny_store: Path) -> None:
    path = str(tiny_store / "translate-de-en" / "1")
    eager = ModelRunner.load(path, device="cuda", dtype="float32")
    graphed = ModelRunner.load(path, device="cuda", dtype="float32", cuda_graphs=(16, 32))
    assert isinstance(graphed.batch.decode_step, GraphedDecodeStep)
    assert sorted(graphed.batch.decode_step.graphs) == [1, 2, 4, 8, 16]
    tok = eager.loaded.source_tokenizer
    texts = ["ein mann", "eine frau spielt im park mit einem hund", "zwei kinder", "ein hund läuft", "hallo"] * 4
    params = [DecodeParams(max_length=12), DecodeParams(max_length=9, beam_size=3, n_best=2)]
    requests = [
        GenerationRequest(f"r{i}", tok.encode(text), params[1] if i % 7 == 3 else params[0])
        for i, text in enumerate(texts)
    ]  # 20 requests, some beams: more rows than the largest graph at first, fewer as they finish
    assert decode_all(graphed, requests) == decode_all(eager, requests)
