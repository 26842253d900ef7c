"""Settings are validated at start-up, from flags and from SEQ2SEQ_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import parse_args
from service.settings import Settings


def test_env_and_flags(monkeypatch: pytest.MonkeyPatch, tiny_store: Path) -> None:
    monkeypatch.setenv("SEQ2SEQ_MODEL_STORE", str(tiny_store))
    monkeypatch.setenv("SEQ2SEQ_MODELS", "chat-en, translate-de-en")
    monkeypatch.setenv("SEQ2SEQ_CORS_ORIGINS", "http://a.example,http://b.example")
    monkeypatch.setenv("SEQ2SEQ_BATCHING", "static")
    s = Settings(**parse_args(["--port", "9001", "--batching", "none"]))
    assert s.models == ["chat-en", "translate-de-en"]
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    assert s.port == 9001 and s.batching == "none"  # flags win over the environment


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"batching": "dynamic"}, "batching"),
        ({"device": "tpu"}, "device"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_texts": 10, "max_queue": 5}, "max_texts (10) must not exceed max_queue (5)"),
        ({"max_beam_size": 16, "max_batch_rows": 8}, "max_beam_size"),
        ({"model_store": "/nonexistent"}, "not a directory"),
        ({"unknown_setting": 1}, "unknown_setting"),
        ({"quantize": "int4"}, "quantize"),
        ({"quantize": "int8", "device": "cuda"}, "quantize=int8 runs on the CPU"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "quantize=int8 runs on the CPU"),
    ],
)
def test_bad_settings_fail_fast(tiny_store: Path, overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Settings(**{"model_store": tiny_store, **overrides})


def test_help_shows_every_flag_with_its_choices_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--batching BATCHING one of continuous, static, none; default: continuous; env SEQ2SEQ_BATCHING" in text
    assert "one of true, false; default: true; env SEQ2SEQ_ENGINE_PROCESS" in text
    assert "default: 256; env SEQ2SEQ_MAX_QUEUE" in text
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text and f"SEQ2SEQ_{name.upper()}" in text


def test_required_models_from_the_environment(monkeypatch: pytest.MonkeyPatch, tiny_store: Path) -> None:
    monkeypatch.setenv("SEQ2SEQ_REQUIRED_MODELS", "translate-de-en,chat-en")
    assert Settings(model_store=tiny_store).required_models == ["translate-de-en", "chat-en"]
