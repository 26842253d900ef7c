"""Decode a list of sentences the way the server does, and score them with sacreBLEU and chrF.

Shared by training (validation BLEU after every epoch) and evaluation (test sets).
"""

from __future__ import annotations

import dataclasses

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.decoding import DecodeParams, source_length_cap
from seq2seq.generation import GenerationRequest, Hypothesis, generate
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer, end_sentence


def decode_all(
    model: Seq2Seq,
    src_tok: Tokenizer,
    sources: list[str],
    params: DecodeParams,
    max_rows: int = 96,
    end_mark: str | None = None,
    backward: Seq2Seq | None = None,
    blank_ids: frozenset[int] = frozenset(),
) -> list[Hypothesis]:
    """The best hypothesis for each source, as the server decodes it: ``params.max_length`` is
    also capped by the source's length (:func:`~seq2seq.decoding.source_length_cap`),
    ``end_mark`` ends sources that end no sentence (:func:`~seq2seq.tokenizer.end_sentence`),
    ``backward`` reranks beams when ``params.mmi_weight`` is set (:mod:`seq2seq.rerank`), and
    ``min_length`` counts no ``blank_ids`` (the target tokenizer's, as the server's batch does)."""
    requests = []
    for i, source in enumerate(sources):
        ids = src_tok.encode(end_sentence(source, end_mark))
        cap = min(params.max_length, source_length_cap(len(ids)))
        requests.append(GenerationRequest(str(i), ids, dataclasses.replace(params, max_length=cap)))
    results = generate(model, requests, max_rows=max_rows, backward=backward, blank_ids=blank_ids)
    return [results[str(i)][0] for i in range(len(sources))]


def translate_all(
    model: Seq2Seq,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sources: list[str],
    params: DecodeParams,
    max_rows: int = 96,
    backward: Seq2Seq | None = None,
) -> list[str]:
    hyps = decode_all(model, src_tok, sources, params, max_rows, backward=backward, blank_ids=tgt_tok.blank_ids)
    return [tgt_tok.decode(h.tokens) for h in hyps]


def bleu_scores(hypotheses: list[str], references: list[str]) -> dict[str, float | str]:
    """Corpus BLEU (cased and lowercased) and chrF, with their sacreBLEU signatures."""
    cased, lower, chrf = BLEU(), BLEU(lowercase=True), CHRF()
    return {
        "bleu": round(cased.corpus_score(hypotheses, [references]).score, 2),
        "bleu_lc": round(lower.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "signature": str(cased.get_signature()),
        "signature_lc": str(lower.get_signature()),
        "signature_chrf": str(chrf.get_signature()),
    }
