"""Model configuration: the one object a model is built from.

It round-trips through the ``model`` section of ``manifest.json``, so a checkpoint
always carries what is needed to rebuild the network that produced its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Architecture = Literal["context-init", "context-every-step", "attention"]
ARCHITECTURES: tuple[str, ...] = ("context-init", "context-every-step", "attention")

# Special token ids, identical in every tokenizer the pipeline trains.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "attention"  # one of ARCHITECTURES
    src_vocab_size: int = 6000
    tgt_vocab_size: int = 6000
    emb_dim: int = 256  # token embeddings, and the tied output projection
    hidden_dim: int = 512  # decoder LSTM width; a bidirectional encoder uses hidden_dim // 2 per direction
    enc_layers: int = 1
    dec_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    tie_embeddings: bool = True  # decoder input embedding == output projection
    share_vocab: bool = False  # source and target use one tokenizer and one embedding

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even with a bidirectional encoder")
        if self.share_vocab and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_vocab needs src_vocab_size == tgt_vocab_size")
        for name in ("src_vocab_size", "tgt_vocab_size", "emb_dim", "hidden_dim", "enc_layers", "dec_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def enc_hidden_per_direction(self) -> int:
        return self.hidden_dim // 2 if self.bidirectional else self.hidden_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)
