"""Evaluate a model on a test set: perplexity and sacreBLEU (cased and lowercased), greedy and beam.

    python -m training.evaluate --run-dir runs/translate-de-en            # best weights of a run
    python -m training.evaluate --model-dir model_store/translate-de-en/1  # a packaged model

Decoding goes through :func:`seq2seq.generation.generate`, the same batch code the
service runs, so the reported BLEU is what the server produces.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from seq2seq.checkpoint import decoding_defaults, load_model_dir, load_weights, update_manifest
from seq2seq.config import ModelConfig
from seq2seq.decoding import DecodeParams
from seq2seq.model import Seq2Seq
from seq2seq.optimize import DTYPES, QUANTIZATIONS, dtype_fits, optimize_for_inference
from seq2seq.tokenizer import Tokenizer
from training.data import Pair, encode_pairs, load_corpus
from training.scoring import bleu_scores, translate_all
from training.train import corpus_files, evaluate_loss

log = logging.getLogger("training.evaluate")


def run_weights(run_dir: Path) -> str:
    """The weights a run hands on: those ``training.select`` chose, else the lowest validation loss."""
    return "selected.safetensors" if (run_dir / "selected.safetensors").exists() else "best.safetensors"


def corpus_of_run(info: dict[str, Any], corpus: str | None = None, src: str | None = None, tgt: str | None = None):
    """``load_corpus`` arguments for the data a run (its ``run.json``) trained on."""
    run_args = info["args"]
    return {
        "name": corpus or run_args["corpus"],
        "data_dir": Path(run_args["data_dir"]),
        "src": src or run_args["src"],
        "tgt": tgt or run_args["tgt"],
        "seed": int(run_args["seed"]),
        "files": corpus_files(argparse.Namespace(**run_args)),  # corpus 'files'
    }


def corpus_of_model(
    manifest: dict[str, Any], corpus: str | None = None, src: str | None = None, tgt: str | None = None
) -> dict[str, Any]:
    """``load_corpus`` arguments for the data a packaged model (its manifest) trained on."""
    trained_on = manifest.get("training", {}).get("hyperparameters", {})
    return {
        "name": corpus or trained_on.get("corpus", "multi30k"),
        "src": src or manifest["source_lang"],
        "tgt": tgt or manifest["target_lang"],
        "seed": int(trained_on.get("seed", 1)),  # the chat corpora's held-out split depends on it
        "files": corpus_files(argparse.Namespace(**trained_on)),  # corpus 'files': the paths it trained on
    }


def load_run(run_dir: Path, weights: str | None = None) -> tuple[Seq2Seq, Tokenizer, Tokenizer, dict[str, Any]]:
    """The run's model (``weights``: a file of the run; default :func:`run_weights`) and tokenizers."""
    info = json.loads((run_dir / "run.json").read_text())
    model = Seq2Seq(ModelConfig.from_dict(info["model"]))
    load_weights(model, run_dir / (weights or run_weights(run_dir)))
    model.eval()
    return model, Tokenizer.load(run_dir / "source.model"), Tokenizer.load(run_dir / "target.model"), info


def evaluate(
    model: Seq2Seq,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    test: list[Pair],
    beam_size: int = 5,
    length_penalty: float = 1.0,
    max_length: int = 100,
    mmi_weight: float = 0.0,
    backward: Seq2Seq | None = None,
) -> dict[str, Any]:
    """Test loss and perplexity, and BLEU and chrF greedy and with beam search (reranked by
    ``backward`` with ``mmi_weight``, for a chat model that ships one)."""
    sources = [s for s, _ in test]
    references = [t for _, t in test]
    nll = evaluate_loss(model, encode_pairs(test, src_tok, tgt_tok, 10_000), 4000, "cpu")
    result: dict[str, Any] = {"sentences": len(test), "test_loss": round(nll, 4), "test_ppl": round(math.exp(nll), 2)}
    for name, params in (
        ("greedy", DecodeParams(max_length=max_length)),
        (
            "beam",
            DecodeParams(
                max_length=max_length, beam_size=beam_size, length_penalty=length_penalty, mmi_weight=mmi_weight
            ),
        ),
    ):
        t0 = time.monotonic()
        hyps = translate_all(model, src_tok, tgt_tok, sources, params, backward=backward)
        seconds = time.monotonic() - t0
        result[name] = {
            **bleu_scores(hyps, references),
            "decoding": {
                "beam_size": params.beam_size,
                "length_penalty": params.length_penalty if params.beam_size > 1 else None,
                "max_length": max_length,
                **({"mmi_weight": params.mmi_weight} if params.mmi_weight else {}),
            },
            "seconds": round(seconds, 1),
            "examples": [
                {"source": s, "reference": r, "output": h}
                for s, r, h in list(zip(sources, references, hyps, strict=True))[:3]
            ],
        }
        log.info(
            "%s: BLEU %.2f (lowercased %.2f) in %.0fs", name, result[name]["bleu"], result[name]["bleu_lc"], seconds
        )
    return result


