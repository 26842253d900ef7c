"""``python -m bench.step_profile``: where one decoder step of a full batch goes, and its floor.

Keeps a running batch at ``--rows`` rows of real sentences, refilled in groups of 8 as rows
finish (as continuous batching keeps it full at saturation), and for ``--steps`` steps
times :meth:`GenerationBatch.step` and the model's decoder step inside it; the difference
is the batch's own work (token choice, events, rows leaving). A further ``--profile-steps``
steps run under the torch profiler for each operator's share.

The floor is the step's useful FLOPs (:mod:`bench.mfu`: the rows' real source lengths,
not the padded width the attention spans) at the matmul peak measured in the same
process: a step made of nothing but GEMMs at the peak. ``floor / step`` is the step's MFU,
and ``step / floor`` is the most that any optimisation of the step could still speed up
continuous batching at saturation. The time of the GEMMs alone, and their share of the
peak, bounds what any change outside them can give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bare import server_requests
from bench.loadgen import load_sentences, shuffled
from bench.mfu import decoder_flops, matmul_peak_gflops
from bench.run import DEFAULT_INPUTS, REPO, model_dir
from seq2seq.device_model import DeviceModel
from seq2seq.generation import GenerationBatch, GenerationRequest
from seq2seq.optimize import DTYPES, QUANTIZATIONS, Quantization
from seq2seq.state import DecoderState
from service.engine.loader import load_served_model
from service.settings import Settings

GROUP = 8  # rows admitted at a time when the batch refills
GEMM_OPERATORS = {"aten::addmm", "aten::mm", "quantized::linear_dynamic"}  # float32/16 and int8 linear layers


@dataclass(frozen=True)
class StepProfile:
    rows: int
    steps: int
    step_ms: float  # GenerationBatch.step, mean
    decode_step_ms: float  # the model's decoder step within it, mean
    src_tokens: float  # mean source tokens per row: what the attention needs
    width: float  # mean padded source width: what the attention spans
    useful_gflop: float  # per step, at the rows' source lengths
    gemm_gflop: float  # the part of it in GEMMs (all but the attention's scores and context)
    profiled_step_ms: float  # a step (with its joins) under the profiler, which adds its own overhead
    gemm_ms: float  # profiled time of the GEMM operators per step
    peak_gflops: float
    operators: dict[str, float]  # share of the profiled steps' wall time, largest first

    @property
    def floor_ms(self) -> float:
        return self.useful_gflop / self.peak_gflops * 1e3

    @property
    def mfu(self) -> float:
        return self.floor_ms / self.step_ms

    @property
    def gemm_efficiency(self) -> float:
        """The GEMMs' own FLOP/s over the peak: what the BLAS achieves at these shapes."""
        return self.gemm_gflop / self.gemm_ms * 1e3 / self.peak_gflops


