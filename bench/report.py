"""Statistics of load runs, comparisons against the targets, and the report files.

Definitions used everywhere (also written into the report):

- **requests/s, tokens/s**: successful responses that *completed* inside the measurement
  window, divided by the window's length; tokens are the responses' ``usage.output_tokens``
  (EOS not counted).
- **latency percentiles**: over successful requests in the *sample*: requests that completed
  in the window (closed loop) or arrived in it (open loop). Percentiles interpolate
  linearly between order statistics (numpy's default).
- **errors**: failed requests of the sample, by kind (``http_429``, ``client:ReadTimeout``, ...).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.loadgen import LoadRun, RequestRecord

# Targets for the engine (bench/README.md, "Targets").
TARGET_CONT_VS_NONE_RPS = 15.0
TARGET_CONT_VS_STATIC_RPS = 1.5
TARGET_C1_VS_BARE = 1.2
TARGET_MFU = 0.40


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class LevelStats:
    """One load level of one mode, measured in its window."""

    phase: Literal["closed", "open", "ttft"]
    level: float  # concurrency (closed, ttft) or offered requests/s (open)
    duration_s: float
    sample: int  # requests in the latency sample
    ok: int
    rps: float
    tokens_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    mean_input_tokens: float
    mean_output_tokens: float
    length_share: float  # share of successful replies cut at max_length (they make the latency tail)
    errors: dict[str, int] = field(default_factory=dict)
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    # Filled in by the runner from the server's /metrics and the processes' CPU times.
    server: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None  # why the level did not run

    @classmethod
    def skipped_level(cls, phase: Literal["closed", "open", "ttft"], level: float, why: str) -> LevelStats:
        nan = math.nan
        return cls(phase, level, 0.0, 0, 0, 0.0, 0.0, nan, nan, nan, nan, nan, nan, nan, skipped=why)

    @property
    def label(self) -> str:
        if self.phase == "open":
            return f"{self.level:g} req/s"
        return f"c={self.level:g}"


def summarize(run: LoadRun, phase: Literal["closed", "open", "ttft"], level: float) -> LevelStats:
    """Throughput from completions in the window; latency over the phase's sample (see module docstring)."""
    lo, hi = run.window_start, run.window_end
    completed = [r for r in run.records if r.ok and lo <= r.end < hi]
    key = "start" if phase == "open" else "end"
    sample = [r for r in run.records if lo <= getattr(r, key) < hi]
    good = [r for r in sample if r.ok]
    latencies = [r.latency * 1000 for r in good]
    ttfts = [r.ttft * 1000 for r in good if r.ttft is not None]
    duration = run.duration
    return LevelStats(
        phase=phase,
        level=level,
        duration_s=duration,
        sample=len(sample),
        ok=len(good),
        rps=len(completed) / duration,
        tokens_per_s=sum(r.output_tokens for r in completed) / duration,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        mean_input_tokens=_mean(r.input_tokens for r in good),
        mean_output_tokens=_mean(r.output_tokens for r in good),
        length_share=_mean(float(r.finish_reason == "length") for r in good),
        errors=dict(Counter(r.error for r in sample if r.error is not None)),
        ttft_p50_ms=percentile(ttfts, 50) if ttfts else None,
        ttft_p95_ms=percentile(ttfts, 95) if ttfts else None,
    )


def overloaded(stats: LevelStats) -> bool:
    """An open-loop level the server could not keep up with: >5 % errors, or under 70 % of the arrivals served.

    In steady state replies complete as fast as requests arrive; a server that falls behind
    completes fewer in the window than arrived in it (the margin absorbs Poisson noise in
    short windows). Higher rates of the mode are then skipped: they would only add
    queueing up to the request deadline.
    """
    if not stats.sample:
        return False
    arrival_rate = stats.sample / stats.duration_s
    return sum(stats.errors.values()) > 0.05 * stats.sample or stats.rps < 0.7 * arrival_rate


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else math.nan


