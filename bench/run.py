"""``python -m bench``: benchmark the three batching modes of the real server, end to end.

One run, one machine, one model:

1. measure the machine's matmul peak and the bare model's single-sentence latency in-process;
2. start ``python -m service --batching MODE`` for every mode, each on a free loopback port,
   and drive them over HTTP one level at a time, the modes in turn at each level: closed
   loop at each concurrency, then open loop (Poisson) at each rate (relative to the first
   mode's best closed-loop throughput), then a small streamed-chat phase for time to first
   token. Interleaving keeps a shared machine's drift (10-20 % over a run) out of the
   ratios between modes, which a run of mode after mode measured minutes apart;
3. compute the ratios against the targets and MFU, print the headline table, and write
   ``bench/results/<label>/{results.json, report.md, latency_vs_throughput.png}`` plus
   per-request data and server logs under the gitignored ``bench/results/raw/<label>/``.

See ``bench/README.md`` for the flags and how to read the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import torch
from pydantic import TypeAdapter

try:
    import uvloop
except ImportError:  # uvloop has no Windows build
    uvloop = None  # type: ignore[assignment]

from bench import report
from bench.bare import BareModel, BareTiming, OfflineBatch, time_bare_model, time_offline_batch
from bench.httpclient import HttpClient
from bench.loadgen import EdgeHook, LoadRun, RequestRecord, Target, closed_loop, load_sentences, open_loop, shuffled
from bench.mfu import (
    DECODER_FORMULA,
    ENCODER_FORMULA,
    bridge_flops_per_sentence,
    decoder_flops,
    encoder_flops_per_source_token,
    matmul_peak_gflops,
)
from bench.report import LevelStats, ModeResult
from bench.server import ServerProcess
from seq2seq.checkpoint import read_manifest
from seq2seq.config import ModelConfig
from seq2seq.device_model import resolve_device, resolve_dtype
from seq2seq.optimize import DTYPES, QUANTIZATIONS, dtype_fits
from service.settings import Settings

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = REPO.parent / "shared/data/multi30k/test_2016_flickr.de.gz"
DEFAULT_CHAT_INPUTS = REPO.parent / "shared/data/multi30k/test_2016_flickr.en.gz"
MODE_ORDER = ("continuous", "static", "none")
# Full run: ~6-10 minutes for three modes on 2 cores. --quick: a 1-2 minute smoke test.
DEFAULTS: dict[str, Any] = {
    "concurrency": "1,8,32,128",
    "rates": "0.25x,0.5x,0.75x,1x,1.25x",
    "duration": 10.0,
    "warmup": 2.0,
    "ttft_duration": 5.0,
    "bare_sentences": 100,
    "offline_sentences": 500,
    "request_timeout": None,
}
QUICK: dict[str, Any] = {
    "concurrency": "1,8,32",
    "rates": "0.5x,1.25x",
    "duration": 2.0,
    "warmup": 0.5,
    "ttft_duration": 2.0,
    "bare_sentences": 20,
    "offline_sentences": 60,
    "request_timeout": 10.0,
}
TTFT_CONCURRENCY = (1, 8)
CLIENT_MARGIN_S = 10.0  # the client gives up this long after the server's own deadline


@dataclass(frozen=True)
class Rate:
    value: float
    relative: bool  # a fraction of the reference mode's max closed-loop requests/s

    @classmethod
    def parse(cls, text: str) -> Rate:
        text = text.strip()
        if text.endswith("x"):
            return cls(float(text[:-1]), True)
        return cls(float(text), False)

    def resolve(self, reference_rps: float) -> float:
        return self.value * reference_rps if self.relative else self.value


@dataclass
class BenchConfig:
    modes: list[str]
    concurrency: list[int]
    rates: list[Rate]
    duration: float
    warmup: float
    ttft_duration: float
    threads: int  # resolved: never 0
    device: str
    dtype: str  # the server's --dtype ("auto" or a torch dtype name): server, bare model and matmul peak
    quantize: str  # "none" or "int8": server, bare model and matmul peak
    model: str  # name or name@version
    chat_model: str
    model_store: Path
    inputs: Path
    chat_inputs: Path
    beam_size: int
    bare_sentences: int
    offline_sentences: int
    request_timeout: float | None
    server_args: list[str]
    label: str
    out: Path
    seed: int
    argv: list[str] = field(default_factory=list)

    @property
    def client_timeout_s(self) -> float:
        server_default = Settings.model_fields["request_timeout_s"].default
        return (self.request_timeout or server_default) + CLIENT_MARGIN_S


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = p.add_argument
    add("--quick", action="store_true", help="smoke run (~2 min): short levels, fewer of them")
    add("--modes", default=",".join(MODE_ORDER), help="batching modes to compare (default: all three)")
    add("--concurrency", help=f"closed-loop concurrencies (default {DEFAULTS['concurrency']})")
    add(
        "--rates",
        help="open-loop arrival rates: req/s, or NNx = fraction of the first mode's best closed-loop req/s\n"
        f"(default {DEFAULTS['rates']}; '' for no open loop)",
    )
    add("--duration", type=float, help=f"measured seconds per level (default {DEFAULTS['duration']:g})")
    add(
        "--warmup",
        type=float,
        help=f"unmeasured seconds before each level, at least (default {DEFAULTS['warmup']:g});\n"
        "a closed loop also waits until every worker got one reply",
    )
    add(
        "--ttft-duration",
        type=float,
        help=f"measured seconds per streamed-chat level (default {DEFAULTS['ttft_duration']:g})",
    )
    add("--threads", type=int, default=0, help="torch threads of server, bare model and matmul peak (0: torch default)")
    add("--device", default="auto", choices=["auto", "cpu", "cuda"], help="server, bare model and matmul peak")
    add(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="server, bare model and matmul peak (auto: float16 on CUDA, float32 on the CPU;\n"
        "bfloat16 is the fast choice on CPUs with native bfloat16 GEMMs, e.g. AVX512-BF16 or AMX)",
    )
    add(
        "--quantize",
        default="none",
        choices=QUANTIZATIONS,
        help="int8: the server's --quantize int8, the bare model quantised alike, MFU against the int8 linear peak",
    )
    add("--model", default="translate-de-en", help="translation model, name or name@version")
    add("--chat-model", default="chat-en", help="chat model for the TTFT phase ('' to skip)")
    add("--model-store", type=Path, default=REPO / "model_store", help="default: the repository's model_store/")
    add("--inputs", type=Path, default=DEFAULT_INPUTS, help="source sentences, one per line (.gz ok)")
    add("--chat-inputs", type=Path, default=DEFAULT_CHAT_INPUTS, help="chat messages, one per line (.gz ok)")
    add("--beam-size", type=int, default=1, help="beam size of every request (1: greedy)")
    add("--bare-sentences", type=int, help=f"sentences timed on the bare model (default {DEFAULTS['bare_sentences']})")
    add(
        "--offline-sentences",
        type=int,
        help=f"sentences of the offline batched reference (default {DEFAULTS['offline_sentences']})",
    )
    add("--request-timeout", type=float, help="'timeout' sent with each request (default: the server's)")
    add("--server-args", default="", help="extra server flags, e.g. '--max-batch-rows 64'")
    add("--label", help="results folder name (default: date-time, '-quick' appended for --quick)")
    add("--out", type=Path, default=REPO / "bench/results", help="results root; raw data go under raw/")
    add("--seed", type=int, default=0, help="input shuffle and Poisson arrivals")
    a = p.parse_args(argv)
    preset = QUICK if a.quick else DEFAULTS
    pick = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in preset.items()}
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODE_ORDER)
    if unknown or not modes:
        p.error(f"--modes: choose from {', '.join(MODE_ORDER)}")
    if not dtype_fits(a.quantize, a.dtype):
        p.error("--quantize int8 runs float32 activations: leave --dtype at auto or float32")
    label = a.label or dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if a.quick else "")
    return BenchConfig(
        modes=sorted(modes, key=MODE_ORDER.index),
        concurrency=[int(c) for c in pick["concurrency"].split(",") if c.strip()],
        rates=[Rate.parse(r) for r in pick["rates"].split(",") if r.strip()],
        duration=pick["duration"],
        warmup=pick["warmup"],
        ttft_duration=pick["ttft_duration"],
        threads=a.threads or torch.get_num_threads(),
        device=a.device,
        dtype=a.dtype,
        quantize=a.quantize,
        model=a.model,
        chat_model=a.chat_model,
        model_store=a.model_store.resolve(),
        inputs=a.inputs,
        chat_inputs=a.chat_inputs,
        beam_size=a.beam_size,
        bare_sentences=pick["bare_sentences"],
        offline_sentences=pick["offline_sentences"],
        request_timeout=pick["request_timeout"],
        server_args=shlex.split(a.server_args),
        label=label,
        out=a.out,
        seed=a.seed,
        argv=list(sys.argv[1:] if argv is None else argv),
    )


def _server_flag(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in the extra server arguments (``--flag value`` or ``--flag=value``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def server_engine_process(args: list[str]) -> bool:
    """Whether the server runs its engines in processes of their own (its ``--engine-process``)."""
    flag = _server_flag(args, "--engine-process") or os.environ.get("SEQ2SEQ_ENGINE_PROCESS")
    return TypeAdapter(bool).validate_python(flag) if flag else Settings.model_fields["engine_process"].default


def model_dir(store: Path, spec: str) -> Path:
    """``name`` -> its latest version directory (numeric order, like the server); ``name@version`` -> that one."""
    name, _, version = spec.partition("@")
    root = store / name
    if version:
        return root / version
    versions = [v for v in root.iterdir() if (v / "manifest.json").is_file()] if root.is_dir() else []
    if not versions:
        raise SystemExit(f"model {name!r}: no version in {root}")
    return max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.name.split(".")))


# -- one mode --------------------------------------------------------------------------------------

RawRecords = list[tuple[str, str, float, RequestRecord]]


@dataclass
class ModeContext:
    """What every mode shares: inputs, and where the per-request data goes."""

    cfg: BenchConfig
    sentences: list[str]
    chat_sentences: list[str]  # empty: no chat model (or no messages), the TTFT phase is skipped
    model_name: str
    raw: RawRecords = field(default_factory=list)
    reference_rps: float | None = None  # the first mode's max closed-loop req/s (for relative rates)
    bare: BareModel | None = None  # for the paired concurrency-1 comparison
    c1_pairs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # mode -> (server s, bare s)


def _server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server saw during the window: rows per step, step time, its and our CPU use."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    wall = delta("_wall")
    steps = delta("seq2seq_batch_size_count")
    view = {
        "server_cpu": delta("_server_cpu") / wall,
        "client_cpu": delta("_client_cpu") / wall,
        "server_tokens_per_s": delta("seq2seq_generated_tokens_total") / wall,
        "decode_steps_per_s": steps / wall,
        # Encoding runs on the engine's worker, or beside the steps on the encoder thread (--overlap-encode).
        "encode_busy": delta("seq2seq_encode_seconds_sum") / wall,
    }
    if steps:
        view["decode_busy"] = delta("seq2seq_decode_step_seconds_sum") / wall
        view["mean_batch_rows"] = delta("seq2seq_batch_size_sum") / steps
        view["mean_step_ms"] = 1000 * delta("seq2seq_decode_step_seconds_sum") / steps
        # The rest of a step's wall time the worker waited: for the GIL, mostly.
        view["step_on_cpu"] = delta("seq2seq_decode_step_cpu_seconds_total") / delta("seq2seq_decode_step_seconds_sum")
    return view


class ModeBench:
    """The levels of one mode against its running server; results accumulate in ``self.result``."""

    def __init__(
        self, ctx: ModeContext, mode: str, server: ServerProcess, client: httpx.AsyncClient, load: HttpClient
    ) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.server = server
        self.client = client  # control requests: /metrics, idle checks
        self.result = ModeResult(mode, server.startup_s, server.memory_ready)
        self.options: dict[str, Any] = {"beam_size": self.cfg.beam_size}  # decoding options of every request
        if self.cfg.request_timeout is not None:
            self.options["timeout"] = self.cfg.request_timeout
        body = {"model": ctx.model_name, "source_lang": "de", "target_lang": "en", **self.options}
        self.translate = Target(load, "/translate", "text", ctx.sentences, body, timeout_s=self.cfg.client_timeout_s)
        chat_body = {"model": self.cfg.chat_model, **self.options}
        self.chat = (  # streamed /chat for time to first token; none without a chat model in the store
            Target(
                load,
                "/chat",
                "message",
                ctx.chat_sentences,
                chat_body,
                timeout_s=self.cfg.client_timeout_s,
                stream=True,
            )
            if ctx.chat_sentences
            else None
        )
        self.open_skip: str | None = None  # why the remaining open-loop rates are skipped

    async def closed_level(self, c: int) -> None:
        cfg = self.cfg
        await self.measure("closed", c, lambda edge: closed_loop(self.translate, c, cfg.warmup, cfg.duration, edge))
        if c == 1:
            await self.paired_c1()

    async def paired_c1(self) -> None:
        """Each bare-model sentence, then the same sentence sent to the server, alternately.

        Each pair is timed within a fraction of a second, so the concurrency-1 comparison
        holds on a machine whose speed drifts by 10-20 % over minutes; a bare timing taken
        before or after the level would not.
        """
        bare = self.ctx.bare
        if bare is None:
            return
        pairs = self.ctx.c1_pairs.setdefault(self.result.mode, [])
        for index in sorted(bare.requests):
            timing = await asyncio.to_thread(bare.time, index)  # the servers idle meanwhile
            record = await self.translate(index=index)
            self.ctx.raw.append((self.result.mode, "paired", 1, record))
            if record.ok:
                pairs.append((record.latency, timing.seconds))

    async def open_level(self, i: int, rate: Rate) -> None:
        """Open loop at ``rate``; skipped once a lower rate overloaded this mode."""
        cfg = self.cfg
        if rate.relative and not self.ctx.reference_rps:
            self.open_skip = "no closed-loop reference throughput for a relative rate"
        value = round(rate.resolve(self.ctx.reference_rps or 0.0), 2)
        if self.open_skip is not None or value <= 0:
            self.result.levels.append(LevelStats.skipped_level("open", value, self.open_skip or "rate <= 0"))
            return
        stats = await self.measure(
            "open", value, lambda edge: open_loop(self.translate, value, cfg.warmup, cfg.duration, cfg.seed + i, edge)
        )
        if report.overloaded(stats):
            self.open_skip = f"overloaded at {value:g} req/s"

    async def ttft_level(self, c: int) -> None:
        """Streamed /chat at low concurrency: the time to first token users of the chat UI feel."""
        cfg, chat = self.cfg, self.chat
        assert chat is not None, "no chat model: no TTFT levels"
        await self.measure("ttft", c, lambda edge: closed_loop(chat, c, cfg.warmup, cfg.ttft_duration, edge))

    async def measure(
        self,
        phase: Literal["closed", "open", "ttft"],
        level: float,
        load: Callable[[EdgeHook], Coroutine[Any, Any, LoadRun]],
    ) -> LevelStats:
        """Run one level, snapshotting /metrics and CPU times at its window's edges, then wait for an idle server."""
        model = self.cfg.chat_model if phase == "ttft" else self.ctx.model_name
        edges: list[dict[str, float]] = []

        async def snapshot() -> None:
            edges.append(await self._snapshot(model))

        run = await load(snapshot)
        stats = report.summarize(run, phase, level)
        stats.server = _server_view(*edges)
        self.result.levels.append(stats)
        mode = self.result.mode
        self.ctx.raw.extend((mode, phase, level, r) for r in run.records)
        log.info(
            "%-10s %-6s %-12s %7.1f req/s %7.0f tok/s  p50 %8.1f ms  p95 %8.1f ms  errors %s",
            *(mode, phase, stats.label, stats.rps, stats.tokens_per_s, stats.p50_ms, stats.p95_ms, stats.errors or 0),
        )
        if await self.server.wait_idle(self.client, model) is None:
            note = f"after {phase} {stats.label} the server was still busy 60 s later (queue or rows not drained)"
            log.warning("%s: %s", mode, note)
            self.result.notes.append(note)
        return stats

    async def _snapshot(self, model: str) -> dict[str, float]:
        m = await self.server.metrics(self.client, model)
        m["_wall"] = time.perf_counter()
        m["_server_cpu"] = self.server.cpu_seconds()
        m["_client_cpu"] = time.process_time()
        return m


