"""A decoder batch that requests join and leave at every step (continuous batching).

:class:`GenerationBatch` owns one :class:`DecoderState` whose rows belong to many
requests: one row for a greedy or sampled request, ``beam_size`` rows for a beam-search
request (beams are ordinary rows of the same batch). Each :meth:`GenerationBatch.step`

1. runs ONE decoder step for all rows,
2. picks tokens per request with the pure functions of :mod:`seq2seq.decoding`,
3. retires finished requests in place (``state.move_rows``), or with beams reorders rows
   with a single ``state.select``.

:meth:`add` encodes new requests as one batch and appends them to the running
state, so a new request never waits for the others to finish; it is :meth:`encode`
then :meth:`join`, which the engine runs on two threads. Static batching (fill, then
run to completion) and one-at-a-time decoding are the same object used differently.

A request with ``return_attention`` (attention models) gets, with each hypothesis, the
decoder's attention weights of every step that produced one of its tokens. Only its own rows
are gathered and copied, once per step for all such requests; without one, the step's weights
are left where the model put them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from seq2seq.config import BOS_ID, EOS_ID
from seq2seq.decoding import (
    DecodeParams,
    FinishReason,
    Strategy,
    beam_candidates,
    block_repeated_ngrams,
    filter_logits,
    forbid,
    greedy,
    length_penalty,
    sample,
)
from seq2seq.model import Seq2Seq, pad
from seq2seq.rerank import backward_scores, mmi_order
from seq2seq.state import DecoderState


class DecodeRequest(Protocol):
    """What the batch reads of a request: any object with these attributes (the service's own
    request type joins the batch as it is)."""

    @property
    def id(self) -> str: ...

    @property
    def src_ids(self) -> Sequence[int]: ...  # source piece ids, no BOS/EOS

    @property
    def params(self) -> DecodeParams: ...

    @property
    def return_attention(self) -> bool: ...  # keep the attention weights for the hypotheses


@dataclass(frozen=True)
class GenerationRequest:
    """A :class:`DecodeRequest` for offline decoding (evaluation, benchmarks, tests)."""

    id: str
    src_ids: Sequence[int]  # source piece ids, no BOS/EOS
    params: DecodeParams = DecodeParams()
    return_attention: bool = False

    def __post_init__(self) -> None:
        if not self.src_ids:
            raise ValueError("source is empty")


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated ids, EOS excluded
    score: float  # sum of token log-probs
    normalized: float  # score / length penalty: what beams are ranked by
    finish_reason: FinishReason
    # With return_attention: one row per token (EOS's step excluded), each the step's weights over
    # the source pieces, summing to 1.
    attention: list[list[float]] | None = None


@dataclass(frozen=True)
class StepEvent:
    request_id: str
    token: int | None = None  # the new token of a greedy / sampled request (never EOS)
    finished: list[Hypothesis] | None = None  # n_best hypotheses, best first, once the request is done


@dataclass
class _Sequence:
    """Bookkeeping of one request's rows; row order in the batch follows ``GenerationBatch.active``."""

    request: DecodeRequest
    histories: list[list[int]]  # per live row: tokens so far
    scores: list[float]  # per live row: cumulative log-prob
    generator: torch.Generator | None = None
    finished: list[Hypothesis] = field(default_factory=list)
    attention: list[list[torch.Tensor]] | None = None  # per live row: each step's weights (S,), when asked
    long_enough: bool = False  # every row shows min_length tokens: so will every row it grows into

    def steps(self, row: int) -> list[torch.Tensor] | None:
        """The attention weights of live row ``row`` so far, when the request asked for them."""
        return None if self.attention is None else self.attention[row]

    @property
    def rows(self) -> int:
        return len(self.histories)

    @property
    def length(self) -> int:
        return len(self.histories[0])

    def copy(self) -> _Sequence:
        """An independent copy (its own generator at the same point), for a trial step."""
        generator = None
        if self.generator is not None:
            generator = torch.Generator()
            generator.set_state(self.generator.get_state())
        attention = None if self.attention is None else [list(a) for a in self.attention]
        return _Sequence(
            self.request,
            [list(h) for h in self.histories],
            list(self.scores),
            generator,
            list(self.finished),
            attention,
            self.long_enough,
        )


