"""Choosing a run's final weights and beam settings on val: averaging, selection, tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.training.conftest import TrainedRun, isolated_main
from training import evaluate, select


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
