"""Attention weights: what a step returns, what a hypothesis carries (through beam reordering),
and that a request's weights do not depend on the batch it ran in."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seq2seq.config import BOS_ID
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationBatch, GenerationRequest, Hypothesis, generate
from seq2seq.model import Seq2Seq
from tests.seq2seq.conftest import CONFIGS, padded, random_ids, random_model
from tests.seq2seq.test_generation import PARAMS, SRC_LENGTHS, alone, assert_same_hypotheses, make_requests, run_to_end

MIXED = [
    DecodeParams(max_length=8, beam_size=4, n_best=3, length_penalty=1.0),
    DecodeParams(max_length=10),
    DecodeParams(max_length=6, beam_size=3, n_best=2, length_penalty=0.0),
    DecodeParams(max_length=10, sample=True, seed=5, temperature=0.8),
    DecodeParams(max_length=9, beam_size=2, min_length=2),
    DecodeParams(max_length=1),
]


@pytest.fixture
def attention_model() -> Seq2Seq:
    return random_model(CONFIGS["attention"])


def attending(requests: list[GenerationRequest]) -> list[GenerationRequest]:
    return [dataclasses.replace(r, return_attention=True) for r in requests]


def replayed_attention(model: Seq2Seq, src: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), len(src)): the weights of each step when ``tokens`` are fed to the decoder alone."""
    rows = []
    with torch.inference_mode():
        state = model.encode(torch.tensor([src]), torch.tensor([len(src)]))
        for previous in [BOS_ID, *tokens[:-1]]:
            _, state = model.decode_step(torch.tensor([previous]), state)
            assert state.attention is not None
            rows.append(state.attention[0])
    return torch.stack(rows) if rows else torch.empty(0, len(src))


def assert_same_attention(got: list[Hypothesis], want: list[Hypothesis]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.attention is not None and w.attention is not None
        torch.testing.assert_close(torch.tensor(g.attention), torch.tensor(w.attention), atol=1e-5, rtol=1e-5)


def test_a_step_returns_its_weights_over_the_real_source(attention_model: Seq2Seq) -> None:
    g = torch.Generator().manual_seed(0)
    src, lengths = padded([random_ids(n, attention_model.cfg.src_vocab_size, g) for n in (3, 7, 1)])
    with torch.inference_mode():
        state = attention_model.encode(src, lengths)
        _, after = attention_model.decode_step(torch.full((3,), BOS_ID), state)
    assert after.attention is not None and after.attention.shape == (3, 7)
    torch.testing.assert_close(after.attention.sum(1), torch.ones(3))
    assert (after.attention >= 0).all()
    for row, n in enumerate(lengths.tolist()):
        assert (after.attention[row, n:] == 0).all()  # padding gets no weight
    # Row operations carry the state on; the weights belonged to the step that returned it.
    with torch.inference_mode():
        assert after.select(torch.tensor([2, 0])).attention is None
        assert after.append(state).attention is None
        assert after.move_rows([0], [2], 2).attention is None


@pytest.mark.parametrize("arch", ["context-init", "context-every-step"])
def test_other_architectures_have_no_weights_and_refuse_to_return_them(arch: str) -> None:
    model = random_model(CONFIGS[arch])
    with torch.inference_mode():
        _, after = model.decode_step(torch.tensor([BOS_ID]), model.encode(torch.tensor([[5, 6]]), torch.tensor([2])))
    assert after.attention is None
    with pytest.raises(ValueError, match="attention"):
        GenerationBatch(model).add([GenerationRequest("a", [5, 6], return_attention=True)])


def test_each_token_has_one_row_that_sums_to_one(attention_model: Seq2Seq) -> None:
    requests = attending(make_requests(attention_model.cfg, SRC_LENGTHS, PARAMS))
    results = generate(attention_model, requests)
    reasons = set()
    for r in requests:
        (hyp,) = results[r.id]
        reasons.add(hyp.finish_reason)
        assert hyp.attention is not None
        weights = torch.tensor(hyp.attention).reshape(len(hyp.tokens), -1)
        assert weights.shape == (len(hyp.tokens), len(r.src_ids))  # the step that produced EOS is not a row
        torch.testing.assert_close(weights.sum(1), torch.ones(len(hyp.tokens)))
        torch.testing.assert_close(weights, replayed_attention(attention_model, list(r.src_ids), hyp.tokens))
    assert len(reasons) == 2, "both EOS and length endings are covered"


def test_every_beam_hypothesis_carries_its_own_weights_through_reordering(attention_model: Seq2Seq) -> None:
    """Replaying each returned hypothesis alone gives its weights: beams that were reordered,
    repeated or dropped on the way handed on the right rows."""
    params = DecodeParams(max_length=9, beam_size=5, n_best=5, length_penalty=1.0)
    requests = attending(make_requests(attention_model.cfg, [4, 6, 2, 8], [params] * 4, seed=3))
    results = generate(attention_model, requests)
    for r in requests:
        hyps = results[r.id]
        assert len(hyps) == 5 and len({tuple(h.tokens) for h in hyps}) == 5
        for hyp in hyps:
            assert hyp.attention is not None
            weights = torch.tensor(hyp.attention).reshape(len(hyp.tokens), len(r.src_ids))
            torch.testing.assert_close(weights, replayed_attention(attention_model, list(r.src_ids), hyp.tokens))


def test_a_requests_weights_do_not_depend_on_its_batch(attention_model: Seq2Seq) -> None:
    # Greedy, sampled and beam requests together, some not asking for weights.
    requests = make_requests(attention_model.cfg, [3, 7, 1, 5, 9, 4], MIXED)
    requests = [dataclasses.replace(r, return_attention=i % 3 != 1) for i, r in enumerate(requests)]
    for max_rows in (64, 5):  # all at once; or a few at a time, joining as others leave
        batched = generate(attention_model, requests, max_rows=max_rows)
        for r in requests:
            solo = alone(attention_model, r)
            assert_same_hypotheses(batched[r.id], solo)
            if r.return_attention:
                assert_same_attention(batched[r.id], solo)
            else:
                assert all(h.attention is None for h in batched[r.id])


def test_weights_of_requests_joining_a_running_batch(attention_model: Seq2Seq) -> None:
    first = attending(make_requests(attention_model.cfg, [3, 2], [DecodeParams(max_length=12, min_length=6)] * 2))
    later = attending(make_requests(attention_model.cfg, [9, 1], [MIXED[0], MIXED[3]], seed=1, prefix="b"))
    batch = GenerationBatch(attention_model)
    results: dict[str, list[Hypothesis]] = {}
    batch.add(first)
    for _ in range(3):
        batch.step()
    batch.add(later)  # a wider source: the running rows' memory is padded
    run_to_end(batch, results)
    for r in first + later:
        assert_same_attention(results[r.id], alone(attention_model, r))


def test_the_batch_keeps_no_weights_between_steps(attention_model: Seq2Seq) -> None:
    requests = make_requests(attention_model.cfg, [3, 5], [DecodeParams(max_length=6)] * 2)
    batch = GenerationBatch(attention_model)
    batch.add([requests[0], attending(requests[1:])[0]])
    batch.step()
    assert batch.state is not None and batch.state.attention is None
    asked = [seq.attention is not None for seq in batch.active]
    assert asked == [False, True]
