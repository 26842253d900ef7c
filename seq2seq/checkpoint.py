"""Model directories: ``model_store/<name>/<version>/`` with manifest, weights and tokenizers.

Layout::

    manifest.json        name, version, task, languages, model config, files + sha256, provenance, eval
    model.safetensors    weights (float16 on disk; loaded in the dtype it is served in)
    source.model         SentencePiece model of the source side
    target.model         ... of the target side (the same file name as source for chat models)
    training_curve.json  train / val loss per epoch (optional, checksummed when present)
    training_curve.png
    backward.safetensors a chat model's backward model p(message | reply), for MMI reranking
                         (optional; its config is the manifest's ``backward.model``)

Loading verifies every checksum and that config, weights and tokenizers agree, and fails
with a :class:`CheckpointError` naming the file and the problem. Weights are read with
safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer, TokenizerError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
BACKWARD_WEIGHTS = "backward.safetensors"
FORMAT_VERSION = 1
TASKS = ("translate", "chat")
REQUIRED_KEYS = (
    "format_version",
    "name",
    "version",
    "task",
    "source_lang",
    "target_lang",
    "model",
    "tokenizer",
    "files",
)


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message names the file and the problem."""


@dataclass
class LoadedModel:
    path: Path
    manifest: dict[str, Any]
    config: ModelConfig
    model: Seq2Seq
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    backward: Seq2Seq | None = None  # p(source | output), which reranks beams (seq2seq.rerank)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """Write the model's weights (tied tensors once) as safetensors, optionally cast to ``dtype``."""
    weights = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unique_state_dict(model).items()}
    save_file(weights, str(path), metadata={"format": "pt"})


def save_model_dir(
    out_dir: Path,
    model: Seq2Seq,
    manifest: Mapping[str, Any],
    source_tokenizer: Path,
    target_tokenizer: Path,
    extra_files: tuple[Path, ...] = (),
    dtype: torch.dtype = torch.float16,
    backward: Seq2Seq | None = None,
) -> Path:
    """Write a complete model directory and its manifest (with checksums) into ``out_dir``;
    ``backward``: the model p(source | output) that reranks its beams (chat models)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = [(model, WEIGHTS), *([(backward, BACKWARD_WEIGHTS)] if backward is not None else [])]
    for m, file in weights:
        save_weights(m, out_dir / file, dtype)
        (out_dir / file).chmod(0o644)  # readable by the unprivileged user of the container image
    tokenizer = {"source": "source.model", "target": "target.model"}
    if source_tokenizer.read_bytes() == target_tokenizer.read_bytes():  # joint vocabulary: one file
        tokenizer["target"] = "source.model"
    shutil.copyfile(source_tokenizer, out_dir / tokenizer["source"])
    if tokenizer["target"] != tokenizer["source"]:
        shutil.copyfile(target_tokenizer, out_dir / tokenizer["target"])
    names = [file for _, file in weights] + sorted(set(tokenizer.values()))
    for extra in extra_files:
        shutil.copyfile(extra, out_dir / extra.name)
        names.append(extra.name)
    full = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "weights": {"file": WEIGHTS, "dtype": str(dtype).removeprefix("torch.")},
        "tokenizer": tokenizer,
        **({"backward": {"file": BACKWARD_WEIGHTS, "model": backward.cfg.to_dict()}} if backward is not None else {}),
        "parameters": model.num_parameters(),
        "files": {name: sha256_file(out_dir / name) for name in names},
    }
    (out_dir / MANIFEST).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def store_versions(store: Path) -> dict[str, list[str]]:
    """Model name -> its versions in ``store`` (``<name>/<version>/manifest.json``), oldest first.

    Versions sort numerically where they are numbers (2 < 10, 1.2 < 1.10); models without a
    version and hidden directories are left out.
    """
    out = {}
    for model_dir in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted((v.name for v in model_dir.iterdir() if (v / MANIFEST).exists()), key=version_key)
        if versions:
            out[model_dir.name] = versions
    return out


def version_key(version: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", version))


def update_manifest(model_dir: Path, changes: Mapping[str, Any]) -> None:
    """Write ``changes`` (top-level keys) into a model directory's manifest: evaluation figures
    and decoding defaults, which no checksum covers. The weights and tokenizers stay as they are."""
    path = model_dir / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, **changes}, indent=2, ensure_ascii=False) + "\n")


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """Parse and validate ``manifest.json`` (schema only; files are checked by :func:`load_model_dir`)."""
    path = model_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing manifest")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CheckpointError(f"{path}: missing keys {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {manifest['format_version']} is not supported")
    if manifest["task"] not in TASKS:
        raise CheckpointError(f"{path}: task must be one of {', '.join(TASKS)}, got {manifest['task']!r}")
    return manifest


def decoding_defaults(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's decoding defaults (chosen on val), less ``mmi_weight`` for a model that
    ships no backward model to rerank with: what the server and every evaluation apply."""
    decoding = dict(manifest.get("decoding") or {})
    if "backward" not in manifest:
        decoding.pop("mmi_weight", None)
    return decoding


