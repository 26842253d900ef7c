"""Statistics and report pieces of the harness, on hand-made records."""

from __future__ import annotations

import json
import math

import pytest

from bench import report
from bench.loadgen import LoadRun, RequestRecord
from bench.report import LevelStats, ModeResult


def rec(
    start: float, end: float, status: int = 200, tokens: int = 10, error: str | None = None, finish: str = "eos"
) -> RequestRecord:
    return RequestRecord(0, start, end, status, input_tokens=5, output_tokens=tokens, error=error, finish_reason=finish)


def test_percentile_interpolates_like_numpy() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert report.percentile(values, 0) == 15.0
    assert report.percentile(values, 100) == 50.0
    assert report.percentile(values, 50) == 35.0
    assert report.percentile(values, 40) == pytest.approx(29.0)  # numpy.percentile(values, 40)
    assert report.percentile([7.0], 99) == 7.0
    assert math.isnan(report.percentile([], 50))


def test_closed_loop_counts_completions_in_the_window() -> None:
    run = LoadRun(
        [
            rec(0.0, 0.5),  # warm-up: out
            rec(0.5, 1.5),  # completes in the window: in, latency 1 s
            rec(1.5, 2.0, finish="length"),  # in, latency 0.5 s, cut at max_length
            rec(1.0, 2.5, status=429, error="http_429"),  # an error in the window
            rec(2.5, 3.5),  # completes after the window: out
        ],
        window_start=1.0,
        window_end=3.0,
    )
    stats = report.summarize(run, "closed", 8)
    assert stats.rps == pytest.approx(1.0)  # 2 ok completions / 2 s
    assert stats.tokens_per_s == pytest.approx(10.0)
    assert (stats.sample, stats.ok) == (3, 2)
    assert stats.p50_ms == pytest.approx(750.0)
    assert stats.errors == {"http_429": 1}
    assert stats.length_share == pytest.approx(0.5)
    assert stats.label == "c=8"


def test_open_loop_latency_sample_is_by_arrival() -> None:
    # Arrived in the window but finished long after it: still in the latency sample, not in the throughput.
    run = LoadRun([rec(1.2, 1.4), rec(2.0, 9.0)], window_start=1.0, window_end=3.0)
    stats = report.summarize(run, "open", 4.0)
    assert stats.rps == pytest.approx(0.5)
    assert stats.sample == 2
    assert stats.p99_ms > 6000
    assert stats.label == "4 req/s"


def test_overloaded_by_errors_or_falling_behind() -> None:
    stable = LoadRun([rec(1.0 + i * 0.1, 1.5 + i * 0.1) for i in range(20)], 1.0, 3.0)
    assert not report.overloaded(report.summarize(stable, "open", 10))
    behind = LoadRun([rec(1.0 + i * 0.1, 1.2 + i * 0.5) for i in range(20)], 1.0, 3.0)  # each waits longer
    assert report.overloaded(report.summarize(behind, "open", 10))
    errors = LoadRun([rec(1.0 + i * 0.1, 1.1 + i * 0.1, 429, error="http_429") for i in range(10)], 1.0, 3.0)
    assert report.overloaded(report.summarize(errors, "open", 5))


def level(phase: str, lvl: float, rps: float, p95: float, tokens: float = 0.0) -> LevelStats:
    return LevelStats(phase, lvl, 10.0, 10, 10, rps, tokens, p95 / 2, p95, p95, p95 / 2, 12.0, 14.0, 0.1)  # type: ignore[arg-type]


def three_modes() -> dict[str, ModeResult]:
    modes = {m: ModeResult(m, 5.0, 300 * 2**20, 400 * 2**20) for m in ("continuous", "static", "none")}
    modes["continuous"].levels = [level("closed", 1, 5, 200, 70), level("closed", 128, 150, 900, 2000)]
    modes["static"].levels = [level("closed", 1, 5, 210, 70), level("closed", 128, 80, 1500, 1100)]
    modes["none"].levels = [
        level("closed", 1, 5, 200, 70),
        level("closed", 128, 6, 20000, 80),
        LevelStats.skipped_level("open", 40.0, "overloaded at 20 req/s"),
    ]
    return modes


def test_compare_against_targets() -> None:
    comparisons = {c.name: c for c in report.compare(three_modes(), 128, (110.0, 100.0), {"continuous": 0.05})}
    assert comparisons["continuous / none requests/s at c=128"].value == pytest.approx(25.0)
    assert comparisons["continuous / none requests/s at c=128"].passed is True
    assert comparisons["continuous / static requests/s at c=128"].value == pytest.approx(150 / 80)
    assert comparisons["continuous / static p95 latency at c=128"].passed is True
    assert comparisons["continuous c=1 p50 / bare model p50"].value == pytest.approx(1.1)
    assert comparisons["continuous decoder MFU at saturation"].passed is False


def test_compare_without_other_modes_is_not_measured() -> None:
    modes = {"continuous": three_modes()["continuous"]}
    comparisons = report.compare(modes, 128, None, {})
    assert all(c.passed is None for c in comparisons)
    assert "not measured" in report.comparison_table(comparisons)


def test_mode_result_saturation_and_skips() -> None:
    modes = three_modes()
    assert modes["continuous"].saturation().level == 128  # type: ignore[union-attr]
    assert modes["none"].max_closed_rps() == 6
    assert modes["none"].level("open", 40.0) is None  # skipped levels are not results
    assert "skipped: overloaded" in report.levels_table(modes, "open")


def test_outputs_are_strict_json_markdown_and_png(tmp_path) -> None:
    modes = three_modes()
    results = {
        "meta": {
            "label": "t",
            "command": "python -m bench --quick",
            "git": "abc",
            "started": "now",
            "cpu": "cpu",
            "cpu_count": 2,
            "device": "cpu",
            "dtype": "float32",
            "threads": 1,
            "torch": "2",
            "python": "3",
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [1.0, 1.0, 1.0],
            "model": "m@1",
            "parameters": 1,
            "model_config": {
                "architecture": "attention",
                "emb_dim": 4,
                "hidden_dim": 8,
                "tgt_vocab_size": 9,
                "enc_layers": 1,
                "dec_layers": 1,
            },
            "beam_size": 1,
            "inputs": "x",
            "warmup_s": 1,
            "duration_s": 2,
            "reference_rps": 150.0,
            "request_timeout_s": None,
            "server_args": [],
            "chat_model": None,
        },
        "formulas": {"decoder": "D", "encoder": "E"},
        "efficiency": {"peak_gflops": 50.0, "modes": {}},
        "bare_model": {
            "sentences": 0,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "mean_ms": None,
            "mean_output_tokens": None,
        },
        "c1_vs_bare": {},
        "comparisons": report.compare(modes, 128, None, {}),
        "modes": modes,
    }
    report.write_json(tmp_path / "results.json", results)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["bare_model"]["p50_ms"] is None  # NaN became null
    assert loaded["modes"]["continuous"]["levels"][1]["rps"] == 150
    text = report.render_markdown(results)
    assert "## Targets" in text and "| continuous | c=128 | 150.0 |" in text
    assert "Skipped: no chat model" in text
    assert "the server's engines on threads of the HTTP process" in text  # results from before engine processes
    results["meta"]["engine_process"] = True
    assert "the server's engines in processes of their own" in report.render_markdown(results)
    report.plot_latency_vs_throughput(modes, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
