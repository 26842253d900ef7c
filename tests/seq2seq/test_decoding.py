"""Pure decoding functions on hand-made log-probabilities, and DecodeParams validation."""

from __future__ import annotations

import math

import pytest
import torch

from seq2seq.config import EOS_ID
from seq2seq.decoding import (
    DecodeParams,
    Strategy,
    beam_candidates,
    filter_logits,
    forbid,
    greedy,
    length_penalty,
    sample,
)

NEG_INF = float("-inf")


def logprobs_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def rows_params(n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> tuple[torch.Tensor, ...]:
    return torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p)


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- greedy / forbid -----------------------------------------------------------------------


def test_greedy_picks_row_argmax() -> None:
    lp = logprobs_of([[0.1, 0.2, 0.3, 0.15, 0.25], [0.05, 0.05, 0.05, 0.05, 0.8], [0.1, 0.1, 0.1, 0.6, 0.1]])
    assert greedy(lp).tolist() == [2, 4, 3]


def test_greedy_takes_the_first_of_tied_maxima_like_torch_in_any_layout() -> None:
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(64, 300, generator=g), -1)
    lp[0] = float("-inf")  # every token forbidden: index 0, as torch.argmax says
    lp[1, [7, 9, 200]] = lp[1].max() + 1  # a tie: the first one
    lp[2, 5:] = float("-inf")
    for rows in (lp, lp[::2], lp.t().contiguous().t()):  # contiguous, strided rows, column-major
        tokens = greedy(rows)
        assert tokens.dtype == torch.long
        assert tokens.tolist() == rows.argmax(-1).tolist()
    assert greedy(lp)[:2].tolist() == [0, 7]


def test_forbid_eos_only_on_given_rows_and_without_mutating() -> None:
    lp = logprobs_of([[0.1, 0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.1, 0.6, 0.1]])
    original = lp.clone()
    out = forbid(lp, torch.tensor([True, False]))
    assert out[0, EOS_ID] == NEG_INF and out[1, EOS_ID] == lp[1, EOS_ID]
    assert torch.equal(out[0, :EOS_ID], lp[0, :EOS_ID]) and torch.equal(out[:, EOS_ID + 1 :], lp[:, EOS_ID + 1 :])
    assert torch.equal(lp, original)
    assert greedy(out).tolist() == [0, EOS_ID]
    assert forbid(lp, torch.tensor([False, False])) is lp


def test_forbid_several_tokens() -> None:
    lp = logprobs_of([[0.1, 0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.1, 0.6, 0.1]])
    out = forbid(lp, torch.tensor([False, True]), [1, 4])
    assert torch.equal(out[0], lp[0]) and out[1, 1] == out[1, 4] == NEG_INF
    assert torch.equal(out[1, [0, 2, 3]], lp[1, [0, 2, 3]])


# -- filter_logits ----------------------------------------------------------------------------

PROBS = [0.05, 0.4, 0.1, 0.3, 0.15]  # ranks: 1 (0.4), 3 (0.3), 4 (0.15), 2 (0.1), 0 (0.05)


def test_filter_logits_off_is_the_distribution() -> None:
    probs = filter_logits(logprobs_of([PROBS]), *rows_params(1))
    torch.testing.assert_close(probs, torch.tensor([PROBS]))


def test_top_k_keeps_the_k_most_likely_renormalised() -> None:
    probs = filter_logits(logprobs_of([PROBS, PROBS]), torch.ones(2), torch.tensor([2, 1]), torch.ones(2))
    torch.testing.assert_close(probs[0], torch.tensor([0, 0.4 / 0.7, 0, 0.3 / 0.7, 0]))
    torch.testing.assert_close(probs[1], torch.tensor([0.0, 1, 0, 0, 0]))


def test_top_p_keeps_the_smallest_prefix_covering_p() -> None:
    lp = logprobs_of([PROBS] * 4)
    probs = filter_logits(lp, torch.ones(4), torch.zeros(4, dtype=torch.long), torch.tensor([0.5, 0.69, 0.71, 0.01]))
    kept = [set(torch.nonzero(row).flatten().tolist()) for row in probs]
    assert kept == [{1, 3}, {1, 3}, {1, 3, 4}, {1}]
    torch.testing.assert_close(probs[2], torch.tensor([0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85]))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_temperature_sharpens_and_flattens() -> None:
    lp = logprobs_of([PROBS] * 3)
    probs = filter_logits(lp, torch.tensor([1.0, 0.5, 2.0]), torch.zeros(3, dtype=torch.long), torch.ones(3))
    p = torch.tensor(PROBS)
    torch.testing.assert_close(probs[1], p**2 / (p**2).sum())
    torch.testing.assert_close(probs[2], p.sqrt() / p.sqrt().sum())
    assert probs[1].max() > probs[0].max() > probs[2].max()


