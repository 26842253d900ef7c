"""Model directories: save/load round trip, checksums, and clear errors for every broken part."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from seq2seq.checkpoint import (
    BACKWARD_WEIGHTS,
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    decoding_defaults,
    load_model_dir,
    save_model_dir,
    sha256_file,
    store_versions,
)
from seq2seq.config import BOS_ID, ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer
from tests.seq2seq.conftest import padded, random_ids, random_model

BASE_MANIFEST = {"name": "toy", "version": "3", "task": "translate", "source_lang": "xx", "target_lang": "yy"}

TrainTokenizer = Callable[[str], Tokenizer]


@pytest.fixture
def tokenizers(train_tokenizer: TrainTokenizer) -> tuple[Tokenizer, Tokenizer]:
    src, tgt = train_tokenizer("abcdefgh"), train_tokenizer("stuvwxyz")
    assert src.path is not None and tgt.path is not None
    return src, tgt


def config_for(src: Tokenizer, tgt: Tokenizer, arch: str = "attention", **kwargs: Any) -> ModelConfig:
    return ModelConfig(
        architecture=arch,
        src_vocab_size=src.vocab_size,
        tgt_vocab_size=tgt.vocab_size,
        emb_dim=8,
        hidden_dim=12,
        **kwargs,
    )


def save(tmp_path: Path, model: Seq2Seq, src: Tokenizer, tgt: Tokenizer, extras: tuple[Path, ...] = ()) -> Path:
    assert src.path is not None and tgt.path is not None
    return save_model_dir(tmp_path / "toy" / "3", model, BASE_MANIFEST, src.path, tgt.path, extras)


@pytest.fixture
def saved(tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer]) -> Path:
    src, tgt = tokenizers
    return save(tmp_path, random_model(config_for(src, tgt)), src, tgt)


def edit_manifest(model_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = model_dir / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def replace_file(model_dir: Path, name: str, content: bytes) -> None:
    """Swap a file's content and record its new checksum, so only the content itself can be wrong."""
    (model_dir / name).write_bytes(content)
    edit_manifest(model_dir, lambda m: m["files"].__setitem__(name, sha256_file(model_dir / name)))


def outputs(model: Seq2Seq, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src, lens = padded([random_ids(n, model.cfg.src_vocab_size, g) for n in (4, 1, 6)])
    tgt = torch.randint(4, model.cfg.tgt_vocab_size, (3, 5), generator=g)
    tgt[:, 0] = BOS_ID
    with torch.no_grad():
        return torch.log_softmax(model(src, lens, tgt), -1)


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["context-init", "context-every-step", "attention"])
def test_round_trip(tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer], arch: str) -> None:
    src, tgt = tokenizers
    model = random_model(config_for(src, tgt, arch))
    curve = tmp_path / "training_curve.json"
    curve.write_text("[]\n")
    model_dir = save(tmp_path, model, src, tgt, (curve,))

    loaded = load_model_dir(model_dir)
    assert loaded.config == model.cfg
    assert (loaded.name, loaded.version) == ("toy", "3")
    assert not loaded.model.training
    assert loaded.source_tokenizer.vocab_size == src.vocab_size
    assert loaded.target_tokenizer.vocab_size == tgt.vocab_size
    manifest = loaded.manifest
    assert manifest["weights"] == {"file": WEIGHTS, "dtype": "float16"}
    assert manifest["tokenizer"] == {"source": "source.model", "target": "target.model"}
    assert manifest["parameters"] == model.num_parameters()
    assert set(manifest["files"]) == {WEIGHTS, "source.model", "target.model", "training_curve.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(model_dir / name) == digest
    assert all(t.dtype == torch.float16 for t in load_file(str(model_dir / WEIGHTS)).values())

    # Storage is float16: the loaded model equals the original rounded to float16, and is close to it.
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    torch.testing.assert_close(outputs(loaded.model), outputs(rounded), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs(loaded.model), outputs(model), atol=5e-2, rtol=1e-2)


def test_save_float32(tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer]) -> None:
    src, tgt = tokenizers
    model = random_model(config_for(src, tgt))
    assert src.path is not None and tgt.path is not None
    model_dir = save_model_dir(tmp_path / "m", model, BASE_MANIFEST, src.path, tgt.path, dtype=torch.float32)
    torch.testing.assert_close(outputs(load_model_dir(model_dir).model), outputs(model), atol=1e-6, rtol=1e-6)


