"""The bare model, in-process, one sentence at a time: the floor the server's latency is compared with.

No HTTP, no engine thread, no queue: :func:`seq2seq.generation.generate` on one request,
with the decoding parameters the server would use (``max_length`` = 2 x source + 10,
capped at the server's default ``max_output_tokens``). Only ``generate`` is timed;
tokenisation happens before the clock starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.checkpoint import load_model_dir
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.quantize import quantize_int8

MAX_OUTPUT_TOKENS = 256  # the server's default --max-output-tokens


@dataclass(frozen=True)
class BareTiming:
    index: int  # position in the input list, matching RequestRecord.index
    seconds: float
    input_tokens: int
    output_tokens: int


def time_bare_model(
    model_dir: Path,
    sentences: Sequence[str],
    *,
    device: torch.device,
    dtype: torch.dtype,
    threads: int,
    beam_size: int = 1,
    warmup: int = 3,
    quantize: str = "none",
) -> list[BareTiming]:
    """Decode each sentence alone (after ``warmup`` untimed ones) with ``threads`` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loaded = load_model_dir(model_dir, device, dtype)
        model = quantize_int8(loaded.model) if quantize == "int8" else loaded.model
        requests = []
        for i, text in enumerate(sentences):
            ids = loaded.source_tokenizer.encode(text)
            if ids:
                params = DecodeParams(max_length=min(2 * len(ids) + 10, MAX_OUTPUT_TOKENS), beam_size=beam_size)
                requests.append(GenerationRequest(str(i), ids, params))
        for request in requests[:warmup]:
            generate(model, [request], device=device)
        timings = []
        for request in requests:
            t0 = time.perf_counter()
            hyps = generate(model, [request], device=device)[request.id]  # lists: already synchronised
            elapsed = time.perf_counter() - t0
            timings.append(BareTiming(int(request.id), elapsed, len(request.src_ids), len(hyps[0].tokens)))
        return timings
    finally:
        torch.set_num_threads(previous)
