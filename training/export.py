"""Package a trained run as a versioned model directory in ``model_store/``.

    python -m training.export translate-de-en [--version 1] [--model-store model_store]

Reads the run of that recipe (``runs/<name>``: best weights, tokenizers, ``run.json``,
``trainer_state.json``, ``eval.json``) and writes ``model_store/<name>/<version>/`` with
a manifest holding the config, checksums, provenance and evaluation results.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seq2seq.checkpoint import load_model_dir, save_model_dir
from training.evaluate import load_run
from training.recipes import RECIPES, RUNS_DIR
from training.train import UNRECORDED_ARGS

MODEL_STORE = Path(__file__).resolve().parents[1] / "model_store"


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def shipped_epoch(state: dict[str, Any], selection: dict[str, Any] | None) -> int | str:
    """The epoch of the weights exported: lowest val loss unless ``training.select`` chose otherwise."""
    chosen = (selection or {}).get("selected", "best.safetensors")
    if chosen == "best-bleu.safetensors":
        return int(state["best_bleu_epoch"])
    if chosen == "average.safetensors":
        epochs = [int(e.removeprefix("epoch-").removesuffix(".safetensors")) for e in selection["averaged_epochs"]]
        return f"average of {epochs[0]}-{epochs[-1]}"
    return int(state["best_epoch"])


@dataclass(frozen=True)
class Identity:
    """What a model is, for its manifest: the recipes' own, or a user's (training.pipeline)."""

    task: str  # translate | chat
    source_lang: str
    target_lang: str
    description: str
    command: str  # how it was made, for whoever retrains it


def recipe_identity(name: str) -> Identity:
    recipe = RECIPES[name]
    command = f"python -m training.recipes train {name}"
    return Identity(recipe.task, recipe.src, recipe.tgt, recipe.description, command)


def build_manifest(name: str, version: str, run_dir: Path, identity: Identity) -> dict[str, Any]:
    info = json.loads((run_dir / "run.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else None
    selection_path = run_dir / "selection.json"
    selection = json.loads(selection_path.read_text()) if selection_path.exists() else None
    threads = info.get("threads", 1)
    return {
        "name": name,
        "version": version,
        "task": identity.task,
        "source_lang": identity.source_lang,
        "target_lang": identity.target_lang,
        "description": identity.description,
        "architecture": info["model"]["architecture"],
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "training": {
            "data": info["provenance"],
            "data_sizes": info["data_sizes"],
            "recipe": identity.command,
            "hyperparameters": {k: v for k, v in info["args"].items() if v is not None and k not in UNRECORDED_ARGS},
            "epochs": state["epoch"],
            "best_epoch": shipped_epoch(state, selection),  # the epoch whose weights are in the model dir
            "best_val_loss": round(state["best_val_loss"], 4),
            "training_time_s": round(state["elapsed_s"]),
            "hardware": f"{hardware()}, {threads} thread(s), CPU",
            "torch": info["torch"],
            "history": state["history"],
            **({"resumed_with": info["resumed_with"]} if "resumed_with" in info else {}),
        },
        "evaluation": evaluation,
        # weights and beam settings chosen on val (training.select): what "beam" above was decoded with
        **({"selection": selection, "decoding": selection["decoding"]} if selection else {}),
    }


def export(name: str, version: str = "1", runs_dir: Path = RUNS_DIR, model_store: Path = MODEL_STORE) -> Path:
    """A recipe's run as ``model_store/<name>/<version>``."""
    return export_run(runs_dir / name, name, version, recipe_identity(name), model_store)


def export_run(run_dir: Path, name: str, version: str, identity: Identity, model_store: Path = MODEL_STORE) -> Path:
    """Any run as ``model_store/<name>/<version>``, checked to load as the server loads it."""
    model, _, _, _ = load_run(run_dir)
    extras = tuple(p for p in (run_dir / "training_curve.json", run_dir / "training_curve.png") if p.exists())
    manifest = build_manifest(name, version, run_dir, identity)
    backward = None
    if "backward" in (manifest.get("selection") or {}):  # training.select tuned MMI reranking with it
        backward_dir = Path(manifest["selection"]["backward"])
        backward = load_run(backward_dir)[0]
        state = json.loads((backward_dir / "trainer_state.json").read_text())
        manifest["training"]["backward"] = {
            "run": backward_dir.name,
            "epochs": state["epoch"],
            "best_val_loss": round(state["best_val_loss"], 4),
            "training_time_s": round(state["elapsed_s"]),
        }
    out = save_model_dir(
        model_store / name / version,
        model,
        manifest,
        run_dir / "source.model",
        run_dir / "target.model",
        extras,
        backward=backward,
    )
    load_model_dir(out)  # the directory must load cleanly (checksums, config/weights agreement)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(name for name, r in RECIPES.items() if r.backward_of is None)  # backward runs ship inside theirs
    p.add_argument("name", choices=models)
    p.add_argument("--version", default="1")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    p.add_argument("--model-store", type=Path, default=MODEL_STORE)
    args = p.parse_args(argv)
    print(export(args.name, args.version, args.runs_dir, args.model_store))


if __name__ == "__main__":
    main()