def test_joint_vocabulary_stores_one_tokenizer(tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer]) -> None:
    src, _ = tokenizers
    model = random_model(config_for(src, src, share_vocab=True))
    model_dir = save(tmp_path, model, src, src)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["tokenizer"] == {"source": "source.model", "target": "source.model"}
    assert set(manifest["files"]) == {WEIGHTS, "source.model"}
    assert not (model_dir / "target.model").exists()
    stored = load_file(str(model_dir / WEIGHTS))
    assert ("encoder.embedding.weight" in stored) != ("decoder.embedding.weight" in stored)  # tied: stored once
    loaded = load_model_dir(model_dir)
    assert loaded.model.encoder.embedding is loaded.model.decoder.embedding
    torch.testing.assert_close(outputs(loaded.model), outputs(model), atol=5e-2, rtol=1e-2)


# -- integrity --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [WEIGHTS, "source.model", "target.model"])
def test_tampered_file_fails_its_checksum(saved: Path, name: str) -> None:
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_model_dir(saved)
    assert str(saved / name) in str(info.value)


def test_missing_file(saved: Path) -> None:
    (saved / "target.model").unlink()
    with pytest.raises(CheckpointError, match="target.model: file listed in the manifest is missing"):
        load_model_dir(saved)


def test_file_without_checksum(saved: Path) -> None:
    edit_manifest(saved, lambda m: m["files"].pop("source.model"))
    with pytest.raises(CheckpointError, match="no checksum for source.model"):
        load_model_dir(saved)


def test_unreadable_weights_with_a_matching_checksum(saved: Path) -> None:
    replace_file(saved, WEIGHTS, b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_model_dir(saved)


# -- manifest ---------------------------------------------------------------------------------


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing manifest"):
        load_model_dir(tmp_path)


def test_invalid_json_manifest(saved: Path) -> None:
    (saved / MANIFEST).write_text('{"name": "toy",')
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        load_model_dir(saved)
    (saved / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load_model_dir(saved)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("task"), "missing keys task"),
        (lambda m: m.update(task="summarize"), "task must be one of"),
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m["model"].update(colour="red"), "invalid model config: unknown model config keys: colour"),
        (lambda m: m["model"].update(architecture="rnn"), "invalid model config: architecture must be"),
    ],
)
def test_bad_manifest_fields(saved: Path, change: Callable[[dict[str, Any]], None], message: str) -> None:
    edit_manifest(saved, change)
    with pytest.raises(CheckpointError, match=message):
        load_model_dir(saved)


def test_tokenizer_vocab_differs_from_config(saved: Path, train_tokenizer: TrainTokenizer) -> None:
    """A consistent checksum for a tokenizer of another size: the size check names the file and both sizes."""
    small = train_tokenizer("abcdef")
    assert small.path is not None
    expected = json.loads((saved / MANIFEST).read_text())["model"]["tgt_vocab_size"]
    assert small.vocab_size != expected
    replace_file(saved, "target.model", small.path.read_bytes())
    with pytest.raises(
        CheckpointError, match=f"vocabulary has {small.vocab_size} pieces but the model config expects {expected}"
    ) as info:
        load_model_dir(saved)
    assert str(saved / "target.model") in str(info.value)


def test_config_vocab_differs_from_tokenizer(saved: Path) -> None:
    edit_manifest(saved, lambda m: m["model"].update(src_vocab_size=m["model"]["src_vocab_size"] + 5))
    with pytest.raises(CheckpointError, match=r"source.model: vocabulary has \d+ pieces but the model config expects"):
        load_model_dir(saved)


