"""Training end to end on a synthetic task: it learns, it writes its run directory, and it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seq2seq.checkpoint import CheckpointError
from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from tests.training.conftest import TrainedRun, reverse_pairs, run_train, train_argv, write_tsv
from training import train
from training.evaluate import load_run


def exact_match(run_dir: Path, pairs: list[tuple[str, str]], params: DecodeParams) -> float:
    model, src_tok, tgt_tok, _ = load_run(run_dir)
    requests = [GenerationRequest(str(i), src_tok.encode(s), params) for i, (s, _) in enumerate(pairs)]
    results = generate(model, requests)
    return sum(tgt_tok.decode(results[str(i)][0].tokens) == t for i, (_, t) in enumerate(pairs)) / len(pairs)


def test_learns_to_reverse(trained_run: TrainedRun) -> None:
    assert exact_match(trained_run.run_dir, trained_run.test, DecodeParams(max_length=12)) >= 0.9
    history = trained_run.state["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert history[-1]["val_loss"] < history[0]["val_loss"] / 5
    assert trained_run.state["best_val_loss"] == pytest.approx(min(h["val_loss"] for h in history), abs=1e-4)


def test_beam_search_on_the_trained_model(trained_run: TrainedRun) -> None:
    """On a model this sure of itself, beam search must do at least as well as greedy decoding."""
    greedy = exact_match(trained_run.run_dir, trained_run.test, DecodeParams(max_length=12))
    beam = exact_match(trained_run.run_dir, trained_run.test, DecodeParams(max_length=12, beam_size=3))
    assert beam >= 0.95 and beam >= greedy - 0.01


def test_run_directory_contents(trained_run: TrainedRun) -> None:
    run_dir = trained_run.run_dir
    for name in (
        "run.json",
        "source.model",
        "target.model",
        "last.safetensors",
        "best.safetensors",
        "best-bleu.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "training_curve.json",
        "training_curve.png",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((run_dir / "training_curve.json").read_text())
    assert curve == trained_run.state["history"]
    assert set(curve[0]) == {"epoch", "train_loss", "val_loss", "val_ppl", "val_bleu", "lr", "elapsed_s"}
    assert curve[-1]["val_bleu"] > 90 > curve[0]["val_bleu"]  # greedy sacreBLEU on val, every epoch
    kept = sorted(p.name for p in run_dir.glob("epoch-*.safetensors"))
    assert kept == [f"epoch-{e:03d}.safetensors" for e in range(4, 9)]  # the last 5 epochs, for averaging
    best_bleu = max(curve, key=lambda h: h["val_bleu"])
    assert trained_run.state["best_val_bleu"] == best_bleu["val_bleu"]
    assert trained_run.state["best_bleu_epoch"] == best_bleu["epoch"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["model"]["architecture"] == "attention" and info["model"]["hidden_dim"] == 64
    assert info["data_sizes"] == {"train": 2000, "val": 200, "test": 200}
    assert info["args"]["corpus"] == "files"
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["epoch"] == 8 and state["done"] and state["batch"] == 0
    assert state == trained_run.state


def small_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    train_tsv = tmp_path / "train.tsv"
    if not train_tsv.exists():
        write_tsv(train_tsv, reverse_pairs(300, seed=3))
        write_tsv(tmp_path / "val.tsv", reverse_pairs(40, seed=4))
    return train_argv(tmp_path / name, train_tsv, tmp_path / "val.tsv", "--max-tokens", "200", "--epochs", "2", *extra)


def count_train_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the training batches each later run_train call processes (validation batches excluded)."""
    calls: list[int] = []
    real = train.loss_on

    def counting(model, batch, device, label_smoothing):  # noqa: ANN001, ANN202
        if model.training:
            calls.append(1)
        return real(model, batch, device, label_smoothing)

    monkeypatch.setattr(train, "loss_on", counting)
    return calls


@pytest.mark.parametrize("extra", [(), ("--subword-sampling", "0.2")], ids=["best-segmentation", "subword-sampling"])
def test_resume_mid_epoch_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    """Also with ``--subword-sampling``: a resumed epoch draws the same segmentations."""
    # Reference: two epochs without interruption.
    reference = run_train(small_run(tmp_path, "straight", *extra))
    per_epoch = reference["step"] // 2
    assert reference["epoch"] == 2 and per_epoch > 3

    # A tiny time budget stops after the first batch, with a checkpoint that says so.
    calls = count_train_batches(monkeypatch)
    stopped = run_train(small_run(tmp_path, "resumed", "--time-budget", "0.00001", *extra))
    assert (stopped["epoch"], stopped["batch"], stopped["step"], stopped["done"]) == (0, 1, 1, False)
    saved = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert (saved["epoch"], saved["batch"], saved["step"]) == (0, 1, 1)
    assert saved["running_tokens"] > 0
    assert json.loads((tmp_path / "resumed" / "training_curve.json").read_text()) == []
    assert len(calls) == 1

    # Running again continues at batch 2 of epoch 1: no batch is trained twice.
    calls.clear()
    resumed = run_train(small_run(tmp_path, "resumed", *extra))
    assert len(calls) == 2 * per_epoch - 1
    assert resumed["step"] == reference["step"] and resumed["epoch"] == 2 and resumed["done"]
    # Same batches, same restored weights and Adam moments: the same model as the uninterrupted run.
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in resumed["history"]] == pytest.approx([h[key] for h in reference["history"]], abs=2e-4)
    straight = load_file(str(tmp_path / "straight" / "last.safetensors"))
    again = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert straight.keys() == again.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(again[name], tensor, atol=1e-4, rtol=1e-4)


