"""Corpora for training and evaluation, and length-bucketed batches.

Every corpus becomes a :class:`Corpus` of (source, target) string pairs split into
train / val / test, with its provenance and license recorded for the manifest.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seq2seq.model import pad, teacher_forcing
from seq2seq.tokenizer import Tokenizer

Pair = tuple[str, str]
CORPORA = ("multi30k", "chatbot-ko", "chatterbot-en", "chatterbot-en-smalltalk", "files")
# chatterbot-corpus topics left out of chatterbot-en-smalltalk: tech_support is half the pairs, and
# a chit-chat bot trained on it answers feelings with password resets
NOT_SMALLTALK = ("tech_support",)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repo


@dataclass
class Corpus:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    provenance: dict[str, Any] = field(default_factory=dict)

    def reversed(self) -> Corpus:
        """Every pair the other way round (target -> source), with the same splits."""

        def swap(pairs: list[Pair]) -> list[Pair]:
            return [(t, s) for s, t in pairs]

        provenance = {**self.provenance, "direction": "reversed: target -> source"}
        return Corpus(swap(self.train), swap(self.val), swap(self.test), provenance)


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [line.rstrip("\n") for line in f]


def read_parallel(src_path: Path, tgt_path: Path) -> list[Pair]:
    """Two line-aligned files (plain or .gz) -> pairs; a length mismatch is an error."""
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
    return [(s.strip(), t.strip()) for s, t in zip(src, tgt, strict=True) if s.strip() and t.strip()]


def read_tsv(path: Path) -> list[Pair]:
    pairs = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected 'source<TAB>target'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def load_multi30k(data_dir: Path, src: str, tgt: str) -> Corpus:
    root = data_dir / "multi30k"

    def split(name: str) -> list[Pair]:
        return read_parallel(root / f"{name}.{src}.gz", root / f"{name}.{tgt}.gz")

    return Corpus(
        split("train"),
        split("val"),
        split("test_2016_flickr"),
        {
            "dataset": "Multi30K task 1 (Elliott et al., 2016), raw cased text",
            "splits": {"train": "train", "val": "val", "test": "test_2016_flickr"},
            "license": "non-commercial research and education (partly derived from Flickr30K)",
        },
    )


def _split(pairs: list[Pair], seed: int, held_out: float = 0.05) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Deterministic train/val/test split by source text, so one question never spans two splits."""
    sources = sorted({s for s, _ in pairs})
    random.Random(seed).shuffle(sources)
    n = max(1, int(len(sources) * held_out))
    val_src, test_src = set(sources[:n]), set(sources[n : 2 * n])
    train = [p for p in pairs if p[0] not in val_src and p[0] not in test_src]
    val = [p for p in pairs if p[0] in val_src]
    test = [p for p in pairs if p[0] in test_src]
    return train, val, test


def load_chatbot_ko(data_dir: Path, seed: int) -> Corpus:
    path = data_dir / "chatbot-ko" / "ChatbotData.csv"
    with path.open(encoding="utf-8") as f:
        pairs = [(row["Q"].strip(), row["A"].strip()) for row in csv.DictReader(f) if row["Q"].strip()]
    train, val, test = _split(pairs, seed)
    return Corpus(
        train,
        val,
        test,
        {
            "dataset": "Chatbot_data_for_Korean v1.0 (songys), ChatbotData.csv",
            "splits": "90/5/5 split by question, seeded",
            "license": "MIT",
        },
    )


def hurried(text: str) -> str:
    """``text`` as typed in a hurry: first letter in lower case, no final period, question or exclamation mark."""
    return (text[:1].lower() + text[1:]).rstrip().rstrip(".!?").rstrip()


def augment_sources(pairs: list[Pair]) -> list[Pair]:
    """``pairs`` and, for each whose source changes, the same pair with the source :func:`hurried`:
    a model trained on both no longer depends on the final period to end its output."""
    return pairs + [(hurried(s), t) for s, t in pairs if hurried(s) and hurried(s) != s]


