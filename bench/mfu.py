"""Model FLOPs utilisation: analytic FLOPs of the model, and the machine's measured matmul peak.

MFU = (FLOPs per generated token x generated tokens/s) / peak FLOP/s. The FLOPs are the
*useful* multiply-adds of the network as written in :mod:`seq2seq.model` (one multiply-add =
2 FLOPs; element-wise work, softmax and biases are ignored), not what the kernels actually
execute: attention over padding and the step that emits EOS are not counted, so MFU is a
lower bound of how busy the matrix units are. The peak is *measured* in the same run, with
the server's thread count, dtype and device, because a nominal datasheet number says
nothing about a shared 2-core VM.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn

from seq2seq.config import ModelConfig
from seq2seq.optimize import quantize_modules_int8

DECODER_FORMULA = (
    "per generated token: LSTM sum_l 2*4*H*(in_l + H) (in_1 = E, + H for context-every-step; in_l = H above) "
    "+ attention 2*H*H + 2*2*S*H (query, scores + context, S = mean source tokens) + combine 2*2H*H "
    "+ pre-output 2*H*E + vocabulary projection 2*E*V (tied; untied: 2*H*V); embedding lookups free"
)
ENCODER_FORMULA = (
    "per source token: LSTM sum_l dirs*2*4*Hd*(in_l + Hd) (Hd = H/dirs, in_1 = E, in_l = H); "
    "per sentence: bridge 2*2*H*H*L_dec"
)


def decoder_flops(cfg: ModelConfig, src_len: float) -> dict[str, float]:
    """FLOPs of one decoder step of one row, by part; ``src_len`` is the attended source length."""
    h, e = cfg.hidden_dim, cfg.emb_dim
    parts: dict[str, float] = {}
    lstm_in = e + (h if cfg.architecture == "context-every-step" else 0)
    parts["lstm"] = sum(2 * 4 * h * ((lstm_in if layer == 0 else h) + h) for layer in range(cfg.dec_layers))
    if cfg.architecture == "attention":
        parts["attention"] = 2 * h * h + 2 * 2 * src_len * h  # query h W_a, then scores and context
    if cfg.architecture != "context-init":
        parts["combine"] = 2 * (2 * h) * h
    if cfg.tie_embeddings:
        parts["pre_output"] = 2 * h * e
        parts["vocab_projection"] = 2 * e * cfg.tgt_vocab_size
    else:
        parts["vocab_projection"] = 2 * h * cfg.tgt_vocab_size
    return parts


def encoder_flops_per_source_token(cfg: ModelConfig) -> float:
    """Encoder LSTM (both directions), per source token."""
    dirs = 2 if cfg.bidirectional else 1
    hd = cfg.enc_hidden_per_direction
    return float(
        sum(dirs * 2 * 4 * hd * ((cfg.emb_dim if layer == 0 else hd * dirs) + hd) for layer in range(cfg.enc_layers))
    )


def bridge_flops_per_sentence(cfg: ModelConfig) -> float:
    """Encoder final state -> decoder initial (h, c): two H x H projections per decoder layer."""
    return float(2 * 2 * cfg.hidden_dim * cfg.hidden_dim * cfg.dec_layers)


def matmul_peak_gflops(
    device: torch.device,
    dtype: torch.dtype,
    threads: int,
    n: int = 1024,
    rounds: int = 5,
    min_round_s: float = 0.2,
    quantize: str = "none",
) -> float:
    """Best GFLOP/s of ``n x n @ n x n`` over ``rounds`` timed rounds, with ``threads`` intra-op threads.

    With ``quantize="int8"`` the product is the int8 dynamic linear layer the quantised
    model runs (activations quantised on the fly), so MFU is measured against the peak
    of the arithmetic actually used. The best round, not the mean: the peak is the
    denominator of MFU, and the background load of a shared machine only ever lowers it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        if quantize == "int8":
            layer = quantize_modules_int8(nn.Sequential(nn.Linear(n, n, bias=False)))
            product: Callable[[], object] = lambda: layer(a)  # noqa: E731
        else:
            b = torch.randn(n, n, device=device, dtype=dtype)
            product = lambda: torch.matmul(a, b)  # noqa: E731
        with torch.inference_mode():
            iters = 1
            while _time(product, iters, device) < min_round_s:  # calibrate: one round >= min_round_s
                iters *= 2
            return max(2 * n**3 * iters / _time(product, iters, device) / 1e9 for _ in range(rounds))
    finally:
        torch.set_num_threads(previous)


def _time(product: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds for ``iters`` back-to-back products, synchronising once (a GPU would idle on every sync)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        product()
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
