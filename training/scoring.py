"""Decode a list of sentences the way the server does, and score them with sacreBLEU and chrF.

Shared by training (validation BLEU after every epoch) and evaluation (test sets).
"""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer


def translate_all(
    model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, sources: list[str], params: DecodeParams, max_rows: int = 96
) -> list[str]:
    requests = [GenerationRequest(str(i), src_tok.encode(s), params) for i, s in enumerate(sources)]
    results = generate(model, requests, max_rows=max_rows)
    return [tgt_tok.decode(results[str(i)][0].tokens) for i in range(len(sources))]


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
