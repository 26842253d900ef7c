"""Tiny, randomly initialised models in a real model-store layout, for fast service tests.

They decode nonsense, but deterministic nonsense: enough to test batching, scheduling,
errors and the HTTP surface without the bundled checkpoints.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from seq2seq.checkpoint import save_model_dir
from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer

WORDS = {
    "de": "ein mann frau hund kind spielt läuft im park auf der straße mit einem ball zwei rot blau".split(),
    "en": "a man woman dog child plays runs in the park on street with ball two red blue".split(),
}


def _sentences(lang: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(2, 8))).capitalize() + "." for _ in range(n)]


def make_tiny_store(root: Path) -> Path:
    """Write translate-de-en (attention, evaluated), translate-de-en-basic (context-init) and chat-en
    (with a backward model, for MMI reranking) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root.parent / f"{root.name}-tokenizers"
    tok_dir.mkdir(exist_ok=True)
    de = Tokenizer.train(_sentences("de", 400, 1), tok_dir / "de", 60)
    en = Tokenizer.train(_sentences("en", 400, 2), tok_dir / "en", 60)
    specs = [
        ("translate-de-en", "translate", "de", "en", "attention", de, en, 30.0),
        ("translate-de-en-basic", "translate", "de", "en", "context-init", de, en, 10.0),
        ("chat-en", "chat", "en", "en", "attention", en, en, None),
    ]
    for name, task, src, tgt, arch, src_tok, tgt_tok, bleu in specs:
        torch.manual_seed(len(name))
        config = ModelConfig(
            architecture=arch,
            src_vocab_size=src_tok.vocab_size,
            tgt_vocab_size=tgt_tok.vocab_size,
            emb_dim=16,
            hidden_dim=32,
            dropout=0.0,
            share_vocab=src_tok is tgt_tok,
        )
        evaluation = {"beam": {"bleu": bleu}, "greedy": {"bleu": bleu}} if bleu is not None else None
        manifest = {
            "name": name,
            "version": "1",
            "task": task,
            "source_lang": src,
            "target_lang": tgt,
            "evaluation": evaluation,
            "description": f"tiny random {arch} model for tests",
        }
        assert src_tok.path is not None and tgt_tok.path is not None
        model = Seq2Seq(config)
        backward = Seq2Seq(config) if task == "chat" else None  # same vocabulary both ways
        save_model_dir(root / name / "1", model, manifest, src_tok.path, tgt_tok.path, backward=backward)
    return root