@dataclass
class ModeResult:
    """Everything measured for one batching mode (one server process)."""

    mode: str
    startup_s: float
    memory_ready_bytes: int
    memory_peak_bytes: int = 0
    levels: list[LevelStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def level(self, phase: str, level: float) -> LevelStats | None:
        for stats in self.levels:
            if stats.phase == phase and stats.level == level and stats.skipped is None:
                return stats
        return None

    def max_closed_rps(self) -> float:
        return max((s.rps for s in self.levels if s.phase == "closed" and s.skipped is None), default=0.0)

    def saturation(self) -> LevelStats | None:
        """The translate level with the most generated tokens/s: where MFU is reported."""
        measured = [s for s in self.levels if s.phase != "ttft" and s.skipped is None and s.ok]
        return max(measured, key=lambda s: s.tokens_per_s, default=None)


@dataclass(frozen=True)
class Comparison:
    name: str
    value: float | None
    target: str
    passed: bool | None  # None: not measured


def compare(
    modes: dict[str, ModeResult],
    top_concurrency: float,
    c1_vs_bare_ms: tuple[float, float] | None,
    mfu: dict[str, float],
) -> list[Comparison]:
    """The headline ratios against the lead's targets; ``c1_vs_bare_ms`` is (continuous c=1 p50, bare p50)."""
    cont, static, none = (modes.get(m) for m in ("continuous", "static", "none"))

    def at_top(result: ModeResult | None) -> LevelStats | None:
        return result.level("closed", top_concurrency) if result is not None else None

    c_top, s_top, n_top = at_top(cont), at_top(static), at_top(none)
    out: list[Comparison] = []
    ratio = _ratio(c_top and c_top.rps, n_top and n_top.rps)
    out.append(
        Comparison(
            f"continuous / none requests/s at c={top_concurrency:g}",
            ratio,
            f">= {TARGET_CONT_VS_NONE_RPS:g}x",
            None if ratio is None else ratio >= TARGET_CONT_VS_NONE_RPS,
        )
    )
    ratio = _ratio(c_top and c_top.rps, s_top and s_top.rps)
    out.append(
        Comparison(
            f"continuous / static requests/s at c={top_concurrency:g}",
            ratio,
            f">= {TARGET_CONT_VS_STATIC_RPS:g}x",
            None if ratio is None else ratio >= TARGET_CONT_VS_STATIC_RPS,
        )
    )
    ratio = _ratio(c_top and c_top.p95_ms, s_top and s_top.p95_ms)
    out.append(
        Comparison(
            f"continuous / static p95 latency at c={top_concurrency:g}",
            ratio,
            "<= 1x",
            None if ratio is None else ratio <= 1.0,
        )
    )
    ratio = _ratio(*c1_vs_bare_ms) if c1_vs_bare_ms else None
    out.append(
        Comparison(
            "continuous c=1 p50 / bare model p50",
            ratio,
            f"<= {TARGET_C1_VS_BARE:g}x",
            None if ratio is None else ratio <= TARGET_C1_VS_BARE,
        )
    )
    value = mfu.get("continuous")
    out.append(
        Comparison(
            "continuous decoder MFU at saturation",
            value,
            f">= {TARGET_MFU:.0%}",
            None if value is None else value >= TARGET_MFU,
        )
    )
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den or math.isnan(num) or math.isnan(den):
        return None
    return num / den


# -- rendering ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    rows = ["| comparison | measured | target | |", "|---|---:|---|---|"]
    for c in comparisons:
        mark = {True: "pass", False: "FAIL", None: "not measured"}[c.passed]
        value = _fmt(c.value, ".1%") if "MFU" in c.name else _fmt(c.value, ".2f") + ("x" if c.value else "")
        rows.append(f"| {c.name} | {value} | {c.target} | {mark} |")
    return "\n".join(rows)


def levels_table(modes: dict[str, ModeResult], phase: str) -> str:
    """One row per mode and level of ``phase``, with the server-side batch size and CPU use."""
    head = (
        "| mode | level | req/s | tok/s | p50 ms | p95 ms | p99 ms | ok | errors | max-length replies "
        "| mean batch | step ms | step on CPU | decode busy | encode busy | server CPU | client CPU |"
    )
    if phase == "ttft":
        head = "| mode | level | req/s | tok/s | TTFT p50 ms | TTFT p95 ms | p50 ms | p95 ms | ok | errors |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode, result in modes.items():
        for s in (s for s in result.levels if s.phase == phase):
            if s.skipped is not None:
                rows.append(f"| {mode} | {s.label} | skipped: {s.skipped} |")
                continue
            if phase == "ttft":
                rows.append(
                    f"| {mode} | {s.label} | {_fmt(s.rps)} | {_fmt(s.tokens_per_s, '.0f')} | {_fmt(s.ttft_p50_ms)} "
                    f"| {_fmt(s.ttft_p95_ms)} | {_fmt(s.p50_ms)} | {_fmt(s.p95_ms)} | {s.ok} | {_errors(s.errors)} |"
                )
                continue
            srv = s.server
            rows.append(
                f"| {mode} | {s.label} | {_fmt(s.rps)} | {_fmt(s.tokens_per_s, '.0f')} | {_fmt(s.p50_ms)} "
                f"| {_fmt(s.p95_ms)} | {_fmt(s.p99_ms)} | {s.ok} | {_errors(s.errors)} | {_fmt(s.length_share, '.0%')} "
                f"| {_fmt(srv.get('mean_batch_rows'))} | {_fmt(srv.get('mean_step_ms'), '.2f')} "
                f"| {_fmt(srv.get('step_on_cpu'), '.0%')} "
                f"| {_fmt(srv.get('decode_busy'), '.0%')} | {_fmt(srv.get('encode_busy'), '.0%')} "
                f"| {_fmt(srv.get('server_cpu'), '.0%')} "
                f"| {_fmt(srv.get('client_cpu'), '.0%')} |"
            )
    return "\n".join(rows)


def modes_table(modes: dict[str, ModeResult], mfu: dict[str, float], mfu_total: dict[str, float]) -> str:
    rows = [
        "| mode | start-up s | PSS ready MiB | PSS peak MiB | max closed req/s | saturation level | tok/s | decoder MFU | MFU incl. encoder |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for mode, r in modes.items():
        sat = r.saturation()
        rows.append(
            f"| {mode} | {r.startup_s:.1f} | {r.memory_ready_bytes / 2**20:.0f} | {r.memory_peak_bytes / 2**20:.0f} "
            f"| {r.max_closed_rps():.1f} | {sat.phase + ' ' + sat.label if sat else '-'} "
            f"| {_fmt(sat and sat.tokens_per_s, '.0f')} | {_fmt(mfu.get(mode), '.2%')} | {_fmt(mfu_total.get(mode), '.2%')} |"
        )
    return "\n".join(rows)


def plot_latency_vs_throughput(modes: dict[str, ModeResult], path: Path) -> None:
    """p95 latency against achieved requests/s, one colour per mode (solid: closed loop, dashed: open loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (mode, result) in enumerate(modes.items()):
        color = f"C{i}"
        for phase, style, marker in (("closed", "-", "o"), ("open", "--", "s")):
            points = [s for s in result.levels if s.phase == phase and s.skipped is None and s.ok]
            if not points:
                continue
            ax.plot(
                [s.rps for s in points],
                [s.p95_ms for s in points],
                style,
                marker=marker,
                color=color,
                label=f"{mode} ({phase} loop)",
            )
            if phase == "closed":
                for s in points:
                    ax.annotate(s.label, (s.rps, s.p95_ms), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("p95 latency vs throughput by batching mode")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts and NaN to None, so results.json is strict JSON."""
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def write_raw(path: Path, records: Iterable[tuple[str, str, float, RequestRecord]]) -> None:
    """Per-request lines (mode, phase, level, record) as JSON Lines, for the gitignored raw/ folder."""
    with path.open("w") as f:
        for mode, phase, level, record in records:
            f.write(json.dumps({"mode": mode, "phase": phase, "level": level, **asdict(record)}) + "\n")


def _peaks(meta: dict[str, Any]) -> str:
    return " and ".join(f"{p:.1f}" for p in meta.get("peak_gflops_start_end") or []) or "–"


PLOT_NAME = "latency_vs_throughput.png"


def render_console(results: dict[str, Any]) -> str:
    """The headline ratios and the closed-loop table, for the terminal."""
    modes: dict[str, ModeResult] = results["modes"]
    return "\n\n".join(
        [
            comparison_table(results["comparisons"]),
            levels_table(modes, "closed"),
            modes_table(modes, _mfu(results, "mfu"), _mfu(results, "mfu_incl_encoder")),
        ]
    )


def _mfu(results: dict[str, Any], key: str) -> dict[str, float]:
    return {mode: v[key] for mode, v in results["efficiency"]["modes"].items()}


def render_markdown(results: dict[str, Any]) -> str:
    """report.md: context first (machine, load, command), then the targets, then every table."""
    meta = results["meta"]
    modes: dict[str, ModeResult] = results["modes"]
    eff = results["efficiency"]
    bare = results["bare_model"]
    cfg = meta["model_config"]
    lines = [
        f"# Benchmark {meta['label']}",
        "",
        f"- command: `{meta['command']}` (git {meta['git']}, started {meta['started']})",
        f"- machine: {meta['cpu']}, {meta['cpu_count']} CPUs; device {meta['device']} ({meta['dtype']}"
        f"{', int8 dynamic quantisation' if meta.get('quantize') == 'int8' else ''}), "
        f"{meta['threads']} torch thread(s) for server, bare model and matmul peak; torch {meta['torch']}, "
        f"Python {meta['python']}; the server's engines "
        f"{'in processes of their own' if meta.get('engine_process', False) else 'on threads of the HTTP process'}",
        f"- load average before / after: {_loadavg(meta['loadavg_before'])} / {_loadavg(meta['loadavg_after'])} "
        "(anything near the CPU count means other processes shared the machine: treat numbers as provisional)",
        f"- model: {meta['model']} ({meta['parameters']} parameters; {cfg['architecture']}, E={cfg['emb_dim']}, "
        f"H={cfg['hidden_dim']}, V={cfg['tgt_vocab_size']}, layers enc/dec {cfg['enc_layers']}/{cfg['dec_layers']}); "
        f"beam size {meta['beam_size']}; inputs `{meta['inputs']}` (shuffled, seeded)",
        f"- levels: {meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s measured; open-loop rates relative to "
        f"{_fmt(meta['reference_rps'])} req/s (the first mode's best closed-loop throughput); request timeout "
        f"{meta['request_timeout_s'] or 'server default'}; extra server args: {' '.join(meta['server_args']) or 'none'}",
        "",
        "## Targets",
        "",
        comparison_table(results["comparisons"]),
        "",
        "## Modes",
        "",
        "Start-up: spawn to the first `/health/ready` 200 (models loaded and warmed up). Memory: proportional set "
        "size (PSS) of the server and its engine processes, at ready and the peak of a 1 s sampler over the whole mode"
        + (f" (the chat model {meta['chat_model']} is loaded too)." if meta["chat_model"] else "."),
        "",
        modes_table(modes, _mfu(results, "mfu"), _mfu(results, "mfu_incl_encoder")),
        "",
        f"![p95 latency vs throughput]({PLOT_NAME})",
        "",
        "## Closed loop",
        "",
        "`max-length replies`: share of replies cut at `max_length` (2 x source + 10 by default): a model that "
        "repeats itself makes them, and they make the latency tail. `mean batch`: rows per decoder step, `step ms`: time per step, `step on CPU`: share of that time the engine's worker thread ran (the rest it waited for the GIL: held by the engine's encoder and command threads, and with `--engine-process false` by the HTTP event loop too), `decode busy`: share of wall time spent in "
        "decoder steps, `encode busy`: in encoding admitted requests (on the engine's worker, or beside the steps on "
        "its encoder thread with `--overlap-encode`, so the two can add up to more than 100%), all from the server's `/metrics` "
        "over the window; CPU: seconds of CPU per second of wall time (1 = one core busy), server (with its engine processes) and load generator.",
        "",
        levels_table(modes, "closed"),
        "",
        "## Open loop (Poisson arrivals)",
        "",
        levels_table(modes, "open"),
        "",
        "## Time to first token (streamed /chat)",
        "",
        levels_table(modes, "ttft") if meta["chat_model"] else "Skipped: no chat model in the model store.",
        "",
        "## Bare model vs server at concurrency 1",
        "",
        f"Bare model (in-process `generate`, one sentence at a time, tokenisation excluded): {bare['sentences']} "
        f"sentences, p50 {_fmt(bare['p50_ms'])} ms, p95 {_fmt(bare['p95_ms'])} ms, mean {_fmt(bare['mean_ms'])} ms, "
        f"{_fmt(bare['mean_output_tokens'])} output tokens on average (timed at the start of the run). The "
        "comparison below is paired: after each mode's concurrency-1 level, every sentence is decoded by the bare "
        "model and then sent to the server, alternately, so both timings of a sentence come from the same "
        "moment of a machine whose speed drifts over a run.",
        "",
        "| mode | sentence pairs | server p50 ms | bare p50 ms | ratio |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {m} | {v['sentences']} | {v['server_p50_ms']:.1f} | {v['bare_p50_ms']:.1f} | {v['ratio']:.2f}x |"
            for m, v in results["c1_vs_bare"].items()
        ),
        "",
        *_offline_section(results),
        "## Model FLOPs utilisation",
        "",
        f"Decoder FLOPs ({results['formulas']['decoder']}). Encoder ({results['formulas']['encoder']}).",
        "",
        f"Peak: best of 5 rounds of a 1024x1024 "
        f"{'int8 dynamic linear' if meta.get('quantize') == 'int8' else meta['dtype'] + ' matmul'} "
        f"on {meta['device']} with {meta['threads']} "
        f"thread(s), measured at the start and at the end of the run ({_peaks(meta)} GFLOP/s), the better "
        f"of the two: **{eff['peak_gflops']:.1f} GFLOP/s**. MFU = FLOPs/token x tokens/s / peak at each mode's "
        "saturation (its level with the most tokens/s). Attention over padding and the EOS step are not counted.",
        "",
        "| mode | level | mean source tokens | decoder FLOPs/token | parts (MFLOP) | GFLOP/s | MFU | MFU incl. encoder |",
        "|---|---|---:|---:|---|---:|---:|---:|",
        *(
            f"| {m} | {v['level']} | {v['mean_source_tokens']:.1f} | {v['decoder_flops_per_token'] / 1e6:.2f} M "
            f"| {', '.join(f'{k} {p / 1e6:.2f}' for k, p in v['decoder_flops_parts'].items())} "
            f"| {v['decoder_gflops']:.2f} | {v['mfu']:.2%} | {v['mfu_incl_encoder']:.2%} |"
            for m, v in eff["modes"].items()
        ),
        "",
        "## Method",
        "",
        __doc__.split("Definitions used everywhere (also written into the report):", 1)[1].strip(),
        "- Every level runs on each mode's server in turn (all servers up, the others idle), so modes are "
        "compared over windows seconds apart.",
        "- Closed loop: N workers send back to back; at the window's end the requests still in flight are "
        "cancelled (the connection closes; the server aborts them) and the next level waits for an idle server.",
        "- Open loop: arrivals are pre-drawn from a seeded Poisson process; latency counts from the scheduled "
        "arrival, so client lag cannot hide queueing. A rate with >5 % errors, or whose replies complete at under "
        "70 % of its arrival rate, is overloaded; higher rates of that mode are then skipped.",
        "- TTFT: time from sending a streamed `/chat` request to its first `event: token` line.",
        "",
    ]
    notes = [f"- {mode}: {note}" for mode, r in modes.items() for note in r.notes]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def _loadavg(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _offline_section(results: dict[str, Any]) -> list[str]:
    """What batching alone buys on this machine, and how much of it each mode's server delivers."""
    off = results.get("offline_batch")
    if not off:
        return []
    one = off["one_at_a_time_requests_per_s"]
    ceiling = off["requests_per_s"] / one if one else None
    lines = [
        "## Batching ceiling (offline reference)",
        "",
        f"In-process `generate` over {off['sentences']} sentences admitted longest first into {off['max_rows']} rows: "
        f"**{off['requests_per_s']:.1f} req/s** ({off['tokens_per_s']:.0f} tok/s); the bare model one sentence at a "
        f"time: {_fmt(one)} req/s. Batching itself is worth **{_fmt(ceiling)}x** with this model on this machine, "
        "on the same threads. A server's continuous / none ratio exceeds it only by what its `none` mode loses to "
        "per-request serving costs (its share of the one-at-a-time req/s below) and by work its continuous mode "
        "moves off the decoding thread (encoding, with `--overlap-encode`).",
        "",
        "| mode | max closed-loop req/s | share of the offline batched req/s | share of the one-at-a-time req/s |",
        "|---|---:|---:|---:|",
    ]
    modes: dict[str, ModeResult] = results["modes"]
    for mode, r in modes.items():
        best = r.max_closed_rps()
        lines.append(
            f"| {mode} | {best:.1f} | {best / off['requests_per_s']:.0%} | {_fmt(best / one if one else None, '.0%')} |"
        )
    return [*lines, ""]
