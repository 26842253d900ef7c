"""A chat model against the nearest-question lookup, on the held-out split it never saw.

    python -m training.chat_eval --model-dir model_store/chat-ko/1 [--apply]

The baseline answers each held-out question with the training answer of the most similar
training question (cosine similarity of character-bigram TF-IDF vectors): what a retrieval bot
with no model would say. Both are scored by corpus BLEU and chrF against the held-out answers,
and both by how varied they are (distinct-1 and distinct-2: distinct words and word bigrams
over all words and bigrams of the replies) and by how many replies are a training answer word
for word. The model decodes as the server does (``decode_all``), greedy and with its beam
settings (MMI reranking included, for a model that ships a backward model). ``--apply``
writes the figures into the manifest (``chat_evaluation``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from seq2seq.checkpoint import decoding_defaults, load_model_dir, update_manifest
from seq2seq.decoding import DecodeParams
from training.data import Pair, load_corpus
from training.evaluate import corpus_of_model
from training.scoring import bleu_scores, translate_all

log = logging.getLogger("training.chat_eval")


def bigrams(text: str) -> Counter[str]:
    """Character bigrams of a text, spaces as word boundaries (``" 안녕"`` counts the word start)."""
    padded = f" {' '.join(text.split())} "
    return Counter(padded[i : i + 2] for i in range(len(padded) - 1))


def nearest_question_answers(train: list[Pair], questions: list[str]) -> list[str]:
    """For each question, the answer of the training question nearest to it by TF-IDF cosine."""
    vocab: dict[str, int] = {}
    train_counts = [bigrams(q) for q, _ in train]
    for counts in train_counts:
        for gram in counts:
            vocab.setdefault(gram, len(vocab))
    df = Counter(gram for counts in train_counts for gram in counts)
    idf = {gram: math.log((1 + len(train)) / (1 + df[gram])) + 1 for gram in vocab}

    def matrix(all_counts: list[Counter[str]]) -> torch.Tensor:
        rows, cols, values = [], [], []
        for row, counts in enumerate(all_counts):
            weights = {vocab[g]: c * idf[g] for g, c in counts.items() if g in vocab}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for col, w in weights.items():
                rows.append(row)
                cols.append(col)
                values.append(w / norm)
        shape = (len(all_counts), len(vocab))
        return torch.sparse_coo_tensor([rows, cols], values, shape, check_invariants=True).coalesce()

    keys = matrix(train_counts)  # sparse (train, bigrams)
    queries = matrix([bigrams(q) for q in questions]).to_dense()  # (questions, bigrams): few rows
    nearest = torch.sparse.mm(keys, queries.t()).argmax(dim=0)  # (train, questions) -> per question
    return [train[i][1] for i in nearest.tolist()]


def distinct(replies: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for words in (r.split() for r in replies) for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def describe(replies: list[str], references: list[str], training_answers: set[str]) -> dict[str, Any]:
    return {
        **{k: v for k, v in bleu_scores(replies, references).items() if k in ("bleu", "chrf")},
        "distinct_1": distinct(replies, 1),
        "distinct_2": distinct(replies, 2),
        "copies_of_training_answers": sum(r in training_answers for r in replies),
        "empty": sum(not r.strip() for r in replies),
    }


def chat_eval(model_dir: Path) -> dict[str, Any]:
    loaded = load_model_dir(model_dir)
    corpus = load_corpus(**corpus_of_model(loaded.manifest))
    questions, references = [q for q, _ in corpus.test], [a for _, a in corpus.test]
    training_answers = {a for _, a in corpus.train}
    tuned = decoding_defaults(loaded.manifest)
    beam = DecodeParams(
        min_length=1,
        beam_size=tuned.get("beam_size", 5),
        length_penalty=tuned.get("length_penalty", 1.0),
        no_repeat_ngram_size=tuned.get("no_repeat_ngram_size", 0),
        mmi_weight=tuned.get("mmi_weight", 0.0),
    )
    greedy = DecodeParams(min_length=1, no_repeat_ngram_size=tuned.get("no_repeat_ngram_size", 0))
    outputs = {
        "lookup": nearest_question_answers(corpus.train, questions),
        "greedy": translate_all(loaded.model, loaded.source_tokenizer, loaded.target_tokenizer, questions, greedy),
        "beam": translate_all(
            loaded.model, loaded.source_tokenizer, loaded.target_tokenizer, questions, beam, backward=loaded.backward
        ),
    }
    result: dict[str, Any] = {
        "test_set": f"held-out 5% ({len(questions)} pairs)",
        "references": {k: v for k, v in describe(references, references, training_answers).items() if "_" in k},
        **{name: describe(replies, references, training_answers) for name, replies in outputs.items()},
        "examples": [
            {"message": q, "reference": r, **{name: out[i] for name, out in outputs.items()}}
            for i, (q, r) in enumerate(zip(questions[:5], references[:5], strict=True))
        ],
    }
    for name in outputs:
        log.info("%s: %s", name, json.dumps(result[name]))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--apply", action="store_true", help="write the figures into the manifest (chat_evaluation)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = chat_eval(args.model_dir)
    if args.apply:
        update_manifest(args.model_dir, {"chat_evaluation": result})
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