def load_chatterbot_en(seed: int, skip: tuple[str, ...] = ()) -> Corpus:
    """Consecutive turns of the English conversations shipped by the ``chatterbot-corpus`` package
    (``skip``: topics, by file name, left out)."""
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    pairs: list[Pair] = []
    for path in sorted(p for p in root.glob("*.yml") if p.stem not in skip):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations", []):
            turns = [str(t).strip() for t in conv if isinstance(t, str | int | float) and str(t).strip()]
            pairs.extend(zip(turns, turns[1:], strict=False))
    train, val, test = _split(pairs, seed)
    return Corpus(
        train,
        val,
        test,
        {
            "dataset": "chatterbot-corpus (PyPI), data/english/*.yml, consecutive turns"
            + (f", without {', '.join(skip)}" if skip else ""),
            "splits": "90/5/5 split by question, seeded",
            "license": "BSD-3-Clause",
        },
    )


def load_corpus(
    name: str,
    data_dir: Path = DEFAULT_DATA_DIR,
    src: str = "de",
    tgt: str = "en",
    seed: int = 1,
    files: dict[str, Path] | None = None,
) -> Corpus:
    if name == "multi30k":
        return load_multi30k(data_dir, src, tgt)
    if name == "chatbot-ko":
        return load_chatbot_ko(data_dir, seed)
    if name == "chatterbot-en":
        return load_chatterbot_en(seed)
    if name == "chatterbot-en-smalltalk":
        return load_chatterbot_en(seed, NOT_SMALLTALK)
    if name == "files":
        if not files:
            raise ValueError("corpus 'files' needs --train and --val (TSV) or --train-src/--train-tgt")
        return load_file_corpus(files)
    raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")


def load_file_corpus(files: dict[str, Path]) -> Corpus:
    """User-supplied data: ``{split}`` -> TSV path, or ``{split}_src`` / ``{split}_tgt`` aligned files."""

    def split(name: str) -> list[Pair]:
        if name in files:
            return read_tsv(files[name])
        if f"{name}_src" in files:
            return read_parallel(files[f"{name}_src"], files[f"{name}_tgt"])
        return []

    train, val, test = split("train"), split("val"), split("test")
    if not train or not val:
        raise ValueError("corpus 'files' needs train and val data")
    return Corpus(train, val, test or val, {"dataset": "user files", "files": {k: str(v) for k, v in files.items()}})


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) padded source ids
    src_lengths: torch.Tensor  # (B,)
    tgt_in: torch.Tensor  # (B, T) BOS y_1 .. y_{n}, padded
    tgt_out: torch.Tensor  # (B, T) y_1 .. y_n EOS, padded
    n_tokens: int  # real target tokens (loss denominator)


def encode_pairs(
    pairs: list[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer, max_len: int, source_alpha: float = 0.0
) -> list[tuple[list[int], list[int]]]:
    """Tokenize and drop pairs whose either side is empty or longer than ``max_len`` pieces.
    ``source_alpha`` > 0 draws each source's segmentation (:meth:`Tokenizer.sample_encode`)."""
    out = []
    for s, t in pairs:
        si = src_tok.sample_encode(s, source_alpha) if source_alpha else src_tok.encode(s)
        ti = tgt_tok.encode(t)
        if 0 < len(si) <= max_len and 0 < len(ti) <= max_len:
            out.append((si, ti))
    return out


def make_batch(examples: list[tuple[list[int], list[int]]]) -> Batch:
    src = [s for s, _ in examples]
    tgt = [t for _, t in examples]
    tgt_in, tgt_out = teacher_forcing(tgt)
    return Batch(
        src=pad(src),
        src_lengths=torch.tensor([len(s) for s in src]),
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        n_tokens=sum(len(t) + 1 for t in tgt),
    )


def batches(
    examples: list[tuple[list[int], list[int]]], max_tokens: int, shuffle_seed: int | None = None
) -> Iterator[Batch]:
    """Batches of similar-length examples holding at most ~``max_tokens`` padded target tokens.

    Sorting by length keeps padding small; with ``shuffle_seed`` the batch order (and the
    order inside each length bucket) is shuffled deterministically, so a resumed epoch
    replays exactly the batches the interrupted one would have seen.
    """
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    order.sort(key=lambda i: (len(examples[i][1]), len(examples[i][0])))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = len(examples[i][1]) + 1
        if current and width * (len(current) + 1) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    if shuffle_seed is not None:
        random.Random(shuffle_seed + 1).shuffle(groups)
    for group in groups:
        yield make_batch([examples[i] for i in group])