def verify_files(model_dir: Path, manifest: Mapping[str, Any]) -> None:
    files: Mapping[str, str] = manifest["files"]
    needed = {WEIGHTS, *manifest["tokenizer"].values(), *([BACKWARD_WEIGHTS] if "backward" in manifest else [])}
    unlisted = needed - set(files)
    if unlisted:
        raise CheckpointError(f"{model_dir / MANIFEST}: no checksum for {', '.join(sorted(unlisted))}")
    for name, expected in files.items():
        path = model_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: file listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…)")


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a verified model directory, ready for inference (``eval()`` mode) on ``device``."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    verify_files(model_dir, manifest)
    tokenizers = load_tokenizers(model_dir, manifest)

    def load(what: str, config_dict: Any, file: str, source: str, target: str) -> tuple[ModelConfig, Seq2Seq]:
        """One of the directory's models, its ``source`` side read by that tokenizer (of ``tokenizers``)."""
        try:
            config = ModelConfig.from_dict(config_dict)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{model_dir / MANIFEST}: invalid {what} config: {exc}") from exc
        for side, size in ((source, config.src_vocab_size), (target, config.tgt_vocab_size)):
            if tokenizers[side].vocab_size != size:
                raise CheckpointError(
                    f"{model_dir / manifest['tokenizer'][side]}: vocabulary has {tokenizers[side].vocab_size} "
                    f"pieces but the {what} config expects {size}"
                )
        model = Seq2Seq(config)
        load_weights(model, model_dir / file)
        return config, model.to(device=device, dtype=dtype).eval()

    config, model = load("model", manifest["model"], WEIGHTS, "source", "target")
    backward = None
    if "backward" in manifest:  # it reads the outputs and scores the sources
        _, backward = load("backward model", manifest["backward"].get("model"), BACKWARD_WEIGHTS, "target", "source")
    return LoadedModel(model_dir, manifest, config, model, tokenizers["source"], tokenizers["target"], backward)


def load_tokenizers(model_dir: Path, manifest: dict[str, Any]) -> dict[str, Tokenizer]:
    """The ``source`` and ``target`` tokenizers named by ``manifest``."""
    tokenizers = {}
    for side, file in manifest["tokenizer"].items():
        try:
            tokenizers[side] = Tokenizer.load(model_dir / file)
        except TokenizerError as exc:
            raise CheckpointError(str(exc)) from exc
    return tokenizers


def load_weights(model: Seq2Seq, path: Path) -> None:
    """Copy safetensors weights into ``model``, naming any missing, unexpected or mis-shaped tensor."""
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc
    expected = unique_state_dict(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(expected[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in weights.items():
            expected[name].copy_(tensor)
