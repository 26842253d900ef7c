"""Train a model: tokenizers, teacher-forced training, validation, checkpoint/resume, early stopping.

    python -m training.train --run-dir runs/translate-de-en --corpus multi30k --src de --tgt en \\
        --architecture attention --time-budget 60

A run directory holds everything needed to continue: ``run.json`` (the arguments and the
model config), the tokenizers, ``last.safetensors`` + ``optimizer.safetensors`` +
``trainer_state.json`` (written every ``--checkpoint-minutes`` and at every epoch end, with
the position inside the epoch), ``best.safetensors`` (lowest validation loss),
``best-bleu.safetensors`` (highest greedy validation BLEU, measured after every epoch with the
server's decoder) and the last ``--keep-checkpoints`` epochs' weights
(``epoch-NNN.safetensors``) for checkpoint averaging. Running
the same command again resumes where the last checkpoint left off; ``--time-budget`` stops
cleanly after that many minutes so a time-boxed session can hand the run to the next one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from seq2seq.checkpoint import load_weights, save_weights
from seq2seq.config import PAD_ID, ModelConfig
from seq2seq.decoding import DecodeParams
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer, seed_sampling
from training.curves import write_curve
from training.data import (
    CORPORA,
    DEFAULT_DATA_DIR,
    Batch,
    Corpus,
    augment_sources,
    batches,
    encode_pairs,
    load_corpus,
)
from training.scoring import bleu_scores, translate_all

log = logging.getLogger("training.train")


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done inside the current epoch
    step: int = 0  # optimizer steps overall
    lr: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_val_bleu: float = -1.0
    best_bleu_epoch: int = 0
    bad_epochs: int = 0
    elapsed_s: float = 0.0  # training wall time over all sessions
    done: bool = False  # early stopping or max epochs reached
    running_loss: float = 0.0  # current epoch's summed train loss / tokens so far
    running_tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--corpus", choices=CORPORA, default="multi30k")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--src", default="de", help="source language code")
    p.add_argument("--tgt", default="en", help="target language code")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", type=Path, help=f"{split} TSV (corpus 'files')")
        p.add_argument(f"--{split}-src", type=Path, help=f"{split} source file (corpus 'files')")
        p.add_argument(f"--{split}-tgt", type=Path, help=f"{split} target file (corpus 'files')")
    p.add_argument("--architecture", default="attention", choices=["context-init", "context-every-step", "attention"])
    p.add_argument("--emb-dim", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--enc-layers", type=int, default=1)
    p.add_argument("--dec-layers", type=int, default=1)
    p.add_argument("--unidirectional", action="store_true", help="unidirectional encoder")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--vocab-size", type=int, default=6000, help="SentencePiece pieces per side")
    p.add_argument("--joint-vocab", action="store_true", help="one tokenizer and embedding for both sides")
    p.add_argument("--tokenizers-from", type=Path, help="reuse source.model/target.model of this run dir")
    p.add_argument(
        "--init-from",
        type=Path,
        help="start from these weights (.safetensors of a run with the same model options and tokenizers, "
        "e.g. its best.safetensors) instead of random ones: fine-tuning",
    )
    p.add_argument("--max-len", type=int, default=100, help="drop training pairs longer than this (pieces)")
    p.add_argument("--max-tokens", type=int, default=4000, help="target tokens per batch")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=0.5, help="lr factor after an epoch without improvement")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=4, help="early stop after this many epochs without improvement")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--amp",
        choices=["none", "bf16"],
        default="none",
        help="bf16: mixed precision (bfloat16 autocast, float32 weights and loss); fast on CPUs with AVX512-BF16",
    )
    p.add_argument("--time-budget", type=float, default=0, help="stop (resumable) after this many minutes; 0: none")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--keep-checkpoints", type=int, default=5, help="keep the last N epochs' weights (for averaging)")
    p.add_argument(
        "--augment-sources",
        action="store_true",
        help="also train on each pair with its source typed in a hurry (no final punctuation, lower-case start)",
    )
    p.add_argument(
        "--reverse",
        action="store_true",
        help="train on every pair the other way round (target -> source): a chat model's backward model, "
        "p(message | reply), for MMI reranking",
    )
    p.add_argument(
        "--subword-sampling",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="draw every training source's segmentation anew each epoch (SentencePiece alpha, e.g. 0.2); 0: off",
    )
    p.add_argument(
        "--val-bleu-sentences", type=int, default=0, help="greedy val BLEU after each epoch on this many; 0: all"
    )
    return p.parse_args(argv)


# How a run is driven, not what it trains: left out of a resume's changes and of the manifest.
UNRECORDED_ARGS = ("run_dir", "data_dir", "tokenizers_from", "time_budget", "threads")
FILE_ARGS = tuple(f"{split}{suffix}" for split in ("train", "val", "test") for suffix in ("", "_src", "_tgt"))


def corpus_files(args: argparse.Namespace) -> dict[str, Path]:
    """The data files of corpus 'files' that ``args`` name (``--train``, ``--val-src``, ...)."""
    return {name: Path(getattr(args, name)) for name in FILE_ARGS if getattr(args, name, None) is not None}


def build_tokenizers(args: argparse.Namespace, corpus: Corpus, run_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    """Per-side tokenizers for translation; one joint tokenizer for same-language chat."""
    src_path, tgt_path = run_dir / "source.model", run_dir / "target.model"
    if args.tokenizers_from:
        shutil.copyfile(args.tokenizers_from / "source.model", src_path)
        shutil.copyfile(args.tokenizers_from / "target.model", tgt_path)
    elif not src_path.exists():
        if args.joint_vocab:
            texts = [s for s, _ in corpus.train] + [t for _, t in corpus.train]
            Tokenizer.train(texts, run_dir / "source", args.vocab_size, character_coverage=0.9995)
            shutil.copyfile(src_path, tgt_path)
        else:
            Tokenizer.train([s for s, _ in corpus.train], run_dir / "source", args.vocab_size)
            Tokenizer.train([t for _, t in corpus.train], run_dir / "target", args.vocab_size)
    return Tokenizer.load(src_path), Tokenizer.load(tgt_path)


def loss_on(model: Seq2Seq, batch: Batch, device: str, label_smoothing: float) -> torch.Tensor:
    """Summed token cross-entropy of one teacher-forced batch."""
    logits = model(batch.src.to(device), batch.src_lengths, batch.tgt_in.to(device))  # (B, T, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        batch.tgt_out.to(device).reshape(-1),
        ignore_index=PAD_ID,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


@torch.no_grad()
def evaluate_loss(model: Seq2Seq, examples: list, max_tokens: int, device: str) -> float:
    """Mean per-token negative log-likelihood (no label smoothing): exp() of it is perplexity."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches(examples, max_tokens):
        total += loss_on(model, batch, device, 0.0).item()
        tokens += batch.n_tokens
    model.train(was_training)  # evaluation decodes right after this: dropout must stay off there
    return total / max(tokens, 1)


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Adam state as safetensors (tensors) + the scalar parts in the trainer state (no pickle)."""
    tensors = {}
    for idx, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            tensors[f"{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(path))


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(str(path))
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    optimizer.load_state_dict(sd)


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir: Path = args.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = args.device
        self.corpus = load_corpus(args.corpus, args.data_dir, args.src, args.tgt, args.seed, corpus_files(args))
        if args.reverse:
            self.corpus = self.corpus.reversed()
        if args.augment_sources:
            self.corpus.train = augment_sources(self.corpus.train)
        self.src_tok, self.tgt_tok = build_tokenizers(args, self.corpus, self.run_dir)
        self.config = ModelConfig(
            architecture=args.architecture,
            src_vocab_size=self.src_tok.vocab_size,
            tgt_vocab_size=self.tgt_tok.vocab_size,
            emb_dim=args.emb_dim,
            hidden_dim=args.hidden_dim,
            enc_layers=args.enc_layers,
            dec_layers=args.dec_layers,
            bidirectional=not args.unidirectional,
            dropout=args.dropout,
            share_vocab=args.joint_vocab,
        )
        torch.manual_seed(args.seed)
        self.model = Seq2Seq(self.config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.state = TrainerState(lr=args.lr)
        self.train_examples = encode_pairs(self.corpus.train, self.src_tok, self.tgt_tok, args.max_len)
        self.val_examples = encode_pairs(self.corpus.val, self.src_tok, self.tgt_tok, 10_000)
        self.stop_requested = False

    # -- persistence -------------------------------------------------------------------
    def save_run_info(self) -> None:
        info = {
            "args": self.recorded_args(),
            "model": self.config.to_dict(),
            "parameters": self.model.num_parameters(),
            "provenance": self.corpus.provenance,
            "data_sizes": {"train": len(self.corpus.train), "val": len(self.corpus.val), "test": len(self.corpus.test)},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")

    def recorded_args(self) -> dict[str, Any]:
        """The command-line options as ``run.json`` keeps them (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}

    def note_resume(self) -> None:
        """Record in ``run.json`` the options a resumed run was started with that differ from its
        first start's (``--amp bf16`` from some epoch on, say), so its provenance stays true."""
        path = self.run_dir / "run.json"
        info = json.loads(path.read_text())
        now = self.recorded_args()
        changed = {k: v for k, v in now.items() if k not in UNRECORDED_ARGS and info["args"].get(k) != v}
        if changed:
            log.info("resumed with other options than the run began with: %s", changed)
            info.setdefault("resumed_with", []).append(
                {"epoch": self.state.epoch, "batch": self.state.batch, **changed}
            )
            info["args"] = {**info["args"], **changed}
            path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")

    def checkpoint(self) -> None:
        """Write last weights, optimizer and trainer state; the state file is replaced last and atomically."""
        save_weights(self.model, self.run_dir / "last.safetensors")
        save_optimizer(self.optimizer, self.run_dir / "optimizer.safetensors")
        tmp = self.run_dir / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n")
        os.replace(tmp, self.run_dir / "trainer_state.json")

    def resume(self) -> bool:
        path = self.run_dir / "trainer_state.json"
        if not path.exists():
            return False
        self.state = TrainerState(**json.loads(path.read_text()))
        load_weights(self.model, self.run_dir / "last.safetensors")
        load_optimizer(self.optimizer, self.run_dir / "optimizer.safetensors")
        self.set_lr(self.state.lr)
        log.info(
            "resumed at epoch %d batch %d (best val loss %.4f)",
            self.state.epoch + 1,
            self.state.batch,
            self.state.best_val_loss,
        )
        return True

    def val_bleu(self) -> float:
        """Greedy BLEU on (a prefix of) the validation set, decoded by the server's batch code."""
        n = self.args.val_bleu_sentences or len(self.corpus.val)
        pairs = self.corpus.val[:n]
        self.model.eval()
        hyps = translate_all(self.model, self.src_tok, self.tgt_tok, [s for s, _ in pairs], DecodeParams())
        self.model.train()
        return float(bleu_scores(hyps, [t for _, t in pairs])["bleu"])

    def keep_epoch_weights(self) -> None:
        """Save this epoch's weights and delete those older than the last ``--keep-checkpoints``."""
        if self.args.keep_checkpoints <= 0:
            return
        save_weights(self.model, self.run_dir / f"epoch-{self.state.epoch:03d}.safetensors")
        for old in sorted(self.run_dir.glob("epoch-*.safetensors"))[: -self.args.keep_checkpoints]:
            old.unlink()

    def set_lr(self, lr: float) -> None:
        self.state.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- training ----------------------------------------------------------------------
    def run(self) -> TrainerState:
        args = self.args
        if self.resume():
            self.note_resume()
        else:
            if args.init_from:
                load_weights(self.model, args.init_from)
                log.info("initialised from %s", args.init_from)
            self.save_run_info()
        log.info(
            "%s: %d params, %d train / %d val pairs, threads=%d",
            self.config.architecture,
            self.model.num_parameters(),
            len(self.train_examples),
            len(self.val_examples),
            torch.get_num_threads(),
        )
        started = time.monotonic()
        budget_s = args.time_budget * 60 if args.time_budget else math.inf
        while not self.state.done and self.state.epoch < args.epochs:
            finished = self.train_epoch(started, budget_s)
            if not finished:
                log.info("stopping early inside epoch %d (resumable)", self.state.epoch + 1)
                break
            self.end_epoch()
        self.checkpoint()
        write_curve(self.state.history, self.run_dir)
        return self.state

    def epoch_examples(self) -> list[tuple[list[int], list[int]]]:
        """This epoch's training examples: with ``--subword-sampling``, sources segmented anew,
        drawn from a seed of the epoch, so that a resumed epoch sees the same batches."""
        if not self.args.subword_sampling:
            return self.train_examples
        seed_sampling(self.args.seed * 1000 + self.state.epoch)
        return encode_pairs(
            self.corpus.train, self.src_tok, self.tgt_tok, self.args.max_len, self.args.subword_sampling
        )

    def train_epoch(self, started: float, budget_s: float) -> bool:
        args, st = self.args, self.state
        self.model.train()
        torch.manual_seed(args.seed * 1000 + st.epoch * 100 + st.batch)
        epoch_batches = list(batches(self.epoch_examples(), args.max_tokens, shuffle_seed=args.seed * 1000 + st.epoch))
        last_ckpt = time.monotonic()
        bar = tqdm(
            total=len(epoch_batches), initial=st.batch, desc=f"epoch {st.epoch + 1}", mininterval=10, leave=False
        )
        for batch in epoch_batches[st.batch :]:
            t0 = time.monotonic()
            with torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=args.amp == "bf16"):
                loss = loss_on(self.model, batch, self.device, args.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            (loss / batch.n_tokens).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip)
            self.optimizer.step()
            st.step += 1
            st.batch += 1
            st.running_loss += loss.item()
            st.running_tokens += batch.n_tokens
            st.elapsed_s += time.monotonic() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{st.running_loss / st.running_tokens:.3f}", refresh=False)
            now = time.monotonic()
            if now - last_ckpt > args.checkpoint_minutes * 60:
                self.checkpoint()
                last_ckpt = now
            if self.stop_requested or now - started > budget_s:
                bar.close()
                return False
        bar.close()
        return True

    def end_epoch(self) -> None:
        args, st = self.args, self.state
        t0 = time.monotonic()
        val_loss = evaluate_loss(self.model, self.val_examples, args.max_tokens, self.device)
        val_bleu = self.val_bleu()
        st.elapsed_s += time.monotonic() - t0
        train_loss = st.running_loss / max(st.running_tokens, 1)
        st.epoch += 1
        st.history.append(
            {
                "epoch": st.epoch,
                "train_loss": round(train_loss, 4),
                "val_loss": round(val_loss, 4),
                "val_ppl": round(math.exp(val_loss), 3),
                "val_bleu": val_bleu,
                "lr": st.lr,
                "elapsed_s": round(st.elapsed_s, 1),
            }
        )
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val ppl %.2f, val BLEU %.2f, lr %.2e",
            st.epoch,
            train_loss,
            val_loss,
            math.exp(val_loss),
            val_bleu,
            st.lr,
        )
        self.keep_epoch_weights()
        if val_bleu > st.best_val_bleu:
            st.best_val_bleu, st.best_bleu_epoch = val_bleu, st.epoch
            save_weights(self.model, self.run_dir / "best-bleu.safetensors")
        if val_loss < st.best_val_loss:
            st.best_val_loss, st.best_epoch, st.bad_epochs = val_loss, st.epoch, 0
            save_weights(self.model, self.run_dir / "best.safetensors")
        else:
            st.bad_epochs += 1
            self.set_lr(st.lr * args.lr_decay)
            if st.bad_epochs >= args.patience:
                log.info("early stopping: no improvement for %d epochs", st.bad_epochs)
                st.done = True
        if st.epoch >= args.epochs:
            st.done = True
        st.batch, st.running_loss, st.running_tokens = 0, 0.0, 0
        self.checkpoint()
        write_curve(st.history, self.run_dir)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)

    def request_stop(signum: int, frame: object) -> None:
        log.info("signal %d: checkpointing and stopping", signum)
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    state = trainer.run()
    return asdict(state)


if __name__ == "__main__":
    main()