def server_args(ctx: ModeContext, mode: str) -> list[str]:
    """``python -m service`` flags for ``mode``: the model (and the chat model when there is one)."""
    cfg = ctx.cfg
    models = [cfg.model, *([cfg.chat_model] if ctx.chat_sentences else [])]
    return [
        *("--model-store", str(cfg.model_store), "--models", ",".join(models), "--batching", mode),
        *("--threads", str(cfg.threads), "--device", cfg.device, "--dtype", cfg.dtype, "--quantize", cfg.quantize),
        *("--log-level", "warning", *cfg.server_args),
    ]


async def run_modes(ctx: ModeContext) -> dict[str, ModeResult]:
    """Start a server per mode (one after the other), run every level on each in turn, stop them."""
    cfg = ctx.cfg
    benches: list[ModeBench] = []
    async with contextlib.AsyncExitStack() as stack:
        for mode in cfg.modes:
            log_path = cfg.out / "raw" / cfg.label / f"server-{mode}.log"
            server = await stack.enter_async_context(ServerProcess(server_args(ctx, mode), log_path, REPO))
            log.info("%s: ready in %.1f s, PSS %.0f MiB", mode, server.startup_s, server.memory_ready / 2**20)
            # Idle connections are dropped well before uvicorn's 5 s keep-alive closes them: a
            # snapshot sent on a connection the server is closing fails with "Server disconnected".
            control = httpx.AsyncClient(base_url=server.url, timeout=None, limits=httpx.Limits(keepalive_expiry=1.0))
            client = await stack.enter_async_context(control)
            load = await stack.enter_async_context(HttpClient(server.url))
            benches.append(ModeBench(ctx, mode, server, client, load))  # load: the measured requests
        for c in cfg.concurrency:
            for bench in benches:
                await bench.closed_level(c)
        if benches:
            ctx.reference_rps = benches[0].result.max_closed_rps()
        for i, rate in enumerate(cfg.rates):
            for bench in benches:
                await bench.open_level(i, rate)
        if ctx.chat_sentences:  # else no chat model in the store: no TTFT phase
            for c in TTFT_CONCURRENCY:
                for bench in benches:
                    await bench.ttft_level(c)
    for bench in benches:
        bench.result.memory_peak_bytes = bench.server.memory_peak
    return {bench.result.mode: bench.result for bench in benches}


