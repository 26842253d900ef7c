"""Synthetic corpora and a tiny trained run for the training-pipeline tests."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from training import train

LETTERS = "abcdefgh"
RUN_NAME = "reverse-toy"


def reverse_pairs(n: int, seed: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """``n`` distinct 'c a f' -> 'f a c' pairs (the source letters reversed)."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    while len(pairs) < n:
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(3, 5))]
        src = " ".join(letters)
        if src not in exclude:
            pairs[src] = " ".join(reversed(letters))
    return list(pairs.items())


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def isolated_main() -> Iterator[None]:
    """train.main installs SIGINT/SIGTERM handlers and sets torch's thread count: undo both afterwards."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)


def run_train(argv: list[str]) -> dict[str, Any]:
    with isolated_main():
        return train.main(argv)


def train_argv(run_dir: Path, train_tsv: Path, val_tsv: Path, *extra: str) -> list[str]:
    """A small attention model on the reversal task; deterministic (no dropout, no label smoothing)."""
    return [
        "--run-dir", str(run_dir),
        "--corpus", "files",
        "--train", str(train_tsv),
        "--val", str(val_tsv),
        "--src", "xx",
        "--tgt", "yy",
        "--architecture", "attention",
        "--emb-dim", "32",
        "--hidden-dim", "64",
        "--vocab-size", "40",
        "--dropout", "0.0",
        "--label-smoothing", "0.0",
        "--lr", "0.01",
        "--max-tokens", "500",
        "--threads", "1",
        *extra,
    ]  # fmt: skip


@dataclass
class TrainedRun:
    runs_dir: Path
    run_dir: Path
    test: list[tuple[str, str]]
    state: dict[str, Any]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Train once per session on 2000 reversal pairs (a few seconds on one core)."""
    root = tmp_path_factory.mktemp("reverse")
    train_pairs = reverse_pairs(2000, seed=0)
    seen = {s for s, _ in train_pairs}
    val = reverse_pairs(200, seed=1, exclude=seen)
    test = reverse_pairs(200, seed=2, exclude=seen | {s for s, _ in val})
    runs_dir = root / "runs"
    run_dir = runs_dir / RUN_NAME
    argv = train_argv(run_dir, write_tsv(root / "train.tsv", train_pairs), write_tsv(root / "val.tsv", val))
    state = run_train([*argv, "--test", str(write_tsv(root / "test.tsv", test)), "--epochs", "8"])
    return TrainedRun(runs_dir, run_dir, test, state)
