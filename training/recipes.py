"""The recipes of the bundled models: one place that says how each checkpoint was made.

    python -m training.recipes list
    python -m training.recipes train translate-de-en [--time-budget 60] [--threads 1]

``train`` runs (or resumes) ``training.train`` in ``runs/<name>`` with the recipe's
arguments; the evaluation and export steps read the same recipes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

RUNS_DIR = Path(__file__).resolve().parents[1] / "runs"


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str  # translate | chat
    src: str
    tgt: str
    train_args: tuple[str, ...]
    description: str
    tokenizers_from: str | None = None  # share another recipe's tokenizers (same task, same data)
    extra: dict[str, str] = field(default_factory=dict)
    backward_of: str | None = None  # the chat recipe whose replies this one scores (MMI reranking)

    def run_dir(self, runs_dir: Path = RUNS_DIR) -> Path:
        return runs_dir / self.name

    def train_argv(self, runs_dir: Path = RUNS_DIR) -> list[str]:
        argv = ["--run-dir", str(self.run_dir(runs_dir)), "--src", self.src, "--tgt", self.tgt, *self.train_args]
        if self.tokenizers_from:
            argv += ["--tokenizers-from", str(runs_dir / self.tokenizers_from)]
        return argv


_MULTI30K = ("--corpus", "multi30k", "--vocab-size", "6000", "--epochs", "60", "--patience", "5", "--amp", "bf16")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "translate-de-en",
            "translate",
            "de",
            "en",
            (*_MULTI30K, "--architecture", "attention"),
            "German -> English, bidirectional LSTM encoder + Luong attention",
        ),
        Recipe(
            "translate-fr-en",
            "translate",
            "fr",
            "en",
            (*_MULTI30K, "--architecture", "attention"),
            "French -> English, bidirectional LSTM encoder + Luong attention",
        ),
        Recipe(
            "translate-de-en-basic",
            "translate",
            "de",
            "en",
            (*_MULTI30K, "--architecture", "context-init"),
            "German -> English, context vector as the decoder's initial state only (Sutskever et al.)",
            tokenizers_from="translate-de-en",
        ),
        Recipe(
            "translate-de-en-context",
            "translate",
            "de",
            "en",
            (*_MULTI30K, "--architecture", "context-every-step"),
            "German -> English, context vector fed at every decoder step (Cho et al.)",
            tokenizers_from="translate-de-en",
        ),
        Recipe(
            "chat-ko",
            "chat",
            "ko",
            "ko",
            (
                "--corpus",
                "chatbot-ko",
                "--architecture",
                "attention",
                "--joint-vocab",
                "--vocab-size",
                "4000",
                "--subword-sampling",
                "0.2",
                "--amp",
                "bf16",
                "--dropout",
                "0.4",
                "--epochs",
                "60",
                "--patience",
                "6",
                "--max-tokens",
                "3000",
            ),
            "Korean chit-chat (ChatbotData), attention, one joint tokenizer",
        ),
        Recipe(
            "chat-en",
            "chat",
            "en",
            "en",
            (
                "--amp",
                "bf16",
                "--corpus",
                "chatterbot-en-smalltalk",
                "--augment-sources",
                "--architecture",
                "attention",
                "--joint-vocab",
                "--vocab-size",
                "3000",
                "--emb-dim",
                "128",
                "--hidden-dim",
                "256",
                "--dropout",
                "0.2",
                "--epochs",
                "80",
                "--patience",
                "8",
                "--max-tokens",
                "1500",
            ),
            "English chit-chat (chatterbot-corpus without its tech-support half), attention, one joint tokenizer",
        ),
    )
}


def backward(recipe: Recipe) -> Recipe:
    """The backward model of a chat recipe: the same data and settings, every pair the other way
    round (``--reverse``), with the forward run's tokenizer. It ships inside the forward model."""
    return Recipe(
        f"{recipe.name}-backward",
        recipe.task,
        recipe.src,
        recipe.tgt,
        (*recipe.train_args, "--reverse"),
        f"backward model of {recipe.name}, p(message | reply), for MMI reranking",
        tokenizers_from=recipe.name,
        backward_of=recipe.name,
    )


RECIPES.update((b.name, b) for b in [backward(RECIPES["chat-ko"]), backward(RECIPES["chat-en"])])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    t = sub.add_parser("train")
    t.add_argument("name", choices=sorted(RECIPES))
    t.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    t.add_argument("--time-budget", type=float, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.command == "list":
        for r in RECIPES.values():
            print(f"{r.name:26} {r.task:9} {r.src}->{r.tgt}  {r.description}")
        return
    from training import train

    recipe = RECIPES[args.name]
    train.main(
        [
            *recipe.train_argv(args.runs_dir),
            "--time-budget",
            str(args.time_budget),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
    )


if __name__ == "__main__":
    main()