class _TimedStep:
    """The batch's decoder step, timed."""

    def __init__(self, batch: GenerationBatch) -> None:
        self.inner = batch.decode_step
        self.device = batch.device
        self.seconds: list[float] = []

    def __call__(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        t0 = time.perf_counter()
        out = self.inner(tokens, state)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(time.perf_counter() - t0)
        return out


class _Refill:
    """Keeps a batch at ``rows`` rows, cycling through ``requests`` under fresh ids, 8 at a time."""

    def __init__(self, batch: GenerationBatch, requests: list[GenerationRequest], rows: int) -> None:
        self.batch, self.requests, self.rows = batch, requests, rows
        self.ready: list[tuple[list[GenerationRequest], DecoderState]] = []
        self.n = 0

    def encode_ahead(self, groups: int) -> None:
        """Encode ``groups`` groups now, so that refills join them without encoding."""
        self.ready += [(g, self.batch.encode(g)) for g in (self._group() for _ in range(groups))]

    def __call__(self) -> None:
        while len(self.batch) < self.rows:
            if not self.ready:
                self.encode_ahead(1)
            self.batch.join(*self.ready.pop(0))

    def _group(self) -> list[GenerationRequest]:
        picked = [self.requests[(self.n + k) % len(self.requests)] for k in range(GROUP)]
        group = [GenerationRequest(f"{r.id}-{self.n + k}", r.src_ids, r.params) for k, r in enumerate(picked)]
        self.n += GROUP
        return group


def profile_step(
    model: DeviceModel,
    requests: list[GenerationRequest],
    *,
    rows: int,
    steps: int,
    warmup_steps: int,
    profile_steps: int,
    peak_gflops: float,
) -> StepProfile:
    batch = model.new_batch()
    timed = _TimedStep(batch)
    batch.decode_step = timed
    cfg = model.loaded.model.cfg
    cuda = model.device.type == "cuda"
    refill = _Refill(batch, requests, rows)
    step_s: list[float] = []
    src_tokens: list[float] = []
    widths: list[int] = []  # the padded source width the attention spans
    for i in range(warmup_steps + steps):
        refill()
        assert batch.state is not None
        src = statistics.mean(len(seq.request.src_ids) for seq in batch.active)
        width = 0 if batch.state.memory is None else batch.state.memory.size(1)
        t0 = time.perf_counter()
        batch.step()
        if i >= warmup_steps:
            step_s.append(time.perf_counter() - t0)
            src_tokens.append(src)
            widths.append(width)
    decode_s = timed.seconds[warmup_steps:]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    wall = 0.0
    refill.encode_ahead(profile_steps)  # more than the rows that finish: encoding is not the step's work
    with profile(activities=activities) as prof:
        for _ in range(profile_steps):
            t0 = time.perf_counter()
            refill()  # joining arrivals is part of a running batch's steps
            batch.step()
            wall += time.perf_counter() - t0
    times = {e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6 for e in prof.key_averages()}
    mean_src = statistics.mean(src_tokens)
    return StepProfile(
        rows=rows,
        steps=steps,
        step_ms=statistics.mean(step_s) * 1e3,
        decode_step_ms=statistics.mean(decode_s) * 1e3,
        src_tokens=mean_src,
        width=statistics.mean(widths),
        useful_gflop=rows * sum(decoder_flops(cfg, mean_src).values()) / 1e9,
        gemm_gflop=rows * sum(decoder_flops(cfg, 0).values()) / 1e9,  # only the attention's bmm grows with S
        profiled_step_ms=wall / profile_steps * 1e3,
        gemm_ms=sum(t for op, t in times.items() if op in GEMM_OPERATORS) / profile_steps * 1e3,
        peak_gflops=peak_gflops,
        operators=_shares(times, wall, cuda),
    )


def _shares(times: dict[str, float], wall_s: float, cuda: bool) -> dict[str, float]:
    """Self time per operator as a share of the profiled wall time; on the CPU the rest is Python."""
    shares = {k: t / wall_s for k, t in sorted(times.items(), key=lambda kv: -kv[1]) if t / wall_s >= 0.005}
    if not cuda:
        shares["outside operators (Python, the profiler)"] = max(0.0, 1 - sum(times.values()) / wall_s)
    return shares


def render(p: StepProfile, label: str) -> str:
    lines = [
        f"{label}: {p.rows} rows, {p.steps} steps",
        f"  step                {p.step_ms:8.2f} ms  (decoder step {p.decode_step_ms:.2f} ms, "
        f"the batch's own work {p.step_ms - p.decode_step_ms:.2f} ms)",
        f"  source tokens/row   {p.src_tokens:8.1f}     (attention spans {p.width:.1f}: the widest row in the batch)",
        f"  useful work         {p.useful_gflop:8.3f} GFLOP per step at a matmul peak of {p.peak_gflops:.1f} GFLOP/s",
        f"  floor               {p.floor_ms:8.2f} ms  (nothing but GEMMs at the peak)",
        f"  step MFU            {p.mfu:8.1%}     step / floor {p.step_ms / p.floor_ms:.2f}x",
    ]
    if p.gemm_ms > 0:
        lines.append(
            f"  GEMMs               {p.gemm_ms:8.2f} ms  ({p.gemm_gflop:.3f} GFLOP at {p.gemm_efficiency:.0%} of the peak; "
            f"the rest of a profiled step {p.profiled_step_ms - p.gemm_ms:.2f} ms)"
        )
    else:  # a replayed CUDA graph's kernels belong to no operator
        lines.append("  GEMMs               not attributed to operators (kernels replayed from CUDA graphs)")
    lines.append("  operators (share of the profiled steps' wall time):")
    lines += [f"    {name:40s} {share:6.1%}" for name, share in p.operators.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.step_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="translate-de-en", help="name or name@version")
    p.add_argument("--model-store", type=Path, default=REPO / "model_store")
    p.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS, help="source sentences, one per line (.gz ok)")
    p.add_argument("--rows", type=int, default=96, help="rows kept in the batch (default 96: continuous at c=128)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--profile-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the steps and the matmul peak")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS)
    p.add_argument("--json", type=Path, help="also write the profile here")
    a = p.parse_args(argv)
    quantize: Quantization = a.quantize
    torch.set_num_threads(a.threads)
    path = model_dir(a.model_store, a.model)
    # Loaded as the server loads it: optimised, warmed up, and on a GPU with CUDA graphs up to --rows.
    model = load_served_model(path, Settings(device=a.device, dtype=a.dtype, quantize=quantize, max_batch_rows=a.rows))
    requests = server_requests(model.loaded.source_tokenizer, shuffled(load_sentences(a.inputs), 0))
    peak = matmul_peak_gflops(model.device, model.dtype, a.threads, quantize=quantize)
    with torch.inference_mode():
        result = profile_step(
            model,
            requests,
            rows=a.rows,
            steps=a.steps,
            warmup_steps=a.warmup_steps,
            profile_steps=a.profile_steps,
            peak_gflops=peak,
        )
    print(render(result, f"{path.parent.name}@{path.name} on {model.device} ({model.dtype_name}, {quantize})"))
    if a.json:
        a.json.write_text(json.dumps({**asdict(result), "floor_ms": result.floor_ms, "mfu": result.mfu}, indent=2))


if __name__ == "__main__":
    main()