def test_config_with_other_shapes_than_the_weights(saved: Path) -> None:
    edit_manifest(saved, lambda m: m["model"].update(hidden_dim=16))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor \S+ has shape .* the config expects"):
        load_model_dir(saved)


def test_config_with_another_architecture_than_the_weights(saved: Path) -> None:
    edit_manifest(saved, lambda m: m["model"].update(architecture="context-init"))
    with pytest.raises(
        CheckpointError, match=r"weights do not match the config \(missing: none; unexpected: .*attn_proj"
    ):
        load_model_dir(saved)


def test_store_versions_sort_numerically_and_skip_what_is_not_a_model(tmp_path: Path) -> None:
    for model, version in [
        ("m", "10"),
        ("m", "2"),
        ("m", "1.10"),
        ("m", "1.2"),
        ("m", "rc"),
        ("n", "1"),
        (".tmp", "1"),
    ]:
        (tmp_path / model / version).mkdir(parents=True)
        (tmp_path / model / version / "manifest.json").write_text("{}")
    (tmp_path / "m" / "3").mkdir()  # no manifest: an export in progress, not a version
    (tmp_path / "empty").mkdir()
    (tmp_path / "README").write_text("not a model")
    assert store_versions(tmp_path) == {"m": ["1.2", "1.10", "2", "10", "rc"], "n": ["1"]}


def test_a_backward_model_round_trips_and_reads_the_other_way(
    tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer]
) -> None:
    src, tgt = tokenizers
    model, backward = random_model(config_for(src, tgt)), random_model(config_for(tgt, src), seed=2)
    assert src.path is not None and tgt.path is not None
    out = save_model_dir(tmp_path / "toy" / "3", model, BASE_MANIFEST, src.path, tgt.path, backward=backward)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["backward"] == {"file": BACKWARD_WEIGHTS, "model": backward.cfg.to_dict()}
    assert manifest["files"][BACKWARD_WEIGHTS] == sha256_file(out / BACKWARD_WEIGHTS)
    loaded = load_model_dir(out)
    assert loaded.backward is not None and not loaded.backward.training
    assert (loaded.backward.cfg.src_vocab_size, loaded.backward.cfg.tgt_vocab_size) == (tgt.vocab_size, src.vocab_size)
    torch.testing.assert_close(outputs(loaded.backward.half().float()), outputs(backward.half().float()))
    assert load_model_dir(save(tmp_path / "plain", model, src, tgt)).backward is None


def test_a_backward_model_that_does_not_fit_the_tokenizers_or_its_file(
    tmp_path: Path, tokenizers: tuple[Tokenizer, Tokenizer]
) -> None:
    src, tgt = tokenizers
    assert src.path is not None and tgt.path is not None
    model = random_model(config_for(src, tgt))
    out = save_model_dir(
        tmp_path / "m", model, BASE_MANIFEST, src.path, tgt.path, backward=random_model(config_for(tgt, src))
    )
    edit_manifest(out, lambda m: m["backward"]["model"].update(src_vocab_size=src.vocab_size + 1))
    with pytest.raises(CheckpointError, match="pieces but the backward model config expects"):
        load_model_dir(out)
    edit_manifest(out, lambda m: m["files"].pop(BACKWARD_WEIGHTS))
    with pytest.raises(CheckpointError, match=f"no checksum for {BACKWARD_WEIGHTS}"):
        load_model_dir(out)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({}, {}),
        ({"decoding": None}, {}),
        ({"decoding": {"beam_size": 8, "mmi_weight": 0.6}}, {"beam_size": 8}),  # nothing to rerank with
        (
            {"decoding": {"beam_size": 8, "mmi_weight": 0.6}, "backward": {"file": "backward.safetensors"}},
            {"beam_size": 8, "mmi_weight": 0.6},
        ),
    ],
)
def test_decoding_defaults_drop_reranking_without_a_backward_model(
    manifest: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert decoding_defaults(manifest) == expected
    assert decoding_defaults(manifest) is not manifest.get("decoding")  # a copy: callers may change it