def test_bf16_mixed_precision_trains_as_float32_does(tmp_path: Path) -> None:
    """Autocast runs the matrix products in bfloat16; the weights, their updates and the loss
    stay float32, so the run learns as the float32 one does, to within bfloat16's rounding."""
    float32 = run_train(small_run(tmp_path, "float32"))["history"]
    bf16 = run_train(small_run(tmp_path, "bf16", "--amp", "bf16"))["history"]
    assert bf16[-1]["val_loss"] < bf16[0]["val_loss"] < 0.9 * bf16[0]["train_loss"]
    for ours, theirs in zip(bf16, float32, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=0.05)
    weights = load_file(str(tmp_path / "bf16" / "last.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_subword_sampling_segments_the_sources_anew_each_epoch(tmp_path: Path) -> None:
    args = train.parse_args(small_run(tmp_path, "sampled", "--subword-sampling", "0.2"))
    trainer = train.Trainer(args)
    first = trainer.epoch_examples()
    assert trainer.epoch_examples() == first  # the same epoch: the same draws
    assert first != trainer.train_examples  # not the best segmentation
    assert [t for _, t in first] == [t for _, t in trainer.train_examples]  # targets keep theirs
    trainer.state.epoch = 1
    assert trainer.epoch_examples() != first
    decode = trainer.src_tok.decode
    assert [decode(s) for s, _ in trainer.epoch_examples()] == [decode(s) for s, _ in trainer.train_examples]


def test_resume_after_an_epoch_and_finished_runs_stay_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = small_run(tmp_path, "crashy")
    real_end_epoch = train.Trainer.end_epoch

    def end_epoch_then_crash(self: train.Trainer) -> None:
        real_end_epoch(self)  # the epoch's checkpoint is written...
        raise KeyboardInterrupt  # ...then the process dies

    monkeypatch.setattr(train.Trainer, "end_epoch", end_epoch_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_train(argv)
    monkeypatch.undo()
    state = json.loads((tmp_path / "crashy" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 0)
    assert [h["epoch"] for h in json.loads((tmp_path / "crashy" / "training_curve.json").read_text())] == [1]

    calls = count_train_batches(monkeypatch)
    final = run_train(argv)
    assert len(calls) == state["step"]  # exactly one more epoch of the same size
    assert final["epoch"] == 2 and final["step"] == 2 * state["step"] and final["done"]
    assert [h["epoch"] for h in final["history"]] == [1, 2]
    assert final["history"][0] == state["history"][0]

    calls.clear()
    assert run_train(argv)["step"] == final["step"]  # a finished run does not train again
    assert calls == []


def test_early_stopping(tmp_path: Path) -> None:
    # With a zero learning rate nothing improves after epoch 1: patience 1 stops after epoch 2.
    state = run_train(small_run(tmp_path, "flat", "--lr", "0", "--epochs", "5", "--patience", "1"))
    assert state["done"] and state["epoch"] == 2 and state["best_epoch"] == 1 and state["bad_epochs"] == 1
    assert state["history"][1]["lr"] == 0.0


def test_a_run_resumed_with_other_options_says_so_in_its_run_info(tmp_path: Path) -> None:
    stopped = run_train(small_run(tmp_path, "switched", "--time-budget", "0.00001"))
    assert (stopped["epoch"], stopped["batch"], stopped["done"]) == (0, 1, False)
    assert run_train(small_run(tmp_path, "switched", "--amp", "bf16"))["done"]
    info = json.loads((tmp_path / "switched" / "run.json").read_text())
    assert info["resumed_with"] == [{"epoch": 0, "batch": 1, "amp": "bf16"}]  # not the time budget
    assert info["args"]["amp"] == "bf16"


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path, trained_run: TrainedRun) -> None:
    """``--init-from`` starts a new run from another run's weights: with a learning rate of 0
    the new run's model is the trained one, and it knows the task from its first epoch on."""
    base = trained_run.run_dir
    argv = small_run(tmp_path, "tuned", "--tokenizers-from", str(base), "--lr", "0", "--epochs", "1")
    state = run_train([*argv, "--init-from", str(base / "best.safetensors")])
    assert state["history"][0]["val_bleu"] > 90
    assert exact_match(tmp_path / "tuned", trained_run.test, DecodeParams(max_length=12)) >= 0.9
    assert json.loads((tmp_path / "tuned" / "run.json").read_text())["args"]["init_from"] == str(
        base / "best.safetensors"
    )
    scratch = run_train(small_run(tmp_path, "scratch", "--tokenizers-from", str(base), "--lr", "0", "--epochs", "1"))
    assert scratch["history"][0]["val_bleu"] < 10


def test_fine_tuning_refuses_weights_of_another_model_shape(tmp_path: Path, trained_run: TrainedRun) -> None:
    argv = small_run(tmp_path, "wider", "--tokenizers-from", str(trained_run.run_dir), "--hidden-dim", "48")
    with pytest.raises(CheckpointError, match="shape"):
        run_train([*argv, "--init-from", str(trained_run.run_dir / "best.safetensors")])
