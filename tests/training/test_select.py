"""Choosing a run's final weights and beam settings on val: averaging, selection, tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seq2seq.checkpoint import load_model_dir
from tests.training.conftest import TrainedRun, isolated_main, train_argv
from training import evaluate, select, train
from training.export import Identity, export_run


@pytest.fixture
def run_dir(trained_run: TrainedRun, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, copy)
    return copy


def test_average_is_the_elementwise_mean(tmp_path: Path) -> None:
    paths = []
    for i, value in enumerate((1.0, 2.0, 6.0)):
        paths.append(tmp_path / f"e{i}.safetensors")
        save_file({"w": torch.full((2, 3), value, dtype=torch.float16)}, str(paths[-1]))
    select.average_weights(paths, tmp_path / "avg.safetensors")
    assert torch.equal(load_file(str(tmp_path / "avg.safetensors"))["w"], torch.full((2, 3), 3.0))


def test_select_picks_weights_and_beam_settings_on_val_and_evaluation_uses_them(run_dir: Path, tmp_path: Path) -> None:
    with isolated_main():
        result = select.main(["--run-dir", str(run_dir), "--average", "3"])
    assert set(result["candidates"]) == {"best.safetensors", "best-bleu.safetensors", "average.safetensors"}
    assert result["averaged_epochs"] == ["epoch-006.safetensors", "epoch-007.safetensors", "epoch-008.safetensors"]
    assert result["candidates"][result["selected"]] == max(result["candidates"].values())
    assert (run_dir / "selected.safetensors").read_bytes() == (run_dir / result["selected"]).read_bytes()
    assert len(result["grid"]) == len(select.BEAM_SIZES) * len(select.LENGTH_PENALTIES)
    decoding = result["decoding"]
    assert result["grid"][f"beam {decoding['beam_size']}, alpha {decoding['length_penalty']}"] == max(
        result["grid"].values()
    )
    assert json.loads((run_dir / "selection.json").read_text()) == result
    with isolated_main():
        evaluated = evaluate.main(["--run-dir", str(run_dir), "--out", str(tmp_path / "eval.json")])
    assert evaluated["beam"]["decoding"]["beam_size"] == decoding["beam_size"]  # tuned on val, used on test
    assert evaluated["beam"]["decoding"]["length_penalty"] == decoding["length_penalty"]
    assert evaluated["beam"]["chrf"] > 90 and "nc:6" in evaluated["beam"]["signature_chrf"]  # chrF beside BLEU


def test_mmi_reranking_is_tuned_on_val_and_the_backward_model_ships_inside_the_model(
    trained_run: TrainedRun, run_dir: Path, tmp_path: Path
) -> None:
    """A backward run (``--reverse``, the forward run's tokenizers), the MMI weight chosen on val
    among the grid's, and an export that carries both models and loads with them."""
    argv = json.loads((trained_run.run_dir / "run.json").read_text())["args"]
    backward_dir = tmp_path / "backward"
    with isolated_main():
        train.main(
            train_argv(backward_dir, Path(argv["train"]), Path(argv["val"]), "--epochs", "3", "--reverse")
            + ["--test", argv["test"], "--tokenizers-from", str(run_dir)]
        )
    info = json.loads((backward_dir / "run.json").read_text())
    assert info["args"]["reverse"] and info["provenance"]["direction"] == "reversed: target -> source"
    with isolated_main():
        result = select.main(["--run-dir", str(run_dir), "--average", "3", "--backward", str(backward_dir)])
    assert len(result["mmi_grid"]) == len(select.MMI_BEAM_SIZES) * len(select.MMI_WEIGHTS)
    decoding, best_plain = result["decoding"], max(result["grid"].values())
    if decoding["mmi_weight"]:  # kept only when it beats plain beam search on val
        chosen = result["mmi_grid"][f"beam {decoding['beam_size']}, weight {decoding['mmi_weight']}"]
        assert chosen == max(result["mmi_grid"].values()) > best_plain
    else:
        assert max(result["mmi_grid"].values()) <= best_plain
    with isolated_main():
        evaluated = evaluate.main(["--run-dir", str(run_dir), "--out", str(tmp_path / "eval.json")])
    assert evaluated["beam"]["decoding"].get("mmi_weight", 0.0) == result["decoding"]["mmi_weight"]
    identity = Identity("chat", "xx", "yy", "letters reversed", "test")
    out = export_run(run_dir, "toy-chat", "1", identity, tmp_path / "store")
    loaded = load_model_dir(out)
    assert loaded.backward is not None and loaded.manifest["decoding"]["mmi_weight"] == result["decoding"]["mmi_weight"]
    assert loaded.manifest["training"]["backward"]["run"] == "backward"
    assert loaded.manifest["training"]["backward"]["epochs"] == 3