DecodeStep = Callable[[torch.Tensor, DecoderState], tuple[torch.Tensor, DecoderState]]


def shows_fewer(history: Sequence[int], min_length: int, blank_ids: frozenset[int]) -> bool:
    """Whether fewer than ``min_length`` of the tokens in ``history`` show text: until then a row
    may not end, so a reply of ``min_length`` 1 is never empty (nor a lone "▁")."""
    if len(history) < min_length:
        return True
    if not blank_ids or min_length <= 0:
        return False
    shown = 0
    for token in history:  # stops at the min_length-th token that shows text: the first, mostly
        if token not in blank_ids:
            shown += 1
            if shown >= min_length:
                return False
    return True


class GenerationBatch:
    def __init__(
        self,
        model: Seq2Seq,
        device: torch.device | str = "cpu",
        decode_step: DecodeStep | None = None,
        backward: Seq2Seq | None = None,
        blank_ids: frozenset[int] = frozenset(),
    ) -> None:
        """``decode_step``: how a step runs, ``model.decode_step`` by default (see :mod:`seq2seq.cuda_graphs`);
        ``backward``: the model p(source | output) that reranks beams of requests with ``mmi_weight``
        (see :mod:`seq2seq.rerank`); ``blank_ids``: target pieces that show no text on their own
        (:attr:`~seq2seq.tokenizer.Tokenizer.blank_ids`), which ``min_length`` does not count."""
        self.model = model
        self.device = torch.device(device)
        self.decode_step = decode_step or model.decode_step
        self.backward = backward
        self.blank_ids = blank_ids
        self.state: DecoderState | None = None
        self.last_tokens = torch.empty(0, dtype=torch.long, device=self.device)  # (B,)
        self.active: list[_Sequence] = []

    def __len__(self) -> int:
        """Rows in the batch."""
        return len(self.last_tokens)

    @property
    def request_ids(self) -> list[str]:
        return [s.request.id for s in self.active]

    # -- joining ---------------------------------------------------------------------------
    def add(self, requests: Sequence[DecodeRequest]) -> None:
        """Encode ``requests`` as one batch and append their rows (``beam_size`` each)."""
        if requests:
            self.join(requests, self.encode(requests))

    @torch.inference_mode()
    def encode(self, requests: Sequence[DecodeRequest]) -> DecoderState:
        """The decoder rows of ``requests`` (``beam_size`` each), encoded as one batch, for :meth:`join`.

        Reads the model and nothing of the running batch, so it may run on another thread
        while :meth:`step` runs: the engine encodes arrivals beside the decoding batch.
        """
        src = pad([r.src_ids for r in requests])
        lengths = torch.tensor([len(r.src_ids) for r in requests])
        if self.device.type == "cuda":
            src = src.pin_memory()  # lets the copy below overlap with queued GPU work
        state = self.model.encode(src.to(self.device, non_blocking=True), lengths)
        if state.memory is None and any(r.return_attention for r in requests):
            raise ValueError("return_attention needs a model with attention")
        if self.backward is None and any(r.params.mmi_weight for r in requests):
            raise ValueError("mmi_weight needs a model with a backward model")
        rows = [r.params.rows for r in requests]
        if any(n > 1 for n in rows):
            tile = torch.repeat_interleave(torch.arange(len(requests)), torch.tensor(rows))
            state = state.select(tile)
        return state

    @torch.inference_mode()  # like step(): the state's storage is written in place by both
    def join(self, requests: Sequence[DecodeRequest], state: DecoderState) -> None:
        """Append ``requests``, encoded by :meth:`encode` into ``state``, to the running batch."""
        self.state = state if self.state is None else self.state.append(state)
        bos = torch.full((len(state),), BOS_ID, dtype=torch.long, device=self.device)
        self.last_tokens = torch.cat([self.last_tokens, bos])
        for r in requests:
            k = r.params.rows
            generator = None
            if r.params.strategy is Strategy.SAMPLE:
                generator = torch.Generator()
                generator.manual_seed(r.params.seed if r.params.seed is not None else torch.seed())
            # Beam rows start as copies of one hypothesis: only the first may be extended at step 0.
            scores = [0.0] + [float("-inf")] * (k - 1)
            attention: list[list[torch.Tensor]] | None = [[] for _ in range(k)] if r.return_attention else None
            self.active.append(_Sequence(r, [[] for _ in range(k)], scores, generator, attention=attention))

    # -- leaving ---------------------------------------------------------------------------
    @torch.inference_mode()
    def remove(self, request_ids: set[str]) -> list[str]:
        """Drop the rows of these requests (cancelled, timed out); returns the ids that were here."""
        keep_rows: list[int] = []
        kept: list[_Sequence] = []
        removed: list[str] = []
        offset = 0
        for seq in self.active:
            if seq.request.id in request_ids:
                removed.append(seq.request.id)
            else:
                keep_rows.extend(range(offset, offset + seq.rows))
                kept.append(seq)
            offset += seq.rows
        if removed:
            self._reindex(keep_rows, self.last_tokens[keep_rows].tolist() if keep_rows else [])
            self.active = kept
        return removed

    def _fill_holes(self, rows: list[int], tokens: list[int], seqs: list[_Sequence]) -> None:
        """Drop finished rows by moving the last live rows into their places (``rows`` ascending).

        Selecting the survivors would copy every row's encoder memory at almost every step of
        a large batch (a few requests finish each step); moving only the rows behind the
        holes copies a few rows. The moved requests change position, and ``active`` with them.
        """
        n = len(rows)
        alive = set(rows)
        holes = [p for p in range(n) if p not in alive]  # finished rows inside the kept prefix
        movers = [r for r in rows if r >= n]  # live rows behind it, as many as there are holes
        order = list(range(n))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        position = {row: i for i, row in enumerate(rows)}
        self.active = [seqs[position[row]] for row in order]
        assert self.state is not None
        if n < len(self.state):  # some row finished (a hole, or at the end)
            self.state = self.state.move_rows(holes, movers, n)
        self.last_tokens = torch.tensor([tokens[position[row]] for row in order], dtype=torch.long, device=self.device)

    def _reindex(self, rows: list[int], tokens: list[int]) -> None:
        if not rows:
            self.state = None
            self.last_tokens = torch.empty(0, dtype=torch.long, device=self.device)
            return
        assert self.state is not None
        if rows != list(range(len(self.state))):
            self.state = self.state.select(torch.tensor(rows, device=self.device))
        self.last_tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)

    # -- stepping --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """One decoder step for every row; returns new tokens and finished requests.

        Everything that depends on the requests' own parameters runs before the batch changes
        (step 3): if it raises, the batch is as it was, and :meth:`culprits` can tell which
        requests made it raise.
        """
        if self.state is None:
            return []
        single_rows = len(self.active) == len(self)  # every request has one row (no beam search)
        # 1. one decoder step for all rows
        logprobs, state = self.decode_step(self.last_tokens, self.state)  # (B, V)
        attention: dict[int, torch.Tensor] = {}
        if state.attention is not None:
            attention = self._attention_rows(state.attention)
            state = replace(state, attention=None)  # the batch keeps only the rows asked for
        # 2. per-row constraints and token choice
        row_seqs = [seq for seq in self.active for _ in range(seq.rows)]
        if any(seq.request.params.min_length and not seq.long_enough for seq in self.active):
            logprobs = self._forbid_short_ends(logprobs)
        if any(seq.request.params.no_repeat_ngram_size for seq in self.active):
            histories = [h for seq in self.active for h in seq.histories]
            sizes = [seq.request.params.no_repeat_ngram_size for seq in row_seqs]
            logprobs = block_repeated_ngrams(logprobs, histories, sizes)
        candidates = self._beam_candidates(logprobs)  # per beam request: its best extensions
        chosen = self._choose_single(logprobs, row_seqs)  # (token, logprob) per row of greedy/sampled requests
        # 3. advance every request, collect the rows that continue
        self.state = state
        events: list[StepEvent] = []
        keep_rows: list[int] = []
        next_tokens: list[int] = []
        still_active: list[_Sequence] = []
        offset = 0
        for seq in self.active:
            if seq.request.params.strategy is Strategy.BEAM:
                rows, tokens = self._advance_beam(seq, *candidates[offset], attention.get(offset))
                rows = [offset + r for r in rows]
            else:
                rows, tokens = self._advance_single(seq, *chosen[offset], attention.get(offset))
                rows = [offset] if rows else []
                if tokens:
                    events.append(StepEvent(seq.request.id, token=tokens[0]))
            if rows:
                keep_rows.extend(rows)
                next_tokens.extend(tokens)
                still_active.append(seq)
            else:
                events.append(StepEvent(seq.request.id, finished=self._best(seq)))
            offset += seq.rows
        if single_rows and keep_rows:  # no beams: rows only leave, none is reordered or repeated
            self._fill_holes(keep_rows, next_tokens, still_active)
        else:
            self.active = still_active
            self._reindex(keep_rows, next_tokens)
        return events

    @torch.inference_mode()
    def culprits(self) -> list[str]:
        """After a :meth:`step` that raised before changing the batch: the requests whose own rows
        raise in a step of their own. Each is tried on a copy, so the batch does not change."""
        assert self.state is not None
        found: list[str] = []
        offset = 0
        for seq in self.active:
            rows = torch.arange(offset, offset + seq.rows, device=self.device)
            offset += seq.rows
            trial = GenerationBatch(self.model, self.device, self.decode_step, self.backward, self.blank_ids)
            trial.state, trial.last_tokens, trial.active = self.state.select(rows), self.last_tokens[rows], [seq.copy()]
            try:
                trial.step()
            except Exception:  # noqa: BLE001 - whatever it is, it is this request's
                found.append(seq.request.id)
        return found

    def _forbid_short_ends(self, logprobs: torch.Tensor) -> torch.Tensor:
        """``min_length``: no EOS on a row that shows fewer tokens with text than it asks, and no
        blank piece on a row that shows nothing yet after one (a lone "▁"): so a reply of
        ``min_length`` 1 is never empty, whatever the model favours."""
        blank = self.blank_ids
        short: list[bool] = []
        stuck: list[bool] = []
        for seq in self.active:
            params = seq.request.params
            if seq.long_enough or not params.min_length:
                short += [False] * seq.rows
                stuck += [False] * seq.rows
                continue
            for history in seq.histories:
                short.append(shows_fewer(history, params.min_length, blank))
                shows_nothing = bool(blank) and shows_fewer(history, 1, blank)
                stuck.append(shows_nothing and (bool(history) or params.max_length == 1))
            seq.long_enough = not any(short[-seq.rows :])
        logprobs = forbid(logprobs, torch.tensor(short, device=self.device))
        if any(stuck):
            logprobs = forbid(logprobs, torch.tensor(stuck, device=self.device), sorted(blank))
        return logprobs

    def _beam_candidates(self, logprobs: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The best ``2 * beam_size`` extensions of each beam request, by the offset of its first row."""
        candidates = {}
        offset = 0
        for seq in self.active:
            if seq.request.params.strategy is Strategy.BEAM:
                scores = torch.tensor(seq.scores, dtype=logprobs.dtype, device=logprobs.device)
                k = seq.request.params.beam_size
                candidates[offset] = beam_candidates(logprobs[offset : offset + seq.rows], scores, 2 * k)
            offset += seq.rows
        return candidates

    def _attention_rows(self, weights: torch.Tensor) -> dict[int, torch.Tensor]:
        """The step's attention weights (B, S) of each request that asked for them, as (rows, its
        source length) on the CPU, by the offset of its first row: one gather and one copy for all."""
        wanted: list[tuple[int, _Sequence]] = []
        index: list[int] = []
        offset = 0
        for seq in self.active:
            if seq.attention is not None:
                wanted.append((offset, seq))
                index.extend(range(offset, offset + seq.rows))
            offset += seq.rows
        if not index:
            return {}
        rows = weights.index_select(0, torch.tensor(index, device=weights.device)).float().cpu()  # (R, S)
        found, start = {}, 0
        for offset, seq in wanted:
            found[offset] = rows[start : start + seq.rows, : len(seq.request.src_ids)]  # padding weighs 0
            start += seq.rows
        return found

    def _choose_single(self, logprobs: torch.Tensor, row_seqs: list[_Sequence]) -> list[tuple[int, float]]:
        """Greedy argmax for every row, replaced by a sample on rows of sampling requests."""
        tokens = greedy(logprobs)  # (B,)
        sampled = [i for i, seq in enumerate(row_seqs) if seq.generator is not None]
        if sampled:
            params = [row_seqs[i].request.params for i in sampled]
            probs = filter_logits(
                logprobs[sampled],
                torch.tensor([p.temperature for p in params], device=self.device),
                torch.tensor([p.top_k for p in params], device=self.device),
                torch.tensor([p.top_p for p in params], device=self.device),
            )
            generators = [row_seqs[i].generator for i in sampled]
            tokens[sampled] = sample(probs, generators)  # type: ignore[arg-type]
        scores = logprobs.gather(1, tokens[:, None]).squeeze(1)
        return list(zip(tokens.tolist(), scores.tolist(), strict=True))

    @staticmethod
    def _advance_single(
        seq: _Sequence, token: int, logprob: float, weights: torch.Tensor | None
    ) -> tuple[list[int], list[int]]:
        """``weights`` (1, S): the step's attention weights, when the request asked for them."""
        params = seq.request.params
        seq.scores[0] += logprob
        if token == EOS_ID:
            seq.finished.append(_hypothesis(seq.histories[0], seq.scores[0], params, FinishReason.EOS, seq.steps(0)))
            return [], []
        seq.histories[0].append(token)
        if seq.attention is not None:
            assert weights is not None
            seq.attention[0].append(weights[0])
        if seq.length >= params.max_length:
            seq.finished.append(_hypothesis(seq.histories[0], seq.scores[0], params, FinishReason.LENGTH, seq.steps(0)))
            return [], [token]  # no row continues, but the token still goes out as an event
        return [0], [token]

    @staticmethod
    def _advance_beam(
        seq: _Sequence, best: torch.Tensor, beams: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[list[int], list[int]]:
        """Extend one request's beams by its candidates; returns (source beam per new row, token per new row).

        ``weights`` (K, S): the step's attention weights per beam, when the request asked for them;
        a new hypothesis carries its source beam's weights so far and that beam's of this step.
        """
        params = seq.request.params
        k = params.beam_size
        rows: list[int] = []
        new_tokens: list[int] = []
        histories: list[list[int]] = []
        new_scores: list[float] = []
        attention: list[list[torch.Tensor]] = []
        for score, beam, token in zip(best.tolist(), beams.tolist(), tokens.tolist(), strict=True):
            if score == float("-inf") or len(rows) == k:
                break
            if token == EOS_ID:
                seq.finished.append(_hypothesis(seq.histories[beam], score, params, FinishReason.EOS, seq.steps(beam)))
                continue
            rows.append(beam)
            new_tokens.append(token)
            histories.append([*seq.histories[beam], token])
            new_scores.append(score)
            if seq.attention is not None:
                assert weights is not None
                attention.append([*seq.attention[beam], weights[beam]])
        if histories and len(histories[0]) >= params.max_length:
            for i, (history, score) in enumerate(zip(histories, new_scores, strict=True)):
                steps = attention[i] if seq.attention is not None else None
                seq.finished.append(_hypothesis(history, score, params, FinishReason.LENGTH, steps))
            return [], []
        if not rows or _beam_done(seq, max(new_scores), len(histories[0])):
            return [], []
        seq.histories, seq.scores = histories, new_scores
        if seq.attention is not None:
            seq.attention = attention
        return rows, new_tokens

    def _best(self, seq: _Sequence) -> list[Hypothesis]:
        """The request's ``n_best`` hypotheses, best first: by their scores, or with ``mmi_weight``
        the ``beam_size`` best reranked with the backward model."""
        params = seq.request.params
        ranked = sorted(seq.finished, key=lambda h: h.normalized, reverse=True)
        if params.mmi_weight:
            assert self.backward is not None  # encode() refused the request otherwise
            pool = ranked[: params.beam_size]
            backward = backward_scores(self.backward, seq.request.src_ids, [h.tokens for h in pool])
            ranked = [pool[i] for i in mmi_order([h.normalized for h in pool], backward, params.mmi_weight)]
        return ranked[: params.n_best]


def _beam_done(seq: _Sequence, best_live: float, length: int) -> bool:
    """Early stopping: enough hypotheses have ended (``n_best``, or every beam's for reranking) and
    none of the live beams (at its current length) ranks above the last of them. Counting finished
    beams alone would stop on poor early EOS candidates while a far better beam is still running."""
    params = seq.request.params
    needed = params.beam_size if params.mmi_weight else params.n_best
    if len(seq.finished) < needed:
        return False
    ranked = sorted((h.normalized for h in seq.finished), reverse=True)
    return best_live / length_penalty(length, params.length_penalty) <= ranked[needed - 1]


def _hypothesis(
    tokens: list[int],
    score: float,
    params: DecodeParams,
    reason: FinishReason,
    attention: list[torch.Tensor] | None = None,
) -> Hypothesis:
    """``attention``: the weights (S,) of each step that produced one of ``tokens``, when asked for."""
    norm = score / length_penalty(len(tokens), params.length_penalty) if params.beam_size > 1 else score
    weights = None if attention is None else [row.tolist() for row in attention]
    return Hypothesis(list(tokens), score, norm, reason, weights)


def generate(
    model: Seq2Seq,
    requests: Sequence[DecodeRequest],
    max_rows: int = 64,
    device: torch.device | str = "cpu",
    on_event: Callable[[StepEvent], None] | None = None,
    backward: Seq2Seq | None = None,
    blank_ids: frozenset[int] = frozenset(),
) -> dict[str, list[Hypothesis]]:
    """Decode ``requests`` offline with continuous batching; returns hypotheses by request id.

    Requests are admitted longest-source-first whenever rows are free, so the batch
    stays full until the queue is empty (used by evaluation and tests). ``backward``: the
    model that reranks requests with ``mmi_weight``; ``blank_ids``: as for :class:`GenerationBatch`.
    """
    pending = deque(sorted(requests, key=lambda r: len(r.src_ids), reverse=True))
    batch = GenerationBatch(model, device, backward=backward, blank_ids=blank_ids)
    results: dict[str, list[Hypothesis]] = {}
    with torch.inference_mode():
        while pending or batch.active:
            admit: list[DecodeRequest] = []
            rows = len(batch)
            while pending and (rows + pending[0].params.rows <= max_rows or not (admit or batch.active)):
                rows += pending[0].params.rows
                admit.append(pending.popleft())
            batch.add(admit)
            for event in batch.step():
                if on_event is not None:
                    on_event(event)
                if event.finished is not None:
                    results[event.request_id] = event.finished
    return results
