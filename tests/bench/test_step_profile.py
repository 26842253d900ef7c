"""The step profiler on a tiny real model: a batch kept full, real timings, a real profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import step_profile
from bench.bare import server_requests
from seq2seq.device_model import load_model
from tests.tiny_models import _sentences, make_tiny_store


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("store") / "model_store")


def test_refill_keeps_the_batch_full_with_fresh_ids(tiny_store: Path) -> None:
    model = load_model(tiny_store / "translate-de-en" / "1", "cpu")
    batch = model.new_batch()
    requests = server_requests(model.loaded.source_tokenizer, _sentences("de", 5, 3))
    refill = step_profile._Refill(batch, requests, rows=12)
    refill.encode_ahead(1)
    seen: set[str] = set()
    for _ in range(20):
        refill()
        assert len(batch) >= 12
        seen.update(batch.request_ids)
        batch.step()
    assert len(seen) > 12  # rows finished and were replaced
    assert not refill.ready  # the group encoded ahead was joined first
    assert all(rid.rsplit("-", 1)[0] in {r.id for r in requests} for rid in seen)


def test_profile_of_a_tiny_model(tiny_store: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "de.txt"
    inputs.write_text("\n".join(_sentences("de", 20, 4)) + "\n")
    out = tmp_path / "profile.json"
    step_profile.main(
        ["--model-store", str(tiny_store), "--inputs", str(inputs), "--rows", "8", "--steps", "10"]
        + ["--warmup-steps", "2", "--profile-steps", "5", "--json", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["rows"] == 8 and saved["steps"] == 10
    assert saved["step_ms"] > saved["decode_step_ms"] > 0
    assert 0 < saved["src_tokens"] <= saved["width"]
    assert 0 < saved["gemm_gflop"] < saved["useful_gflop"]
    assert saved["gemm_ms"] > 0 and saved["peak_gflops"] > 0
    assert saved["floor_ms"] == pytest.approx(saved["useful_gflop"] / saved["peak_gflops"] * 1e3)
    assert "aten::addmm" in saved["operators"]
