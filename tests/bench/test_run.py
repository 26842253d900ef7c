"""Command-line parsing, and one tiny real run: a real server, real HTTP, every output written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench import run
from bench.run import Rate, server_engine_process
from tests.tiny_models import make_tiny_store


def test_quick_preset_and_explicit_flags_win() -> None:
    cfg = run.parse_args(["--quick", "--concurrency", "2,4", "--modes", "none,continuous", "--threads", "1"])
    assert cfg.concurrency == [2, 4]
    assert cfg.duration == run.QUICK["duration"]
    assert cfg.modes == ["continuous", "none"]  # continuous first: it sets the open-loop rates
    assert cfg.threads == 1
    assert cfg.label.endswith("-quick")
    assert run.parse_args([]).duration == run.DEFAULTS["duration"]
    with pytest.raises(SystemExit):
        run.parse_args(["--modes", "dynamic"])


def test_dtype_goes_to_server_bare_model_and_peak_and_excludes_int8() -> None:
    assert run.parse_args([]).dtype == "auto"
    cfg = run.parse_args(["--dtype", "bfloat16"])
    flags = run.server_args(run.ModeContext(cfg, [], [], "m"), "continuous")
    assert flags[flags.index("--dtype") + 1] == "bfloat16"
    with pytest.raises(SystemExit):
        run.parse_args(["--dtype", "bfloat16", "--quantize", "int8"])


def test_rates_absolute_and_relative() -> None:
    assert Rate.parse("0.5x").resolve(40.0) == 20.0
    assert Rate.parse(" 12 ").resolve(40.0) == 12.0


def test_model_dir_picks_the_latest_version_numerically(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "manifest.json").write_text("{}")
    assert run.model_dir(tmp_path, "m").name == "10"
    assert run.model_dir(tmp_path, "m@2").name == "2"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("store") / "model_store")


def test_tiny_real_run_writes_every_output(tiny_store: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "de.gz"
    inputs.write_bytes(
        gzip.compress("Ein Mann spielt im Park.\nZwei Hunde.\nEin Kind läuft auf der Straße.\n".encode())
    )
    chat = tmp_path / "en.txt"
    chat.write_text("A dog plays.\nTwo men run in the park.\n")
    args = ["--modes", "continuous,none", "--concurrency", "1,4", "--rates", "1x", "--duration", "0.6"]
    args += ["--warmup", "0.2", "--ttft-duration", "0.4", "--bare-sentences", "3", "--threads", "1"]
    args += ["--model-store", str(tiny_store), "--inputs", str(inputs), "--chat-inputs", str(chat)]
    args += ["--out", str(tmp_path / "results"), "--label", "tiny", "--server-args", "--max-batch-rows 16"]
    args += ["--quantize", "int8", "--offline-sentences", "3"]  # server, bare model and peak all take the int8 path
    results = run.run(run.parse_args(args))

    out = tmp_path / "results" / "tiny"
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["modes"]) == {"continuous", "none"}
    for mode in saved["modes"].values():
        assert mode["startup_s"] > 0 and mode["memory_peak_bytes"] >= mode["memory_ready_bytes"] > 0
        closed = [lvl for lvl in mode["levels"] if lvl["phase"] == "closed"]
        assert [lvl["level"] for lvl in closed] == [1, 4]
        assert all(lvl["ok"] > 0 and not lvl["errors"] and lvl["tokens_per_s"] > 0 for lvl in closed)
        assert any(lvl["phase"] == "ttft" and lvl["ttft_p50_ms"] for lvl in mode["levels"])
    start, end = saved["meta"]["peak_gflops_start_end"]
    assert saved["efficiency"]["peak_gflops"] == max(start, end) > 0  # the better of the two measurements
    assert saved["efficiency"]["modes"]["continuous"]["mfu"] > 0
    assert results["meta"]["reference_rps"] > 0
    assert results["meta"]["quantize"] == "int8"
    offline = saved["offline_batch"]
    assert offline["sentences"] == 3 and offline["max_rows"] == 16 and offline["requests_per_s"] > 0
    report_md = (out / "report.md").read_text()
    assert "## Targets" in report_md and "int8 dynamic quantisation" in report_md and "int8 dynamic linear" in report_md
    assert "## Batching ceiling" in report_md
    assert (out / "latency_vs_throughput.png").stat().st_size > 0
    lines = (tmp_path / "results" / "raw" / "tiny" / "requests.jsonl").read_text().splitlines()
    raw = [json.loads(line) for line in lines]
    assert {r["phase"] for r in raw} == {"closed", "paired", "open", "ttft"}
    # Concurrency 1 vs the bare model: each of the 3 sentences decoded in-process, then sent, per mode.
    for mode in ("continuous", "none"):
        paired = [r for r in raw if r["mode"] == mode and r["phase"] == "paired"]
        assert sorted(r["index"] for r in paired) == [0, 1, 2]
        assert saved["c1_vs_bare"][mode]["sentences"] == 3
    # Levels run on each mode in turn: closed c=1 of both modes, then closed c=4 of both, and so on.
    levels = [(r["mode"], r["phase"], r["level"]) for r in raw]
    order = [level for level in dict.fromkeys(levels) if level[1] != "paired"]
    assert order[:4] == [
        ("continuous", "closed", 1),
        ("none", "closed", 1),
        ("continuous", "closed", 4),
        ("none", "closed", 4),
    ]


def test_c1_vs_bare_compares_medians_of_the_pairs() -> None:
    pairs = [(0.030, 0.020), (0.050, 0.040), (0.100, 0.045)]  # (server s, bare s)
    c1 = run.c1_vs_bare(pairs)
    assert c1 is not None and c1["sentences"] == 3
    assert c1["server_p50_ms"] == pytest.approx(50.0) and c1["bare_p50_ms"] == pytest.approx(40.0)
    assert c1["ratio"] == pytest.approx(1.25)
    assert run.c1_vs_bare([]) is None


def test_the_report_says_where_the_engines_ran(monkeypatch) -> None:
    monkeypatch.delenv("SEQ2SEQ_ENGINE_PROCESS", raising=False)
    assert server_engine_process([]) is True  # the server's default
    assert server_engine_process(["--engine-process", "false"]) is False
    assert server_engine_process(["--threads", "1", "--engine-process=0"]) is False
    monkeypatch.setenv("SEQ2SEQ_ENGINE_PROCESS", "false")
    assert server_engine_process([]) is False
