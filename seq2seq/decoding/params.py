"""Decoding parameters of one request, validated when they are built."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Strategy(StrEnum):
    GREEDY = "greedy"
    SAMPLE = "sample"
    BEAM = "beam"


class FinishReason(StrEnum):
    """Every way a hypothesis can end."""

    EOS = "eos"  # the model produced end-of-sequence
    LENGTH = "length"  # max_length reached
    ABORTED = "aborted"  # the request was cancelled (client gone, deadline)


@dataclass(frozen=True)
class DecodeParams:
    max_length: int = 100  # generated tokens, EOS excluded
    min_length: int = 0  # EOS is impossible before this many tokens
    beam_size: int = 1
    n_best: int = 1
    length_penalty: float = 1.0  # GNMT alpha: score / ((5 + len) / 6) ** alpha; 0 = raw log-prob
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError("max_length must be at least 1")
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError("min_length must be between 0 and max_length")
        if self.beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError("n_best must be between 1 and beam_size")
        if self.sample and self.beam_size > 1:
            raise ValueError("sampling and beam search cannot be combined: use sample=false or beam_size=1")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.length_penalty < 0:
            raise ValueError("length_penalty must be >= 0")

    @property
    def strategy(self) -> Strategy:
        if self.beam_size > 1:
            return Strategy.BEAM
        return Strategy.SAMPLE if self.sample else Strategy.GREEDY

    @property
    def rows(self) -> int:
        """Batch rows this request occupies while it decodes."""
        return self.beam_size
