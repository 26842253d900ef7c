"""Train a translator or a chatbot on your own pairs and put it in a model store: one command.

    python -m training.pipeline my-bot --task chat --lang en --train pairs.tsv --val val.tsv [--mmi]
    python -m training.pipeline my-de-en --task translate --src de --tgt en \\
        --train-src train.de --train-tgt train.en --val-src val.de --val-tgt val.en

Pairs come as a TSV (``source<TAB>target`` per line) or as two line-aligned files, per split
(``--test`` is optional: without it the evaluation uses val). The steps, each printing its
progress: train (``training.train``, a progress bar per epoch, early stopping; every other
``training.train`` option passes through, e.g. ``--hidden-dim 256 --epochs 20``), choose the
weights and beam settings on val (``training.select``), evaluate (``training.evaluate``), and
write ``<model store>/<name>/<version>``, which the server loads like the bundled models. The
run lives in ``runs/<name>``: with ``--time-budget`` it stops in time, and the same command
resumes it and finishes the rest. A chatbot trained with ``--mmi`` also gets a backward model
p(message | reply) (``runs/<name>-backward``), and its beams are reranked by it (maximum mutual
information) with a weight tuned on val.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from seq2seq.checkpoint import store_versions
from training import evaluate, select, train
from training.export import MODEL_STORE, Identity, export_run
from training.recipes import RUNS_DIR

log = logging.getLogger("training.pipeline")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the model's name in the store")
    p.add_argument("--task", choices=["translate", "chat"], required=True)
    p.add_argument("--lang", help="chat: the language of questions and answers")
    p.add_argument("--src", help="translate: source language code")
    p.add_argument("--tgt", help="translate: target language code")
    p.add_argument("--description", help="for /models (default: what it was trained on)")
    p.add_argument("--version", help="default: one above the newest in the store")
    p.add_argument("--model-store", type=Path, default=MODEL_STORE)
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=0, help="minutes of training now; the same command resumes")
    p.add_argument(
        "--mmi",
        action="store_true",
        help="chat: also train a backward model p(message | reply), which reranks the beams (weight tuned on val)",
    )
    args, train_args = p.parse_known_args(argv)
    if args.task == "chat" and not args.lang:
        p.error("--task chat needs --lang")
    if args.task == "translate" and not (args.src and args.tgt):
        p.error("--task translate needs --src and --tgt")
    if args.mmi and args.task != "chat":
        p.error("--mmi reranks replies by their message: it is for --task chat")
    return args, train_args


def next_version(store: Path, name: str) -> str:
    numbers = [int(v) for v in store_versions(store).get(name, []) if v.isdigit()] if store.is_dir() else []
    return str(max(numbers, default=0) + 1)


def stopped() -> None:
    log.info("training stopped for the time budget; run the same command again to resume")


def main(argv: list[str] | None = None) -> Path | None:
    """Returns the model directory written, or None when the time budget stopped training first."""
    args, train_args = parse_args(argv)
    src, tgt = (args.lang, args.lang) if args.task == "chat" else (args.src, args.tgt)
    run_dir = args.runs_dir / args.name
    common = ["--threads", str(args.threads)]
    chat = ["--joint-vocab"] if args.task == "chat" and "--joint-vocab" not in train_args else []
    run = ["--corpus", "files", "--src", src, "--tgt", tgt, *chat, *train_args, *common]
    runs = {run_dir: run}
    backward_dir = args.runs_dir / f"{args.name}-backward"
    if args.mmi:  # the backward model reads the forward run's tokenizer
        runs[backward_dir] = [*run, "--reverse", "--tokenizers-from", str(run_dir)]
    deadline = time.monotonic() + args.time_budget * 60
    for directory, options in runs.items():
        left_min = (deadline - time.monotonic()) / 60
        if args.time_budget and left_min <= 0:
            return stopped()
        budget = ["--time-budget", str(left_min if args.time_budget else 0)]
        if not train.main(["--run-dir", str(directory), *options, *budget])["done"]:
            return stopped()
    select.main(["--run-dir", str(run_dir), *common, *(["--backward", str(backward_dir)] if args.mmi else [])])
    evaluate.main(["--run-dir", str(run_dir), *common])
    version = args.version or next_version(args.model_store, args.name)
    data = json.loads((run_dir / "run.json").read_text())["provenance"]
    description = args.description or f"{args.task} {src}->{tgt}, trained on {data.get('files', 'user files')}"
    command = "python -m training.pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    identity = Identity(args.task, src, tgt, description, command.strip())
    out = export_run(run_dir, args.name, version, identity, args.model_store)
    print(out)
    return out


if __name__ == "__main__":
    main()
