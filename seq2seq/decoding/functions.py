"""Pure decoding functions: log-probabilities and parameters in, tokens and scores out.

No model, no state, no hidden randomness: sampling draws only from the generators it is
given, so a seeded request reproduces whatever batch it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seq2seq.config import EOS_ID


def forbid(logprobs: torch.Tensor, rows: torch.Tensor, tokens: Sequence[int] = (EOS_ID,)) -> torch.Tensor:
    """logprobs (B, V); rows (B,) bool: ``tokens`` impossible on those rows (EOS: min_length not reached)."""
    if not bool(rows.any()):
        return logprobs
    logprobs = logprobs.clone()
    logprobs[rows.nonzero(), torch.tensor(tokens, device=logprobs.device)] = float("-inf")
    return logprobs


def block_repeated_ngrams(logprobs: torch.Tensor, histories: list[list[int]], sizes: list[int]) -> torch.Tensor:
    """logprobs (B, V); per row its tokens so far and n (0 = off): a token that would complete an
    n-gram the row already holds becomes impossible (the no-repeat rule of Paulus et al., 2018)."""
    banned_rows: list[int] = []
    banned_tokens: list[int] = []
    for row, (history, n) in enumerate(zip(histories, sizes, strict=True)):
        if n == 0 or len(history) < n:
            continue
        prefix = history[len(history) - n + 1 :]
        for start in range(len(history) - n + 1):
            if history[start : start + n - 1] == prefix:
                banned_rows.append(row)
                banned_tokens.append(history[start + n - 1])
    if not banned_rows:
        return logprobs
    logprobs = logprobs.clone()
    logprobs[banned_rows, banned_tokens] = float("-inf")
    return logprobs


def greedy(logprobs: torch.Tensor) -> torch.Tensor:
    """(B, V) -> (B,) the most likely token of each row (the first one on ties).

    On the CPU, NumPy's argmax: PyTorch's CPU argmax over the last dimension is a scalar
    loop, many times slower than NumPy's SIMD one at a batch's rows of logits, and a visible
    part of a decoder step. Both pick the first maximum.
    """
    if logprobs.device.type == "cpu" and logprobs.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(logprobs.numpy().argmax(-1))
    return logprobs.argmax(dim=-1)


def filter_logits(
    logprobs: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Apply per-row temperature (B,), top-k (B,; 0 = off) and top-p (B,; 1 = off) -> probabilities (B, V)."""
    logits = logprobs / temperature[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.size(-1), device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, logits.size(-1))
    drop = ranks >= k[:, None]
    probs = torch.softmax(sorted_logits, dim=-1)
    # Nucleus: drop a token when the tokens ranked above it already cover top_p; never the first.
    drop |= (probs.cumsum(-1) - probs) >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(filtered, dim=-1)


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Inverse-CDF sampling, one draw per row from that row's own generator: (B, V) -> (B,)."""
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    cdf = probs.double().cumsum(-1)  # (B, V)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1)
    return idx.clamp_(max=probs.size(-1) - 1)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation (Wu et al., 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_candidates(
    logprobs: torch.Tensor, scores: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One request's beam step: logprobs (K, V), cumulative scores (K,) -> the best ``n`` extensions.

    Returns (scores (n,), source beam (n,), token (n,)) in descending score order. Dead
    beams carry a score of -inf and are never chosen over a live one.
    """
    total = (scores[:, None] + logprobs).reshape(-1)  # (K * V,)
    best, flat = total.topk(min(n, total.numel()))
    vocab = logprobs.size(-1)
    return best, flat // vocab, flat % vocab