def precision_key(quantize: str, dtype: str) -> str:
    """Where a form of the model files its figures in the manifest: ``int8``, else its dtype."""
    return quantize if quantize != "none" else dtype


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of an evaluation that compare forms of one model (no examples, no signatures)."""
    return {
        "test_ppl": result["test_ppl"],
        **{
            mode: {k: result[mode][k] for k in ("bleu", "chrf", "seconds")}
            | {"beam_size": result[mode]["decoding"]["beam_size"]}
            for mode in ("greedy", "beam")
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path)
    where.add_argument("--model-dir", type=Path)
    p.add_argument("--corpus", help="default: the corpus the run or the packaged model was trained on")
    p.add_argument("--src", help="default: the run's / manifest's source language")
    p.add_argument("--tgt", help="default: the run's / manifest's target language")
    p.add_argument("--beam-size", type=int, help="default: tuned on val (selection.json / manifest), else 5")
    p.add_argument("--length-penalty", type=float, help="default: tuned on val, else 1.0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quantize", choices=QUANTIZATIONS, default="none", help="evaluate the int8 model the service runs with it"
    )
    p.add_argument(
        "--dtype",
        choices=[d for d in DTYPES if d != "auto"],
        default="float32",
        help="weights and activations of the evaluated model (the service's --dtype)",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here (default: <run-dir>/eval.json)")
    p.add_argument(
        "--apply",
        action="store_true",
        help="with --model-dir: write the figures into the manifest's 'precision' block, under the dtype or int8",
    )
    args = p.parse_args(argv)
    if not dtype_fits(args.quantize, args.dtype):
        p.error("--quantize int8 runs float32 activations: leave --dtype at float32")
    if args.apply and not args.model_dir:
        p.error("--apply writes into a packaged model's manifest: give --model-dir")
    torch.set_num_threads(args.threads)
    tuned: dict[str, Any] = {}
    backward: Seq2Seq | None = None
    if args.run_dir:
        model, src_tok, tgt_tok, info = load_run(args.run_dir)
        corpus = load_corpus(**corpus_of_run(info, args.corpus, args.src, args.tgt))
        if (args.run_dir / "selection.json").exists():
            selection = json.loads((args.run_dir / "selection.json").read_text())
            tuned = selection["decoding"]
            if "backward" in selection:  # tuned with a backward model: decode as the exported model will
                backward = load_run(Path(selection["backward"]))[0]
    else:
        loaded = load_model_dir(args.model_dir)
        model, src_tok, tgt_tok = loaded.model, loaded.source_tokenizer, loaded.target_tokenizer
        corpus = load_corpus(**corpus_of_model(loaded.manifest, args.corpus, args.src, args.tgt))
        tuned = decoding_defaults(loaded.manifest)
        backward = loaded.backward
    model = optimize_for_inference(model.to(getattr(torch, args.dtype)), args.quantize)  # the form the service runs
    beam_size = args.beam_size or tuned.get("beam_size", 5)
    alpha = args.length_penalty if args.length_penalty is not None else tuned.get("length_penalty", 1.0)
    if backward is not None:  # as the service loads it: in the dtype, neither fused nor quantised
        backward = backward.to(getattr(torch, args.dtype))
    mmi = tuned.get("mmi_weight", 0.0)  # a selection or a manifest has one only beside a backward model
    result = evaluate(model, src_tok, tgt_tok, corpus.test, beam_size, alpha, mmi_weight=mmi, backward=backward)
    result["dtype"], result["quantize"] = args.dtype, args.quantize
    result["test_set"] = (
        corpus.provenance.get("splits", {}).get("test", "test")
        if isinstance(corpus.provenance.get("splits"), dict)
        else "held-out 5%"
    )
    if args.apply:
        precision = {
            **(loaded.manifest.get("precision") or {}),
            precision_key(args.quantize, args.dtype): summary(result),
        }
        update_manifest(args.model_dir, {"precision": precision})
    out = args.out or (args.run_dir / "eval.json" if args.run_dir else None)
    if out:
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k in ("test_ppl", "greedy", "beam")}, indent=1, ensure_ascii=False
        )[:2000]
    )
    return result


if __name__ == "__main__":
    main()
