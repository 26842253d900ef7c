"""Evaluation: perplexity and BLEU through the same generation code as the service."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seq2seq.checkpoint import load_model_dir, read_manifest
from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from tests.training.conftest import TrainedRun, isolated_main
from training import evaluate, report
from training.data import batches
from training.export import Identity, export_run
from training.train import evaluate_loss


def dropout_model() -> tuple[Seq2Seq, list[tuple[list[int], list[int]]]]:
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(src_vocab_size=20, tgt_vocab_size=20, emb_dim=8, hidden_dim=8, dropout=0.5))
    g = torch.Generator().manual_seed(1)
    examples = [
        (torch.randint(4, 20, (n,), generator=g).tolist(), torch.randint(4, 20, (n + 1,), generator=g).tolist())
        for n in (2, 5, 3, 7, 4)
    ]
    return model, examples


@pytest.mark.parametrize("training", [False, True])
def test_evaluate_loss_is_the_eval_mode_nll_and_keeps_the_mode(training: bool) -> None:
    model, examples = dropout_model()
    model.train(training)
    loss = evaluate_loss(model, examples, max_tokens=30, device="cpu")
    assert model.training is training  # evaluation decodes next: it must not switch dropout on
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches(examples, 30):
            logits = model(batch.src, batch.src_lengths, batch.tgt_in)
            total += F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=0, reduction="sum").item()
            tokens += batch.n_tokens
    assert loss == pytest.approx(total / tokens, rel=1e-5)
    assert math.log(20) / 2 < loss < 3 * math.log(20)  # an untrained model is roughly uniform


def test_evaluate_is_deterministic_on_a_model_with_dropout() -> None:
    model, examples = dropout_model()
    model.eval()
    pairs = [(" ".join(map(str, s)), " ".join(map(str, t))) for s, t in examples]

    class IdTokenizer:
        def encode(self, text: str) -> list[int]:
            return [int(x) for x in text.split()]

        def decode(self, ids: list[int]) -> str:
            return " ".join(str(i) for i in ids if i > 3)

        blank_ids = frozenset({0, 1, 2})  # the special ids, which decode to nothing

    tok = IdTokenizer()
    first = evaluate.evaluate(model, tok, tok, pairs, beam_size=2, max_length=6)  # type: ignore[arg-type]
    second = evaluate.evaluate(model, tok, tok, pairs, beam_size=2, max_length=6)  # type: ignore[arg-type]
    assert not model.training
    for name in ("greedy", "beam"):
        assert first[name]["examples"] == second[name]["examples"]
        assert first[name]["bleu"] == second[name]["bleu"]


def test_evaluate_a_run_dir(trained_run: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    with isolated_main():
        result = evaluate.main(["--run-dir", str(trained_run.run_dir), "--beam-size", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["sentences"] == len(trained_run.test)  # the run's own test file
    assert result["test_ppl"] < 1.2
    for name in ("greedy", "beam"):
        assert result[name]["bleu"] > 90 and result[name]["bleu_lc"] >= result[name]["bleu"] - 1e-9
        assert result[name]["signature"].startswith("nrefs:1")
        example = result[name]["examples"][0]
        assert example["output"] == example["reference"] == " ".join(reversed(example["source"].split()))
    assert result["beam"]["decoding"]["beam_size"] == 3 and result["greedy"]["decoding"]["length_penalty"] is None


def test_evaluate_in_bfloat16(trained_run: TrainedRun, tmp_path: Path) -> None:
    with isolated_main():
        result = evaluate.main(
            ["--run-dir", str(trained_run.run_dir), "--dtype", "bfloat16", "--out", str(tmp_path / "eval.json")]
        )
    assert result["dtype"] == "bfloat16" and result["quantize"] == "none"
    assert result["greedy"]["bleu"] > 90 and result["test_ppl"] < 1.2  # the tiny task survives bfloat16 weights


def test_int8_with_another_dtype_is_a_usage_error(trained_run: TrainedRun) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--run-dir", str(trained_run.run_dir), "--quantize", "int8", "--dtype", "bfloat16"])
    assert exc.value.code == 2


def test_each_form_of_a_packaged_model_files_its_figures_for_the_readme_table(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    """``--apply`` on a model directory: float32, bfloat16 and int8 each land in the manifest's
    ``precision`` block, evaluated on the test file the model was trained beside, and the
    README's table compares them."""
    identity = Identity("translate", "xx", "yy", "letters reversed", "test")
    model_dir = export_run(trained_run.run_dir, "reverse", "1", identity, tmp_path / "store")
    for form in (["--dtype", "float32"], ["--dtype", "bfloat16"], ["--quantize", "int8"]):
        with isolated_main():
            evaluate.main(["--model-dir", str(model_dir), "--beam-size", "2", "--apply", *form])
    precision = read_manifest(model_dir)["precision"]
    assert set(precision) == {"float32", "bfloat16", "int8"}
    for figures in precision.values():
        assert figures["greedy"]["bleu"] > 90 and figures["beam"]["beam_size"] == 2 and figures["test_ppl"] < 1.2
    load_model_dir(model_dir)  # the checksums still hold: only the manifest changed
    row = report.precision_table(tmp_path / "store").splitlines()[2]
    f32, bf16 = precision["float32"]["greedy"]["bleu"], precision["bfloat16"]["greedy"]["bleu"]
    assert row.startswith(f"| `reverse` v1 | {f32:.2f} / ") and f"{bf16:.2f} / " in row
    assert f"({bf16 - f32:+.2f} / " in row and row.endswith(" s |")


def test_apply_needs_a_packaged_model(trained_run: TrainedRun) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--run-dir", str(trained_run.run_dir), "--apply"])
    assert exc.value.code == 2
