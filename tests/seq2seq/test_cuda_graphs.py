"""GraphedDecodeStep: batches padded into static buffers step exactly as the model does.

The padding and copying run on any device (``capture=False`` runs the padded buffers
eagerly); graph capture and replay need CUDA and are tested in ``tests/service/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from seq2seq.cuda_graphs import GraphedDecodeStep, bucket_sizes
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationBatch, Hypothesis
from seq2seq.model import Seq2Seq
from seq2seq.state import DecoderState
from tests.seq2seq.conftest import padded, random_ids
from tests.seq2seq.test_generation import PARAMS, SRC_LENGTHS, alone, assert_same_hypotheses, make_requests, run_to_end


def encode(model: Seq2Seq, lengths: list[int], seed: int) -> DecoderState:
    g = torch.Generator().manual_seed(seed)
    src, lens = padded([random_ids(n, model.cfg.src_vocab_size, g) for n in lengths])
    with torch.inference_mode():
        return model.encode(src, lens)


def test_bucket_sizes() -> None:
    assert bucket_sizes(128) == [1, 2, 4, *range(8, 129, 8)]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(3) == [1, 2, 3]
    assert bucket_sizes(1) == [1]


def test_padded_step_equals_the_model_step(model: Seq2Seq) -> None:
    step = GraphedDecodeStep(model, max_rows=12, max_width=10, capture=False)
    # A wide batch first, then narrower and smaller ones: positions and rows left over from an
    # earlier step must not leak into the next.
    for seed, lengths in enumerate([[9, 2, 10, 4, 7], [3, 1], [6], [2, 5, 1, 8, 3, 3, 4, 2, 9]]):
        state = encode(model, lengths, seed)
        tokens = torch.randint(
            4, model.cfg.tgt_vocab_size, (len(lengths),), generator=torch.Generator().manual_seed(seed)
        )
        with torch.inference_mode():
            want_logprobs, want = model.decode_step(tokens, state)
            got_logprobs, got = step(tokens, state)
        assert got_logprobs.shape == want_logprobs.shape
        torch.testing.assert_close(got_logprobs, want_logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.h, want.h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.c, want.c, atol=1e-5, rtol=1e-5)
        if want.attention is None:
            assert got.attention is None
        else:  # over the batch's own source positions, not the buffer's
            assert got.attention is not None
            torch.testing.assert_close(got.attention, want.attention, atol=1e-5, rtol=1e-5)
        # The running batch keeps its own source-side tensors; h and c are not views of the buffers.
        assert got.memory is state.memory and got.context is state.context
        assert got.h.untyped_storage().data_ptr() != step.h.untyped_storage().data_ptr()


def test_batches_and_sources_beyond_the_buffers_step_eagerly(model: Seq2Seq) -> None:
    step = GraphedDecodeStep(model, max_rows=2, max_width=4, capture=False)
    for lengths in ([3, 2, 1], [6]):  # too many rows; too long a source (attention models)
        state = encode(model, lengths, 0)
        tokens = torch.full((len(lengths),), 5)
        with torch.inference_mode():
            want, _ = model.decode_step(tokens, state)
            got, _ = step(tokens, state)
        assert torch.equal(got, want)


def test_generation_with_the_padded_step_matches_solo_decoding(model: Seq2Seq) -> None:
    """Joins, leaves, beams and sampling through the static buffers give each request its solo result."""
    requests = make_requests(model.cfg, SRC_LENGTHS, PARAMS)
    requests += make_requests(
        model.cfg,
        [4, 6],
        [DecodeParams(max_length=7, beam_size=3, n_best=2), DecodeParams(max_length=9, sample=True, seed=5)],
        1,
        "b",
    )
    batch = GenerationBatch(model, decode_step=GraphedDecodeStep(model, max_rows=8, max_width=12, capture=False))
    results: dict[str, list[Hypothesis]] = {}
    batch.add(requests[:4])
    for _ in range(2):
        for event in batch.step():
            if event.finished is not None:
                results[event.request_id] = event.finished
    batch.add(requests[4:])  # 13 more rows: over max_rows, so some steps fall back to the eager step
    run_to_end(batch, results)
    assert set(results) == {r.id for r in requests}
    for r in requests:
        assert_same_hypotheses(results[r.id], alone(model, r))


@pytest.mark.parametrize("max_rows", [1, 8])
def test_padded_buffers_follow_the_state_layout(model: Seq2Seq, max_rows: int) -> None:
    step = GraphedDecodeStep(model, max_rows=max_rows, max_width=6, capture=False)
    state = encode(model, [2], 0)
    assert step.h.shape == (state.h.size(0), max_rows, state.h.size(2)) and step.h.dtype == state.h.dtype
    assert (step.memory is None) == (state.memory is None)
    assert (step.context is None) == (state.context is None)
    if step.memory is not None and step.src_mask is not None:
        assert step.memory.shape == (max_rows, 6, state.memory.size(2))  # type: ignore[union-attr]
        assert bool(step.src_mask[:, 0].all())
