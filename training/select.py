"""Choose a run's final weights and beam settings on the validation set (never on test).

    python -m training.select --run-dir runs/translate-de-en [--average 5] [--threads 1]
    python -m training.select --run-dir runs/chat-ko --backward runs/chat-ko-backward

1. Candidates: the epoch with the lowest validation loss (``best.safetensors``), the one with
   the highest greedy validation BLEU (``best-bleu.safetensors``), and the average of the
   last ``--average`` epochs' weights (checkpoint averaging, written as ``average.safetensors``).
2. Each is scored by beam-search BLEU on val (beam 5, length penalty 1.0); the best wins and is
   copied to ``selected.safetensors``.
3. For the winner, beam size and length penalty are tuned on val over a small grid.
4. With ``--backward RUN_DIR`` (a chat model's backward run, ``--reverse``), the weight of
   MMI reranking (:mod:`seq2seq.rerank`) and the beam it reranks are tuned on val too, with
   the length penalty of step 3; reranking is kept only if it beats step 3's best on val.

Writes ``selection.json`` (every score, the choice, the tuned decoding); ``training.evaluate``
and ``training.export`` then use ``selected.safetensors`` and the tuned settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from seq2seq.decoding import DecodeParams
from seq2seq.model import Seq2Seq
from training.data import load_corpus
from training.evaluate import corpus_of_run, load_run
from training.scoring import bleu_scores, translate_all

log = logging.getLogger("training.select")

BEAM_SIZES = (3, 5, 8)
LENGTH_PENALTIES = (0.6, 0.8, 1.0, 1.2)
MMI_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8)
MMI_BEAM_SIZES = (5, 8)  # reranking gains from a larger pool; 8 is the server's default beam limit


def average_weights(paths: list[Path], out: Path) -> None:
    """The element-wise mean of several checkpoints of one model (floating tensors in float32)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        for name, tensor in load_file(str(path)).items():
            total[name] = total.get(name, torch.zeros_like(tensor, dtype=torch.float32)) + tensor.float()
    save_file({name: (t / len(paths)).contiguous() for name, t in total.items()}, str(out), {"format": "pt"})


def val_bleu(run: tuple, pairs: list[tuple[str, str]], params: DecodeParams, backward: Seq2Seq | None = None) -> float:
    """BLEU on ``pairs`` of a loaded run (``load_run``'s model and tokenizers)."""
    model, src_tok, tgt_tok, _ = run
    hyps = translate_all(model, src_tok, tgt_tok, [s for s, _ in pairs], params, backward=backward)
    return float(bleu_scores(hyps, [t for _, t in pairs])["bleu"])


def select(run_dir: Path, average: int = 5, backward_dir: Path | None = None) -> dict[str, Any]:
    info = json.loads((run_dir / "run.json").read_text())
    pairs = load_corpus(**corpus_of_run(info)).val
    candidates = ["best.safetensors", "best-bleu.safetensors"]
    epochs = sorted(run_dir.glob("epoch-*.safetensors"))[-average:]
    if len(epochs) > 1:
        average_weights(epochs, run_dir / "average.safetensors")
        candidates.append("average.safetensors")
    beam = DecodeParams(beam_size=5, length_penalty=1.0)
    scores = {name: val_bleu(load_run(run_dir, name), pairs, beam) for name in candidates if (run_dir / name).exists()}
    for name, bleu in scores.items():
        log.info("%s: val BLEU %.2f (beam 5)", name, bleu)
    chosen = max(scores, key=scores.__getitem__)
    shutil.copyfile(run_dir / chosen, run_dir / "selected.safetensors")
    selected = load_run(run_dir, "selected.safetensors")  # once, for the whole grid
    grid = {}
    for beam_size, alpha in itertools.product(BEAM_SIZES, LENGTH_PENALTIES):
        params = DecodeParams(beam_size=beam_size, length_penalty=alpha)
        grid[f"beam {beam_size}, alpha {alpha}"] = val_bleu(selected, pairs, params)
        log.info(
            "beam %d, length penalty %.1f: val BLEU %.2f", beam_size, alpha, grid[f"beam {beam_size}, alpha {alpha}"]
        )
    best = max(grid, key=grid.__getitem__)
    beam_size, alpha = (float(x.split()[-1]) for x in best.split(", "))
    decoding: dict[str, Any] = {"beam_size": int(beam_size), "length_penalty": alpha}
    result = {
        "candidates": scores,
        "averaged_epochs": [p.name for p in epochs] if len(epochs) > 1 else [],
        "selected": chosen,
        "grid": grid,
        "decoding": decoding,
        "set": "val",
    }
    if backward_dir is not None:
        backward = load_run(backward_dir)[0]
        mmi, settings = {}, {}
        for beams, weight in itertools.product(MMI_BEAM_SIZES, MMI_WEIGHTS):
            params = DecodeParams(beam_size=beams, length_penalty=alpha, mmi_weight=weight)
            key = f"beam {beams}, weight {weight}"
            mmi[key], settings[key] = val_bleu(selected, pairs, params, backward), (beams, weight)
            log.info("beam %d, MMI weight %.1f: val BLEU %.2f", beams, weight, mmi[key])
        best_mmi = max(mmi, key=mmi.__getitem__)
        if mmi[best_mmi] > grid[best]:  # else reranking does not help on val
            decoding.update(beam_size=settings[best_mmi][0], mmi_weight=settings[best_mmi][1])
        else:
            decoding["mmi_weight"] = 0.0
        result.update(mmi_grid=mmi, backward=str(backward_dir.resolve()))
    (run_dir / "selection.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--average", type=int, default=5, help="average the last N epochs' weights as a candidate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backward", type=Path, help="the run of the backward model: tune MMI reranking with it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = select(args.run_dir, args.average, args.backward)
    print(json.dumps({k: result[k] for k in ("candidates", "selected", "decoding")}, indent=1))
    return result


if __name__ == "__main__":
    main()
