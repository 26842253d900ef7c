"""Export: a trained run becomes a verified, versioned model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from seq2seq.checkpoint import MANIFEST, load_model_dir, sha256_file
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from tests.training.conftest import RUN_NAME, TrainedRun, reverse_pairs, run_train, train_argv, write_tsv
from training import export, recipes
from training.recipes import Recipe


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    """Register the synthetic run as a recipe (export reads task and languages from it)."""
    toy = Recipe(RUN_NAME, "translate", "xx", "yy", (), "letters reversed (test fixture)")
    monkeypatch.setitem(recipes.RECIPES, RUN_NAME, toy)
    assert export.RECIPES is recipes.RECIPES
    return toy


@pytest.fixture
def runs_dir(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the trained run, so this test can add files to it."""
    runs = tmp_path / "runs"
    shutil.copytree(trained_run.run_dir, runs / RUN_NAME)
    return runs


def test_export_writes_a_loadable_model_dir(
    recipe: Recipe, runs_dir: Path, trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = {"greedy": {"bleu": 99.5}}
    (runs_dir / RUN_NAME / "eval.json").write_text(json.dumps(evaluation))
    store = tmp_path / "model_store"
    export.main([RUN_NAME, "--version", "2", "--runs-dir", str(runs_dir), "--model-store", str(store)])
    out = store / RUN_NAME / "2"
    assert capsys.readouterr().out.strip() == str(out)

    loaded = load_model_dir(out)
    m = loaded.manifest
    assert (m["name"], m["version"], m["task"], m["source_lang"], m["target_lang"]) == (
        RUN_NAME,
        "2",
        "translate",
        "xx",
        "yy",
    )
    assert m["description"] == recipe.description and m["architecture"] == "attention"
    assert m["evaluation"] == evaluation
    state = trained_run.state
    training = m["training"]
    assert training["epochs"] == state["epoch"] and training["best_epoch"] == state["best_epoch"]
    assert training["best_val_loss"] == round(state["best_val_loss"], 4)
    assert training["history"] == state["history"]
    assert training["data_sizes"] == {"train": 2000, "val": 200, "test": 200}
    hyper = training["hyperparameters"]
    assert hyper["hidden_dim"] == 64 and hyper["corpus"] == "files"
    assert not {"run_dir", "data_dir", "threads", "time_budget"} & set(hyper)
    assert set(m["files"]) == {
        "model.safetensors",
        "source.model",
        "target.model",
        "training_curve.json",
        "training_curve.png",
    }
    assert sha256_file(out / "source.model") == sha256_file(runs_dir / RUN_NAME / "source.model")

    # The packaged (float16) model still solves the task.
    requests = [
        GenerationRequest(str(i), loaded.source_tokenizer.encode(s), DecodeParams(max_length=12))
        for i, (s, _) in enumerate(trained_run.test)
    ]
    results = generate(loaded.model, requests)
    correct = sum(
        loaded.target_tokenizer.decode(results[str(i)][0].tokens) == t for i, (_, t) in enumerate(trained_run.test)
    )
    assert correct / len(trained_run.test) >= 0.95


def test_export_without_evaluation(recipe: Recipe, runs_dir: Path, tmp_path: Path) -> None:
    out = export.export(RUN_NAME, "1", runs_dir=runs_dir, model_store=tmp_path / "store")
    assert out == tmp_path / "store" / RUN_NAME / "1"
    assert json.loads((out / MANIFEST).read_text())["evaluation"] is None


def test_export_joint_vocabulary_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A chat-style run (one tokenizer for both sides) exports with a single tokenizer file."""
    name = "chat-toy"
    monkeypatch.setitem(recipes.RECIPES, name, Recipe(name, "chat", "xx", "xx", (), "echo (test fixture)"))
    pairs = reverse_pairs(200, seed=5)
    argv = train_argv(
        tmp_path / "runs" / name,
        write_tsv(tmp_path / "train.tsv", pairs),
        write_tsv(tmp_path / "val.tsv", pairs[:20]),
        "--joint-vocab",
        "--epochs",
        "1",
        "--hidden-dim",
        "16",
        "--emb-dim",
        "8",
    )
    run_train(argv)
    out = export.export(name, "1", runs_dir=tmp_path / "runs", model_store=tmp_path / "store")
    loaded = load_model_dir(out)
    assert loaded.manifest["task"] == "chat"
    assert loaded.manifest["tokenizer"] == {"source": "source.model", "target": "source.model"}
    assert not (out / "target.model").exists()
    assert loaded.config.share_vocab and loaded.model.encoder.embedding is loaded.model.decoder.embedding