def test_filter_respects_forbidden_tokens() -> None:
    lp = forbid(logprobs_of([PROBS]), torch.tensor([True]))
    probs = filter_logits(lp, *rows_params(1, temperature=3.0))
    assert probs[0, EOS_ID] == 0 and math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)


# -- sample -----------------------------------------------------------------------------------


def test_sample_is_reproducible_per_generator() -> None:
    probs = torch.tensor([PROBS] * 3)
    g1, g2 = generators(1, 2, 3), generators(1, 2, 3)
    first = [sample(probs, g1).tolist() for _ in range(10)]
    again = [sample(probs, g2).tolist() for _ in range(10)]
    assert first == again
    assert len({tuple(draw) for draw in first}) > 1  # the generators advance
    # A row's draw depends only on its own generator, not on the other rows of the batch.
    g = generators(7)
    alone = [sample(probs[:1], g).item() for _ in range(20)]
    g_batch = generators(7, 8)
    batched = [sample(probs[:2], g_batch)[0].item() for _ in range(20)]
    assert alone == batched


def test_sample_draws_only_allowed_tokens_with_the_right_frequencies() -> None:
    probs = filter_logits(logprobs_of([PROBS]), *rows_params(1, top_k=3))  # tokens 1, 3, 4 allowed
    g = generators(0)
    draws = torch.tensor([sample(probs, g).item() for _ in range(2000)])
    assert set(draws.tolist()) == {1, 3, 4}
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.04, rtol=0)


def test_sample_one_hot_is_certain() -> None:
    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    for seed in range(20):
        assert sample(probs, generators(seed, seed + 100)).tolist() == [2, 3]


# -- beam_candidates / length_penalty ----------------------------------------------------------


def test_beam_candidates_order_and_backpointers() -> None:
    logprobs = logprobs_of([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    scores = torch.tensor([math.log(0.5), math.log(0.4)])
    best, beams, tokens = beam_candidates(logprobs, scores, 3)
    # Totals: beam0 -> 0.05, 0.30, 0.15; beam1 -> 0.20, 0.10, 0.10.
    assert beams.tolist() == [0, 1, 0] and tokens.tolist() == [1, 0, 2]
    torch.testing.assert_close(best.exp(), torch.tensor([0.30, 0.20, 0.15]))
    assert torch.all(best[:-1] >= best[1:])


def test_beam_candidates_skip_dead_beams_and_cap_n() -> None:
    logprobs = logprobs_of([[0.2, 0.8], [0.9, 0.1]])
    scores = torch.tensor([0.0, NEG_INF])  # beam 1 is a copy that must not be extended
    best, beams, tokens = beam_candidates(logprobs, scores, 10)
    assert len(best) == 4  # min(n, K * V)
    assert beams[:2].tolist() == [0, 0] and tokens[:2].tolist() == [1, 0]
    assert torch.isinf(best[2:]).all()


def test_length_penalty() -> None:
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(1, 1.0) == 1.0
    assert math.isclose(length_penalty(7, 1.0), 2.0)
    assert math.isclose(length_penalty(13, 0.5), math.sqrt(3.0))
    assert length_penalty(20, 1.0) > length_penalty(10, 1.0)


# -- DecodeParams -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 0}, "max_length"),
        ({"min_length": 5, "max_length": 4}, "min_length"),
        ({"min_length": -1}, "min_length"),
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2, "n_best": 3}, "n_best"),
        ({"n_best": 0}, "n_best"),
        ({"sample": True, "beam_size": 4}, "cannot be combined"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"length_penalty": -0.1}, "length_penalty"),
    ],
)
def test_decode_params_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecodeParams(**kwargs)


def test_decode_params_strategy_and_rows() -> None:
    assert DecodeParams().strategy is Strategy.GREEDY and DecodeParams().rows == 1
    assert DecodeParams(sample=True, top_p=0.9, seed=3).strategy is Strategy.SAMPLE
    beam = DecodeParams(beam_size=4, n_best=4)
    assert beam.strategy is Strategy.BEAM and beam.rows == 4
    assert DecodeParams(beam_size=1, length_penalty=0.6).strategy is Strategy.GREEDY
