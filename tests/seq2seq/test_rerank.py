"""MMI reranking: teacher-forced scores, the combined order, and beams reranked by a backward model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seq2seq.config import BOS_ID, EOS_ID
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationBatch, GenerationRequest, generate
from seq2seq.rerank import backward_scores, mmi_order, sequence_logprobs
from tests.seq2seq.conftest import CONFIGS, SRC_VOCAB, TGT_VOCAB, padded, random_ids, random_model


def stepwise_logprob(model, source: list[int], target: list[int]) -> float:  # noqa: ANN001
    """log p(target + EOS | source), one decode_step at a time."""
    src, lengths = padded([source])
    state = model.encode(src, lengths)
    total, previous = 0.0, BOS_ID
    for token in [*target, EOS_ID]:
        logprobs, state = model.decode_step(torch.tensor([previous]), state)
        total += logprobs[0, token].item()
        previous = token
    return total


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_sequence_logprobs_is_the_sum_of_the_steps_of_each_pair_in_one_batch(arch: str) -> None:
    model = random_model(CONFIGS[arch])
    g = torch.Generator().manual_seed(3)
    sources = [random_ids(n, SRC_VOCAB, g) for n in (3, 7, 1, 5)]
    targets = [random_ids(n, TGT_VOCAB, g) for n in (4, 0, 6, 2)]
    batched = sequence_logprobs(model, sources, targets)
    for got, source, target in zip(batched, sources, targets, strict=True):
        assert got == pytest.approx(stepwise_logprob(model, source, target), abs=1e-4)
        assert got < 0


def test_mmi_order_goes_from_the_forward_order_to_the_backward_one() -> None:
    forward, backward = [-1.0, -2.0, -3.0], [-9.0, -1.0, -5.0]
    assert mmi_order(forward, backward, 0.0) == [0, 1, 2]
    assert mmi_order(forward, backward, 1.0) == [1, 2, 0]
    assert mmi_order(forward, backward, 0.5) == [1, 2, 0]  # -5, -1.5, -4
    assert mmi_order([-1.0, -1.0], [-2.0, -2.0], 0.5) == [0, 1]  # ties keep the forward order


def test_backward_scores_are_per_message_piece_and_an_empty_reply_scores_minus_infinity() -> None:
    cfg = dataclasses.replace(CONFIGS["attention"], src_vocab_size=TGT_VOCAB, tgt_vocab_size=SRC_VOCAB)
    backward = random_model(cfg, seed=2)
    message, replies = [5, 6, 7], [[4, 9], [], [10]]
    scores = backward_scores(backward, message, replies)
    assert scores[1] == float("-inf")
    for score, reply in ((scores[0], replies[0]), (scores[2], replies[2])):
        assert score == pytest.approx(stepwise_logprob(backward, reply, message) / 4, abs=1e-4)


def mmi_setup() -> tuple:
    forward = random_model(CONFIGS["attention"], seed=1, eos_bias=3.0)
    cfg = dataclasses.replace(CONFIGS["attention"], src_vocab_size=TGT_VOCAB, tgt_vocab_size=SRC_VOCAB)
    return forward, random_model(cfg, seed=2)


def test_an_mmi_request_returns_its_beams_reranked_by_the_backward_model() -> None:
    forward, backward = mmi_setup()
    g = torch.Generator().manual_seed(5)
    changed = 0
    for i in range(12):
        source = random_ids(4 + i % 4, SRC_VOCAB, g)
        plain = DecodeParams(max_length=8, beam_size=4, n_best=4)
        pool = generate(forward, [GenerationRequest("r", source, plain)])["r"]
        mmi = dataclasses.replace(plain, n_best=2, mmi_weight=0.7)
        got = generate(forward, [GenerationRequest("r", source, mmi)], backward=backward)["r"]
        order = mmi_order(
            [h.normalized for h in pool], backward_scores(backward, source, [h.tokens for h in pool]), 0.7
        )
        assert [h.tokens for h in got] == [pool[j].tokens for j in order[:2]]
        assert [h.score for h in got] == [pool[j].score for j in order[:2]]  # the forward model's scores
        changed += order[0] != 0
    assert changed >= 2  # the backward model changed the best reply of some messages


def test_mmi_weight_zero_is_plain_beam_search_and_batched_equals_alone() -> None:
    forward, backward = mmi_setup()
    g = torch.Generator().manual_seed(6)
    sources = [random_ids(n, SRC_VOCAB, g) for n in (3, 6, 4, 5)]
    params = [
        DecodeParams(max_length=8, beam_size=3, mmi_weight=0.5),
        DecodeParams(max_length=8, beam_size=3),
        DecodeParams(max_length=8),
        DecodeParams(max_length=8, beam_size=4, n_best=2, mmi_weight=1.0),
    ]
    requests = [GenerationRequest(str(i), s, p) for i, (s, p) in enumerate(zip(sources, params, strict=True))]
    together = generate(forward, requests, backward=backward)
    for r in requests:
        alone = generate(forward, [r], backward=backward)[r.id]
        assert [h.tokens for h in together[r.id]] == [h.tokens for h in alone]
    assert [h.tokens for h in together["1"]] == [h.tokens for h in generate(forward, [requests[1]])["1"]]


def test_mmi_needs_beams_and_a_backward_model() -> None:
    with pytest.raises(ValueError, match="needs beam_size > 1"):
        DecodeParams(mmi_weight=0.5)
    forward, _ = mmi_setup()
    batch = GenerationBatch(forward)
    with pytest.raises(ValueError, match="needs a model with a backward model"):
        batch.add([GenerationRequest("r", [5, 6], DecodeParams(beam_size=2, mmi_weight=0.5))])
    assert len(batch) == 0
