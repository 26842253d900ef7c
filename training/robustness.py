"""Runaway and truncated outputs of a packaged model, with and without blocking repeated n-grams.

    python -m training.robustness --model-dir model_store/translate-de-en/2 [--apply]

For val, test and ``val-perturbed`` (val's captions as people type them: first letter in
lower case, no final period; less like the training data than val is), greedy and beam (the
manifest's beam size and length penalty), each with ``no_repeat_ngram_size`` 0 (off) and each
of ``--sizes``, as the server decodes (the length cap follows the source:
:func:`~seq2seq.decoding.source_length_cap`):

- BLEU and chrF;
- ``cap_hits``: outputs that ran into the length cap (loops, nearly always);
- ``short``: outputs of fewer words than half the source's (truncation).

Each setting is also tried with an end mark (:func:`~seq2seq.tokenizer.end_sentence`: a
period added to a source that ends no sentence) when nearly all training sources end one
(:data:`END_MARK_SHARE`): such a model learns to stop after the period.

The model's default is the size with the fewest cap hits on val among those that cost no
BLEU on val, greedy or beam (0 if none qualifies), and the end mark when the model's training
sources call for it: never chosen on test. ``--apply`` writes them (``decoding.no_repeat_ngram_size``,
``preprocessing.end_mark``) and the figures (``robustness``) into the manifest, where the
server and the README's tables read them; the manifest's checksums cover the weights and
tokenizers, which do not change.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import torch

from seq2seq.checkpoint import decoding_defaults, load_model_dir, read_manifest, update_manifest
from seq2seq.decoding import DecodeParams, FinishReason
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer, ends_sentence
from training.data import Pair, hurried, load_corpus
from training.evaluate import corpus_of_model
from training.scoring import bleu_scores, decode_all

log = logging.getLogger("training.robustness")

SIZES = (3, 4)
END_MARK_SHARE = 0.95  # of training sources ending a sentence, above which the end mark is tried


def length_report(
    model: Seq2Seq,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    pairs: list[Pair],
    params: DecodeParams,
    end_mark: str | None = None,
    backward: Seq2Seq | None = None,
) -> dict[str, Any]:
    """BLEU, chrF, cap hits and short outputs of ``pairs`` decoded with ``params`` (beams reranked
    by ``backward`` when ``params.mmi_weight`` is set)."""
    sources = [s for s, _ in pairs]
    hyps = decode_all(
        model, src_tok, sources, params, end_mark=end_mark, backward=backward, blank_ids=tgt_tok.blank_ids
    )
    outputs = [tgt_tok.decode(h.tokens) for h in hyps]
    scores = bleu_scores(outputs, [t for _, t in pairs])
    short = [i for i, (s, o) in enumerate(zip(sources, outputs, strict=True)) if len(o.split()) < len(s.split()) / 2]
    capped = [i for i, h in enumerate(hyps) if h.finish_reason is FinishReason.LENGTH]
    return {
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "sentences": len(pairs),
        "cap_hits": len(capped),
        "short": len(short),
        "examples": {
            "cap_hit": [{"source": sources[i], "output": outputs[i]} for i in capped[:2]],
            "short": [{"source": sources[i], "output": outputs[i]} for i in short[:2]],
        },
    }


def perturbed(pairs: list[Pair]) -> list[Pair]:
    """The sources as typed in a hurry (:func:`~training.data.hurried`)."""
    return [(hurried(s), t) for s, t in pairs]


def choose(val: dict[str, dict[str, dict[str, Any]]]) -> int:
    """The no-repeat size with the fewest cap hits on val among those that lose no BLEU, greedy or beam."""
    base = val["0"]
    fine = [
        int(n)
        for n, by_strategy in val.items()
        if n.isdigit() and n != "0" and all(by_strategy[s]["bleu"] >= base[s]["bleu"] for s in by_strategy)
    ]
    if not fine:
        return 0
    return min(fine, key=lambda n: (sum(val[str(n)][s]["cap_hits"] for s in base), -n))


def robustness(model_dir: Path, sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    loaded = load_model_dir(model_dir)
    corpus = load_corpus(**corpus_of_model(loaded.manifest))
    tuned = decoding_defaults(loaded.manifest)
    beam = {"beam_size": tuned.get("beam_size", 5), "length_penalty": tuned.get("length_penalty", 1.0)}
    if "mmi_weight" in tuned:  # beams as the server decodes them: reranked
        beam["mmi_weight"] = tuned["mmi_weight"]
    ending = sum(ends_sentence(s) for s, _ in corpus.train) / max(1, len(corpus.train))
    mark = "." if ending >= END_MARK_SHARE else None
    result: dict[str, Any] = {"sizes": [0, *sizes], "beam": beam, "train_sources_ending_a_sentence": ending}
    result["sets"] = {}
    for split, pairs in (("val", corpus.val), ("test", corpus.test), ("val-perturbed", perturbed(corpus.val))):
        by_setting: dict[str, dict[str, dict[str, Any]]] = {}
        for n, end_mark in itertools.product((0, *sizes), (None, mark) if mark else (None,)):
            key = f"{n}+{end_mark}" if end_mark else str(n)
            if end_mark and all(ends_sentence(s) for s, _ in pairs):  # the mark changes nothing here
                by_setting[key] = by_setting[str(n)]
                continue
            by_setting[key] = {}
            for strategy, extra in (("greedy", {}), ("beam", beam)):
                params = DecodeParams(no_repeat_ngram_size=n, **extra)
                report = length_report(
                    loaded.model,
                    loaded.source_tokenizer,
                    loaded.target_tokenizer,
                    pairs,
                    params,
                    end_mark,
                    loaded.backward,
                )
                by_setting[key][strategy] = report
                log.info(
                    "%s %s, %s: BLEU %.2f, chrF %.2f, %d cap hits, %d short of %d",
                    split,
                    strategy,
                    f"no-repeat {n}" + (f", end mark {end_mark!r}" if end_mark else ""),
                    report["bleu"],
                    report["chrf"],
                    report["cap_hits"],
                    report["short"],
                    len(pairs),
                )
        result["sets"][split] = by_setting
    result["chosen"] = choose(result["sets"]["val"])
    result["end_mark"] = mark
    result["setting"] = f"{result['chosen']}+{mark}" if mark else str(result["chosen"])  # what serves
    return result


def apply(model_dir: Path, result: dict[str, Any]) -> None:
    """The chosen default and the figures, into the model's manifest."""
    manifest = read_manifest(model_dir)
    preprocessing = {k: v for k, v in (manifest.get("preprocessing") or {}).items() if k != "end_mark"}
    update_manifest(
        model_dir,
        {
            "decoding": {**(manifest.get("decoding") or {}), "no_repeat_ngram_size": result["chosen"]},
            "preprocessing": {**preprocessing, **({"end_mark": result["end_mark"]} if result["end_mark"] else {})},
            "robustness": result,
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="no-repeat n-gram sizes to try")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--apply", action="store_true", help="write the chosen default and the figures into the manifest")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = robustness(args.model_dir, tuple(args.sizes))
    if args.apply:
        apply(args.model_dir, result)
    summary = {
        split: {n: {s: {k: r[k] for k in ("bleu", "cap_hits", "short")} for s, r in v.items()} for n, v in sets.items()}
        for split, sets in result["sets"].items()
    }
    print(json.dumps({"chosen": result["chosen"], **summary}, indent=1))
    return result


if __name__ == "__main__":
    main()
