"""GenerationBatch / generate: batching never changes a request's result; beams, lengths, joins and leaves."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from seq2seq.config import BOS_ID, EOS_ID, ModelConfig
from seq2seq.decoding import DecodeParams, FinishReason, length_penalty
from seq2seq.generation import GenerationBatch, GenerationRequest, Hypothesis, StepEvent, generate, shows_fewer
from seq2seq.model import Seq2Seq
from seq2seq.state import DecoderState
from tests.seq2seq.conftest import CONFIGS, random_ids, random_model

SRC_LENGTHS = [1, 2, 3, 5, 7, 9, 4, 6, 8, 3]
# Different max/min lengths make requests leave the batch at different steps.
PARAMS = [
    DecodeParams(max_length=12),
    DecodeParams(max_length=3),
    DecodeParams(max_length=12, min_length=4),
    DecodeParams(max_length=1),
    DecodeParams(max_length=8),
    DecodeParams(max_length=12),
    DecodeParams(max_length=5),
    DecodeParams(max_length=10, min_length=2),
    DecodeParams(max_length=12),
    DecodeParams(max_length=7),
]


def make_requests(
    cfg: ModelConfig, lengths: Sequence[int], params: Sequence[DecodeParams], seed: int = 0, prefix: str = "r"
) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(seed)
    return [
        GenerationRequest(f"{prefix}{i}", random_ids(n, cfg.src_vocab_size, g), p)
        for i, (n, p) in enumerate(zip(lengths, params, strict=True))
    ]


def alone(model: Seq2Seq, request: GenerationRequest) -> list[Hypothesis]:
    return generate(model, [request])[request.id]


def assert_same_hypotheses(got: list[Hypothesis], want: list[Hypothesis]) -> None:
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.finish_reason for h in got] == [h.finish_reason for h in want]
    torch.testing.assert_close(
        torch.tensor([h.score for h in got]), torch.tensor([h.score for h in want]), atol=1e-4, rtol=1e-5
    )


def run_to_end(batch: GenerationBatch, results: dict[str, list[Hypothesis]], max_steps: int = 100) -> None:
    for _ in range(max_steps):
        if not batch.active:
            return
        for event in batch.step():
            if event.finished is not None:
                results[event.request_id] = event.finished
    raise AssertionError("batch did not finish")


def sequence_logprob(model: Seq2Seq, src: Sequence[int], tokens: list[int], with_eos: bool) -> float:
    """Teacher-forced log-probability of ``tokens`` (+ EOS) given ``src``."""
    target = [*tokens, EOS_ID] if with_eos else tokens
    if not target:
        return 0.0
    with torch.no_grad():
        logits = model(torch.tensor([list(src)]), torch.tensor([len(src)]), torch.tensor([[BOS_ID, *target[:-1]]]))
    logprobs = torch.log_softmax(logits[0].float(), -1)
    return logprobs.gather(1, torch.tensor(target)[:, None]).sum().item()


# -- greedy -----------------------------------------------------------------------------------


def test_batched_greedy_equals_alone(model: Seq2Seq) -> None:
    requests = make_requests(model.cfg, SRC_LENGTHS, PARAMS)
    batched = generate(model, requests)
    assert set(batched) == {r.id for r in requests}
    outputs = {tuple(batched[r.id][0].tokens) for r in requests}
    assert len(outputs) >= 4, "the random model should decode different sources differently"
    for r in requests:
        assert len(batched[r.id]) == 1
        assert_same_hypotheses(batched[r.id], alone(model, r))
    # Admitting a few rows at a time (requests join as others leave) changes nothing either.
    assert generate(model, requests, max_rows=3).keys() == batched.keys()
    for r_id, hyps in generate(model, requests, max_rows=3).items():
        assert_same_hypotheses(hyps, batched[r_id])


def test_greedy_hypothesis_is_consistent(model: Seq2Seq) -> None:
    requests = make_requests(model.cfg, SRC_LENGTHS, PARAMS)
    events: list[StepEvent] = []
    results = generate(model, requests, on_event=events.append)
    reasons = set()
    for r in requests:
        (hyp,) = results[r.id]
        reasons.add(hyp.finish_reason)
        streamed = [e.token for e in events if e.request_id == r.id and e.token is not None]
        assert streamed == hyp.tokens  # the token events spell the final output, EOS never sent
        assert [e.finished for e in events if e.request_id == r.id and e.finished is not None] == [[hyp]]
        assert EOS_ID not in hyp.tokens
        assert r.params.min_length <= len(hyp.tokens) <= r.params.max_length
        if hyp.finish_reason is FinishReason.LENGTH:
            assert len(hyp.tokens) == r.params.max_length
        assert hyp.normalized == hyp.score  # no length normalisation outside beam search
        with_eos = hyp.finish_reason is FinishReason.EOS
        assert hyp.score == pytest.approx(sequence_logprob(model, r.src_ids, hyp.tokens, with_eos), abs=1e-4)
    assert reasons == {FinishReason.EOS, FinishReason.LENGTH}


def test_beam_size_one_is_greedy() -> None:
    model = random_model(CONFIGS["attention"])
    for r in make_requests(model.cfg, SRC_LENGTHS, PARAMS):
        beam1 = GenerationRequest(r.id, r.src_ids, DecodeParams(max_length=r.params.max_length, beam_size=1))
        greedy = GenerationRequest(r.id, r.src_ids, DecodeParams(max_length=r.params.max_length))
        assert_same_hypotheses(alone(model, beam1), alone(model, greedy))


# -- lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("beam_size", [1, 3])
def test_min_length_blocks_an_eager_eos(beam_size: int) -> None:
    model = random_model(CONFIGS["attention"], eos_bias=50.0)  # EOS is by far the likeliest token
    (src,) = make_requests(model.cfg, [4], [DecodeParams()])
    eager = alone(model, GenerationRequest("a", src.src_ids, DecodeParams(beam_size=beam_size)))
    assert eager[0].tokens == [] and eager[0].finish_reason is FinishReason.EOS
    params = DecodeParams(min_length=3, max_length=10, beam_size=beam_size, n_best=beam_size)
    hyps = alone(model, GenerationRequest("b", src.src_ids, params))
    assert len(hyps) == beam_size
    for hyp in hyps:
        assert len(hyp.tokens) == 3 and hyp.finish_reason is FinishReason.EOS


@pytest.mark.parametrize("beam_size", [1, 3])
def test_min_length_counts_no_blank_tokens(beam_size: int) -> None:
    """A row of only pieces that show no text (a lone "▁") may not end: a reply of min_length 1 is never empty."""
    model = random_model(CONFIGS["attention"], eos_bias=50.0)
    (src,) = make_requests(model.cfg, [4], [DecodeParams()])
    params = DecodeParams(min_length=1, max_length=10, beam_size=beam_size, n_best=beam_size)
    eager = generate(model, [GenerationRequest("a", src.src_ids, params)])["a"]
    assert all(len(h.tokens) == 1 for h in eager)  # one token, then the likeliest EOS
    blank = frozenset(t for h in eager for t in h.tokens)  # say those show no text
    hyps = generate(model, [GenerationRequest("b", src.src_ids, params)], blank_ids=blank)["b"]
    assert len(hyps) == beam_size
    for hyp in hyps:
        shown = [i for i, t in enumerate(hyp.tokens) if t not in blank]
        assert shown == [len(hyp.tokens) - 1] and hyp.finish_reason is FinishReason.EOS  # ends at the first


def test_shows_fewer() -> None:
    blank = frozenset({4})
    assert shows_fewer([], 1, blank) and shows_fewer([4, 4], 1, blank) and not shows_fewer([4, 7], 1, blank)
    assert shows_fewer([7, 4, 4], 2, blank) and not shows_fewer([7, 4, 8], 2, blank)
    assert not shows_fewer([], 0, blank) and not shows_fewer([4], 0, blank)  # no minimum
    assert shows_fewer([4], 2, frozenset()) and not shows_fewer([4, 4], 2, frozenset())  # nothing blank: the length


@pytest.mark.parametrize("beam_size", [1, 3])
def test_max_length_stops_a_model_that_never_ends(beam_size: int) -> None:
    model = random_model(CONFIGS["context-every-step"], eos_bias=-50.0)
    (src,) = make_requests(model.cfg, [4], [DecodeParams()])
    for max_length in (1, 6):
        params = DecodeParams(max_length=max_length, beam_size=beam_size, n_best=beam_size)
        hyps = alone(model, GenerationRequest("a", src.src_ids, params))
        assert len(hyps) == beam_size
        for hyp in hyps:
            assert len(hyp.tokens) == max_length and hyp.finish_reason is FinishReason.LENGTH


# -- beam search ------------------------------------------------------------------------------


def test_beam_returns_n_best_distinct_sorted_and_correctly_scored(model: Seq2Seq) -> None:
    alpha = 0.8
    params = DecodeParams(max_length=8, beam_size=5, n_best=4, length_penalty=alpha)
    for r in make_requests(model.cfg, [3, 6, 1], [params] * 3):
        hyps = alone(model, r)
        assert len(hyps) == 4
        assert len({tuple(h.tokens) for h in hyps}) == 4
        assert [h.normalized for h in hyps] == sorted((h.normalized for h in hyps), reverse=True)
        for hyp in hyps:
            assert len(hyp.tokens) <= 8 and EOS_ID not in hyp.tokens
            assert hyp.normalized == pytest.approx(hyp.score / length_penalty(len(hyp.tokens), alpha))
            # Back-pointers and reordered states must reproduce the real log-probability of each path.
            with_eos = hyp.finish_reason is FinishReason.EOS
            assert hyp.score == pytest.approx(sequence_logprob(model, r.src_ids, hyp.tokens, with_eos), abs=1e-4)


def test_beam_is_exhaustive_when_wide_enough() -> None:
    """With 5 ordinary tokens and max_length 3, 125 beams keep every path: compare with brute force."""
    cfg = ModelConfig(architecture="attention", src_vocab_size=9, tgt_vocab_size=6, emb_dim=8, hidden_dim=8)
    model = random_model(cfg, std=1.0, eos_bias=0.5)
    src = [5, 7, 4, 8]
    alpha, max_length = 1.0, 3
    params = DecodeParams(max_length=max_length, beam_size=125, n_best=20, length_penalty=alpha)
    hyps = alone(model, GenerationRequest("x", src, params))

    ordinary = [t for t in range(cfg.tgt_vocab_size) if t != EOS_ID]
    candidates = []
    for n in range(max_length + 1):
        for tokens in itertools.product(ordinary, repeat=n):
            with_eos = n < max_length
            score = sequence_logprob(model, src, list(tokens), with_eos)
            candidates.append((score / length_penalty(n, alpha), list(tokens), score))
    candidates.sort(key=lambda c: c[0], reverse=True)
    assert [h.tokens for h in hyps] == [c[1] for c in candidates[:20]]
    torch.testing.assert_close(torch.tensor([h.score for h in hyps]), torch.tensor([c[2] for c in candidates[:20]]))


class ScriptedModel:
    """A stand-in for Seq2Seq whose next-token distribution depends only on the last token and the step.

    After BOS or 4 it says 4 (97%), 5 (2%) or EOS (1%); from step 3 on, 4 is followed by EOS (97%).
    After 5 it says EOS (90%). The best output is therefore "4 4 4" (log-prob ~ -0.12), while the
    second and third beams keep offering early EOS endings with scores around -4.
    """

    vocab = 8

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> DecoderState:
        zeros = torch.zeros(1, src.size(0), 1)
        return DecoderState(zeros, zeros)  # h counts the decoder steps

    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        probs = torch.full((len(tokens), self.vocab), 1e-6)
        for row, (token, step) in enumerate(zip(tokens.tolist(), state.h[0, :, 0].tolist(), strict=True)):
            if token == 5:
                probs[row, [EOS_ID, 4, 5]] = torch.tensor([0.9, 0.05, 0.05])
            elif token == 4 and step >= 3:
                probs[row, [EOS_ID, 4, 5]] = torch.tensor([0.97, 0.02, 0.01])
            else:
                probs[row, [4, 5, EOS_ID]] = torch.tensor([0.97, 0.02, 0.01])
        logprobs = (probs / probs.sum(-1, keepdim=True)).log()
        return logprobs, state.with_lstm(state.h + 1, state.c)


@pytest.mark.parametrize("n_best", [1, 3])
def test_beam_does_not_stop_on_poor_endings_while_a_better_beam_runs(n_best: int) -> None:
    model = ScriptedModel()
    greedy = generate(model, [GenerationRequest("g", [4], DecodeParams(max_length=10))])["g"]  # type: ignore[arg-type]
    assert greedy[0].tokens == [4, 4, 4]
    params = DecodeParams(max_length=10, beam_size=3, n_best=n_best, length_penalty=1.0)
    hyps = generate(model, [GenerationRequest("b", [4], params)])["b"]  # type: ignore[arg-type]
    assert hyps[0].tokens == [4, 4, 4] and hyps[0].finish_reason is FinishReason.EOS
    assert hyps[0].score == pytest.approx(greedy[0].score)
    assert len(hyps) == n_best


def test_batched_beam_equals_alone(model: Seq2Seq) -> None:
    params = [
        DecodeParams(max_length=8, beam_size=4, n_best=2, length_penalty=1.0),
        DecodeParams(max_length=10),
        DecodeParams(max_length=6, beam_size=3, n_best=3, length_penalty=0.0),
        DecodeParams(max_length=10, sample=True, seed=5, temperature=0.8),
        DecodeParams(max_length=9, beam_size=2, min_length=2),
    ]
    requests = make_requests(model.cfg, [3, 7, 1, 5, 9], params)
    batched = generate(model, requests)
    for r in requests:
        assert_same_hypotheses(batched[r.id], alone(model, r))


# -- sampling ---------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_in_any_batch() -> None:
    model = random_model(CONFIGS["attention"], std=0.5)
    srcs = make_requests(model.cfg, [4, 6, 2, 5], [DecodeParams()] * 4)
    params = [DecodeParams(max_length=10, sample=True, seed=s, top_p=0.95) for s in (1, 2, 3, 4)]
    requests = [GenerationRequest(r.id, r.src_ids, p) for r, p in zip(srcs, params, strict=True)]
    batched = generate(model, requests)
    for r in requests:
        assert_same_hypotheses(batched[r.id], alone(model, r))
    # Seeds matter: the same source with other seeds gives other samples.
    same_src = [
        GenerationRequest(str(s), srcs[1].src_ids, DecodeParams(max_length=10, sample=True, seed=s)) for s in range(6)
    ]
    assert len({tuple(h[0].tokens) for h in generate(model, same_src).values()}) > 1


def test_sampling_with_top_k_one_is_greedy() -> None:
    model = random_model(CONFIGS["context-init"])
    for r in make_requests(model.cfg, SRC_LENGTHS[:4], PARAMS[:4]):
        p = r.params
        sampled = GenerationRequest(
            r.id, r.src_ids, DecodeParams(max_length=p.max_length, min_length=p.min_length, sample=True, top_k=1)
        )
        assert_same_hypotheses(alone(model, sampled), alone(model, r))


# -- continuous batching: joining and leaving -------------------------------------------------


def test_remove_drops_rows_and_others_finish_unchanged(model: Seq2Seq) -> None:
    params = [
        DecodeParams(max_length=9, min_length=3),
        DecodeParams(max_length=9, min_length=3, beam_size=3, n_best=2),
        DecodeParams(max_length=9, min_length=4),
        DecodeParams(max_length=9, min_length=3, sample=True, seed=11),
        DecodeParams(max_length=9, min_length=3, beam_size=2),
    ]
    requests = make_requests(model.cfg, [5, 9, 2, 4, 7], params)
    batch = GenerationBatch(model)
    batch.add(requests)
    assert len(batch) == 1 + 3 + 1 + 1 + 2
    for _ in range(2):
        assert all(e.finished is None for e in batch.step())
    assert batch.remove({"r1", "r4", "unknown"}) == ["r1", "r4"]
    assert batch.request_ids == ["r0", "r2", "r3"]
    assert len(batch) == 3 and batch.state is not None and len(batch.state) == 3
    assert batch.remove({"r1"}) == []
    results: dict[str, list[Hypothesis]] = {}
    run_to_end(batch, results)
    assert set(results) == {"r0", "r2", "r3"}
    for r in requests:
        if r.id in results:
            assert_same_hypotheses(results[r.id], alone(model, r))


def test_remove_everything_empties_the_batch(model: Seq2Seq) -> None:
    batch = GenerationBatch(model)
    batch.add(make_requests(model.cfg, [3, 4], [DecodeParams(), DecodeParams(beam_size=2)]))
    batch.step()
    batch.remove({"r0", "r1"})
    assert len(batch) == 0 and batch.state is None and batch.active == []
    assert batch.step() == []


def test_requests_joining_a_running_batch_get_their_solo_results(model: Seq2Seq) -> None:
    first = make_requests(
        model.cfg,
        [3, 2],
        [DecodeParams(max_length=12, min_length=6), DecodeParams(max_length=8, min_length=4)],
        prefix="a",
    )
    later = make_requests(
        model.cfg,
        [9, 1, 6],  # a longer source than any running one: memory widens on append
        [PARAMS[0], DecodeParams(max_length=7, beam_size=3, n_best=3), PARAMS[7]],
        seed=1,
        prefix="b",
    )
    last = make_requests(model.cfg, [4], [DecodeParams(max_length=6, sample=True, seed=3)], seed=2, prefix="c")
    batch = GenerationBatch(model)
    results: dict[str, list[Hypothesis]] = {}
    batch.add(first)
    for _ in range(3):
        for e in batch.step():
            assert e.finished is None
    batch.add(later)
    assert batch.request_ids == ["a0", "a1", "b0", "b1", "b2"]
    for _ in range(2):
        for e in batch.step():
            if e.finished is not None:
                results[e.request_id] = e.finished
    batch.add(last)
    run_to_end(batch, results)
    everything = first + later + last
    assert set(results) == {r.id for r in everything}
    for r in everything:
        assert_same_hypotheses(results[r.id], alone(model, r))


def test_requests_joining_after_rows_finished_get_their_solo_results(model: Seq2Seq) -> None:
    """Finished rows leave in place (``move_rows``); the next requests join into the freed storage."""
    params = [DecodeParams(max_length=n) for n in (1, 6, 2, 5)]  # rows 0 and 2 finish first
    running = make_requests(model.cfg, [4, 8, 3, 5], params, prefix="a")
    # Two rows, no longer than the longest running source: they fit into the storage the running rows hold.
    joining = make_requests(model.cfg, [2, 7], [DecodeParams(max_length=4), PARAMS[0]], seed=1, prefix="b")
    batch = GenerationBatch(model)
    results: dict[str, list[Hypothesis]] = {}
    batch.add(running)
    for _ in range(2):
        for e in batch.step():
            if e.finished is not None:
                results[e.request_id] = e.finished
    assert set(results) == {"a0", "a2"} and len(batch) == 2
    batch.add(joining)
    run_to_end(batch, results)
    for r in running + joining:
        assert_same_hypotheses(results[r.id], alone(model, r))


def test_requests_encoded_on_another_thread_while_the_batch_steps_join_with_their_solo_results(
    model: Seq2Seq,
) -> None:
    """The engine's overlap: ``encode`` on a second thread during ``step``s, ``join`` afterwards."""
    running = make_requests(model.cfg, [5, 3], [DecodeParams(max_length=12, min_length=8), PARAMS[2]], prefix="a")
    joining = make_requests(
        model.cfg, [9, 2], [PARAMS[0], DecodeParams(max_length=6, beam_size=2, n_best=2)], seed=1, prefix="b"
    )
    batch = GenerationBatch(model)
    results: dict[str, list[Hypothesis]] = {}
    batch.add(running)
    with ThreadPoolExecutor(1) as encoder:
        encoded = encoder.submit(batch.encode, joining)
        for _ in range(3):
            for e in batch.step():
                assert e.finished is None
        state = encoded.result()
    assert len(state) == 3 and batch.request_ids == ["a0", "a1"]  # encoding leaves the batch alone
    batch.join(joining, state)
    assert batch.request_ids == ["a0", "a1", "b0", "b1"] and len(batch) == 5
    run_to_end(batch, results)
    for r in running + joining:
        assert_same_hypotheses(results[r.id], alone(model, r))


