"""No repeated n-grams: the rule itself, and generation with it (greedy and beam, batched and alone)."""

from __future__ import annotations

import pytest
import torch

from seq2seq.decoding import DecodeParams, block_repeated_ngrams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.model import Seq2Seq
from tests.seq2seq.conftest import random_ids, random_model
from tests.seq2seq.test_generation import CONFIGS, assert_same_hypotheses


def repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_the_token_that_would_complete_a_seen_ngram_is_blocked() -> None:
    logprobs = torch.zeros(4, 10)
    histories = [[5, 6, 7, 5, 6], [5, 6, 7, 5, 6], [1, 2, 1, 2, 1], [5, 6]]
    out = block_repeated_ngrams(logprobs, histories, [3, 0, 2, 3])
    blocked = {(r, t) for r, t in torch.nonzero(out == float("-inf")).tolist()}
    # row 0: "5 6" was followed by 7; row 1: off; row 2: "1" was followed by 2 (twice); row 3: too short
    assert blocked == {(0, 7), (2, 2)}
    assert torch.equal(logprobs, torch.zeros(4, 10))  # the input is not changed


def test_nothing_is_copied_when_no_row_blocks() -> None:
    logprobs = torch.zeros(2, 10)
    assert block_repeated_ngrams(logprobs, [[1, 2, 3], [4]], [0, 3]) is logprobs


def loop_prone_model() -> Seq2Seq:
    """Tiny random attention model without an EOS bias: it decodes to the length cap, repeating itself."""
    return random_model(CONFIGS["attention"], seed=3, eos_bias=-4.0)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_generation_with_the_rule_never_repeats_an_ngram(beam_size: int) -> None:
    model = loop_prone_model()
    g = torch.Generator().manual_seed(0)
    sources = [random_ids(n, model.cfg.src_vocab_size, g) for n in (3, 5, 8, 4, 6, 7)]

    def run(n: int) -> dict[str, list[list[int]]]:
        params = DecodeParams(max_length=30, beam_size=beam_size, n_best=beam_size, no_repeat_ngram_size=n)
        requests = [GenerationRequest(str(i), src, params) for i, src in enumerate(sources)]
        return {k: [h.tokens for h in hyps] for k, hyps in generate(model, requests).items()}

    free, blocked = run(0), run(3)
    assert any(repeats(tokens, 3) for hyps in free.values() for tokens in hyps)  # the model loops without it
    for hyps in blocked.values():
        for tokens in hyps:
            assert not repeats(tokens, 3), tokens


def test_requests_with_and_without_the_rule_batched_equal_alone() -> None:
    model = loop_prone_model()
    g = torch.Generator().manual_seed(1)
    requests = [
        GenerationRequest(
            str(i),
            random_ids(3 + i, model.cfg.src_vocab_size, g),
            DecodeParams(max_length=25, beam_size=beam, no_repeat_ngram_size=n),
        )
        for i, (beam, n) in enumerate([(1, 0), (1, 3), (3, 2), (3, 0), (1, 4), (2, 3)])
    ]
    batched = generate(model, requests)
    for r in requests:
        assert_same_hypotheses(batched[r.id], generate(model, [r])[r.id])
