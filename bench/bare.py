"""The bare model, in-process: the references the server is compared with.

No HTTP, no engine thread, no queue: :func:`seq2seq.generation.generate`, with the
decoding parameters the server would use (``max_length`` = 2 x source + 10, capped at
the server's default ``max_output_tokens``). Only ``generate`` is timed; tokenisation
happens before the clock starts.

- :class:`BareModel` / :func:`time_bare_model`: one sentence at a time, the floor of the
  server's latency at concurrency 1.
- :func:`time_offline_batch`: every sentence handed over at once, admitted longest first
  into a batch of ``max_rows`` rows: what batching alone can do for throughput on this
  machine, on the same threads. Its ratio to one-at-a-time decoding is the continuous /
  none ratio of a server without per-request costs that decodes and encodes on one thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.checkpoint import load_model_dir
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.model import Seq2Seq
from seq2seq.optimize import Quantization, optimize_for_inference
from seq2seq.tokenizer import Tokenizer

MAX_OUTPUT_TOKENS = 256  # the server's default --max-output-tokens


@dataclass(frozen=True)
class BareTiming:
    index: int  # position in the input list, matching RequestRecord.index
    seconds: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class OfflineBatch:
    sentences: int
    max_rows: int
    seconds: float
    output_tokens: int

    @property
    def requests_per_s(self) -> float:
        return self.sentences / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def _prepare(
    model_dir: Path,
    sentences: Sequence[str],
    device: torch.device,
    dtype: torch.dtype,
    beam_size: int,
    quantize: Quantization,
) -> tuple[Seq2Seq, list[GenerationRequest]]:
    loaded = load_model_dir(model_dir, device, dtype)
    model = optimize_for_inference(loaded.model, quantize)
    return model, server_requests(loaded.source_tokenizer, sentences, beam_size)


def server_requests(tokenizer: Tokenizer, sentences: Sequence[str], beam_size: int = 1) -> list[GenerationRequest]:
    """``sentences`` as the server would decode them (ids are their positions; empty ones left out)."""
    requests = []
    for i, text in enumerate(sentences):
        ids = tokenizer.encode(text)
        if ids:
            params = DecodeParams(max_length=min(2 * len(ids) + 10, MAX_OUTPUT_TOKENS), beam_size=beam_size)
            requests.append(GenerationRequest(str(i), ids, params))
    return requests


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """``threads`` intra-op threads inside the block, the previous number after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BareModel:
    """The model loaded in-process with every sentence tokenised: times one sentence at a time, on demand.

    :func:`time_bare_model` times them all in a row; the benchmark also alternates single
    sentences with server requests for the same sentences, so both sides of the
    concurrency-1 comparison see the same moment of a machine whose speed drifts.
    """

    def __init__(
        self,
        model_dir: Path,
        sentences: Sequence[str],
        *,
        device: torch.device,
        dtype: torch.dtype,
        threads: int,
        beam_size: int = 1,
        warmup: int = 3,
        quantize: Quantization = "none",
    ) -> None:
        self.device, self.threads = device, threads
        with _threads(threads):
            self.model, requests = _prepare(model_dir, sentences, device, dtype, beam_size, quantize)
            for request in requests[:warmup]:
                generate(self.model, [request], device=device)
        self.requests = {int(r.id): r for r in requests}  # by position in ``sentences``; empty ones are absent

    def time(self, index: int) -> BareTiming:
        """Decode sentence ``index`` (a key of ``requests``) alone."""
        request = self.requests[index]
        with _threads(self.threads):
            t0 = time.perf_counter()
            hyps = generate(self.model, [request], device=self.device)[request.id]  # lists: already synchronised
            elapsed = time.perf_counter() - t0
        return BareTiming(index, elapsed, len(request.src_ids), len(hyps[0].tokens))


def time_bare_model(bare: BareModel) -> list[BareTiming]:
    """Every sentence of ``bare``, one after the other."""
    return [bare.time(index) for index in sorted(bare.requests)]


def time_offline_batch(
    model_dir: Path,
    sentences: Sequence[str],
    *,
    device: torch.device,
    dtype: torch.dtype,
    threads: int,
    max_rows: int,
    beam_size: int = 1,
    quantize: Quantization = "none",
) -> OfflineBatch:
    """Decode all ``sentences`` in one ``generate`` call with up to ``max_rows`` rows (after a short warm-up)."""
    with _threads(threads):
        model, requests = _prepare(model_dir, sentences, device, dtype, beam_size, quantize)
        generate(model, requests[:max_rows], max_rows=max_rows, device=device)
        t0 = time.perf_counter()
        results = generate(model, requests, max_rows=max_rows, device=device)
        seconds = time.perf_counter() - t0
    tokens = sum(len(hyps[0].tokens) for hyps in results.values())
    return OfflineBatch(len(requests), max_rows, seconds, tokens)