def test_generation_request_rejects_empty_source() -> None:
    with pytest.raises(ValueError, match="empty"):
        GenerationRequest("x", [])


def test_a_request_that_makes_the_step_raise_is_found_and_the_batch_is_unchanged(model: Seq2Seq) -> None:
    """A sampling request whose top_k overflows a tensor raises in the token choice: the batch is
    left as it was, culprits() names that request alone, and without it every other request,
    sampled ones included, ends exactly as alone."""
    params = [
        DecodeParams(max_length=9, min_length=3),
        DecodeParams(max_length=9, min_length=3, sample=True, top_k=2**63),  # poisoned
        DecodeParams(max_length=9, min_length=3, beam_size=3, n_best=2),
        DecodeParams(max_length=9, min_length=3, sample=True, seed=5, top_p=0.9),
    ]
    requests = make_requests(model.cfg, [5, 4, 7, 6], params)
    batch = GenerationBatch(model)
    batch.add(requests)
    before = batch.state
    with pytest.raises(ValueError, match="Overflow"):
        batch.step()
    assert batch.state is before and all(h == [] for s in batch.active for h in s.histories)
    assert batch.culprits() == ["r1"]
    assert batch.state is before  # the trials ran on copies
    batch.remove({"r1"})
    results: dict[str, list[Hypothesis]] = {}
    run_to_end(batch, results)
    for r in requests:
        if r.id != "r1":
            assert_same_hypotheses(results[r.id], alone(model, r))
