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