# -- the whole run ----------------------------------------------------------------------------------


def c1_vs_bare(pairs: list[tuple[float, float]]) -> dict[str, float] | None:
    """p50 of the server's concurrency-1 latencies against the bare model's, over (server s, bare s) pairs."""
    if not pairs:
        return None
    server_ms = report.percentile([s for s, _ in pairs], 50) * 1000
    bare_ms = report.percentile([b for _, b in pairs], 50) * 1000
    return {"sentences": len(pairs), "server_p50_ms": server_ms, "bare_p50_ms": bare_ms, "ratio": server_ms / bare_ms}


def efficiency(modes: dict[str, ModeResult], cfg_model: ModelConfig, peak_gflops: float) -> dict[str, Any]:
    """Decoder FLOPs per token at each mode's saturation level, and MFU with and without the encoder."""
    out: dict[str, Any] = {"peak_gflops": peak_gflops, "modes": {}}
    for mode, result in modes.items():
        sat = result.saturation()
        if sat is None:
            continue
        parts = decoder_flops(cfg_model, sat.mean_input_tokens)
        per_token = sum(parts.values())
        decoder = per_token * sat.tokens_per_s
        encoder = encoder_flops_per_source_token(cfg_model) * sat.mean_input_tokens * sat.rps
        encoder += bridge_flops_per_sentence(cfg_model) * sat.rps
        out["modes"][mode] = {
            "level": f"{sat.phase} {sat.label}",
            "tokens_per_s": sat.tokens_per_s,
            "mean_source_tokens": sat.mean_input_tokens,
            "decoder_flops_per_token": per_token,
            "decoder_flops_parts": parts,
            "decoder_gflops": decoder / 1e9,
            "mfu": decoder / (peak_gflops * 1e9),
            "mfu_incl_encoder": (decoder + encoder) / (peak_gflops * 1e9),
        }
    return out


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        # Results written by earlier runs of a series do not change the code being measured.
        status = ["git", "status", "--porcelain", "--", ".", ":(exclude)bench/results"]
        dirty = subprocess.run(status, cwd=REPO, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return head.strip() + ("+dirty" if dirty.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _chat_sentences(cfg: BenchConfig) -> list[str]:
    """Messages for the TTFT phase; none (phase skipped, with a warning) without a chat model or messages."""
    if not cfg.chat_model:
        return []
    if not (cfg.model_store / cfg.chat_model.partition("@")[0]).is_dir():
        log.warning("chat model %s is not in %s: skipping the TTFT phase", cfg.chat_model, cfg.model_store)
        return []
    if not cfg.chat_inputs.is_file():
        log.warning("no chat messages at %s: skipping the TTFT phase", cfg.chat_inputs)
        return []
    return shuffled(load_sentences(cfg.chat_inputs), cfg.seed)


def run(cfg: BenchConfig) -> dict[str, Any]:
    """The whole benchmark: in-process baselines, then every mode; writes every output and returns results.json's content."""
    manifest_dir = model_dir(cfg.model_store, cfg.model)
    manifest = read_manifest(manifest_dir)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    sentences = shuffled(load_sentences(cfg.inputs), cfg.seed)
    chat_sentences = _chat_sentences(cfg)
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)

    log.info("matmul peak: %s %s (quantisation %s), %d threads", device, dtype, cfg.quantize, cfg.threads)
    peak_before = matmul_peak_gflops(device, dtype, cfg.threads, quantize=cfg.quantize)
    log.info("matmul peak %.1f GFLOP/s; timing the bare model on %d sentences", peak_before, cfg.bare_sentences)
    bare_model = BareModel(
        manifest_dir,
        sentences[: cfg.bare_sentences],
        device=device,
        dtype=dtype,
        threads=cfg.threads,
        beam_size=cfg.beam_size,
        quantize=cfg.quantize,
    )
    bare = time_bare_model(bare_model)
    max_rows = int(_server_flag(cfg.server_args, "--max-batch-rows") or Settings.model_fields["max_batch_rows"].default)
    log.info("offline batched reference: %d sentences, %d rows", cfg.offline_sentences, max_rows)
    offline = time_offline_batch(
        manifest_dir,
        sentences[: cfg.offline_sentences],
        device=device,
        dtype=dtype,
        threads=cfg.threads,
        max_rows=max_rows,
        beam_size=cfg.beam_size,
        quantize=cfg.quantize,
    )
    (cfg.out / "raw" / cfg.label).mkdir(parents=True, exist_ok=True)
    ctx = ModeContext(cfg, sentences, chat_sentences, manifest["name"], bare=bare_model)
    # uvloop (installed with uvicorn[standard]) makes the load generator's event loop cheaper.
    with asyncio.Runner(loop_factory=getattr(uvloop, "new_event_loop", None)) as runner:
        modes = runner.run(run_modes(ctx))
    # Measured again at the end: background load only ever lowers a peak, so the MFU
    # denominator is the better of the two (a slow start would otherwise inflate MFU).
    peak_after = matmul_peak_gflops(device, dtype, cfg.threads, quantize=cfg.quantize)
    peak = max(peak_before, peak_after)
    log.info("matmul peak at the end %.1f GFLOP/s (at the start %.1f)", peak_after, peak_before)

    meta = {
        "label": cfg.label,
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(cfg.argv),
        "git": _git_revision(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "quantize": cfg.quantize,
        "threads": cfg.threads,
        "engine_process": server_engine_process(cfg.server_args),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "model": f"{manifest['name']}@{manifest['version']}",
        "model_config": manifest["model"],
        "parameters": manifest.get("parameters"),
        "chat_model": cfg.chat_model if chat_sentences else None,
        "inputs": str(cfg.inputs),
        "beam_size": cfg.beam_size,
        "duration_s": cfg.duration,
        "warmup_s": cfg.warmup,
        "request_timeout_s": cfg.request_timeout,
        "server_args": cfg.server_args,
        "reference_rps": ctx.reference_rps,
        "peak_gflops_start_end": [peak_before, peak_after],
    }
    results = _results(cfg, meta, ModelConfig.from_dict(manifest["model"]), peak, bare, offline, modes, ctx.c1_pairs)
    _write_outputs(cfg, results, ctx.raw)
    return results


def _results(
    cfg: BenchConfig,
    meta: dict[str, Any],
    model_cfg: ModelConfig,
    peak_gflops: float,
    bare: list[BareTiming],
    offline: OfflineBatch,
    modes: dict[str, ModeResult],
    c1_pairs: dict[str, list[tuple[float, float]]],
) -> dict[str, Any]:
    """Derived numbers (MFU, concurrency 1 vs bare, target comparisons) next to the measurements."""
    eff = efficiency(modes, model_cfg, peak_gflops)
    c1 = {m: v for m in modes if (v := c1_vs_bare(c1_pairs.get(m, []))) is not None}
    cont_c1 = c1.get("continuous")
    top = float(max(cfg.concurrency)) if cfg.concurrency else 0.0
    mfu = {m: v["mfu"] for m, v in eff["modes"].items()}
    comparisons = report.compare(modes, top, cont_c1 and (cont_c1["server_p50_ms"], cont_c1["bare_p50_ms"]), mfu)
    bare_ms = [b.seconds * 1000 for b in bare]
    return {
        "meta": meta,
        "formulas": {"decoder": DECODER_FORMULA, "encoder": ENCODER_FORMULA},
        "efficiency": eff,
        "bare_model": {
            "sentences": len(bare),
            "p50_ms": report.percentile(bare_ms, 50),
            "p95_ms": report.percentile(bare_ms, 95),
            "mean_ms": sum(bare_ms) / len(bare_ms) if bare_ms else None,
            "mean_output_tokens": sum(b.output_tokens for b in bare) / len(bare) if bare else None,
        },
        "offline_batch": {
            "sentences": offline.sentences,
            "max_rows": offline.max_rows,
            "seconds": offline.seconds,
            "requests_per_s": offline.requests_per_s,
            "tokens_per_s": offline.tokens_per_s,
            # one at a time, from the bare model's timings: the same work without batching
            "one_at_a_time_requests_per_s": len(bare_ms) / sum(bare_ms) * 1000 if bare_ms else None,
        },
        "c1_vs_bare": c1,
        "comparisons": comparisons,
        "modes": modes,
    }


def _write_outputs(cfg: BenchConfig, results: dict[str, Any], raw: RawRecords) -> None:
    out_dir = cfg.out / cfg.label
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(out_dir / "results.json", results)
    report.plot_latency_vs_throughput(results["modes"], out_dir / report.PLOT_NAME)
    (out_dir / "report.md").write_text(report.render_markdown(results))
    report.write_raw(cfg.out / "raw" / cfg.label / "requests.jsonl", raw)
    log.info(
        "wrote %s (report.md, results.json, %s); raw data in %s", out_dir, report.PLOT_NAME, cfg.out / "raw" / cfg.label
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress
    results = run(parse_args(argv))
    print(report.render_console(results))  # the command's output: the headline tables
