"""Decoding parameters of one request: every rule about them, in one place.

Each field's range is declared once, as an annotated type; :class:`DecodeParams` checks the
ranges and the combinations when it is built, and the HTTP schema declares its fields with
the same types (so its OpenAPI documentation shows the same ranges). A value is valid for
the API exactly when it is valid here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BeforeValidator, Field, StrictBool, model_validator
from pydantic.dataclasses import dataclass


class Strategy(StrEnum):
    GREEDY = "greedy"
    SAMPLE = "sample"
    BEAM = "beam"


class FinishReason(StrEnum):
    """Every way a hypothesis can end."""

    EOS = "eos"  # the model produced end-of-sequence
    LENGTH = "length"  # max_length reached
    ABORTED = "aborted"  # the request was cancelled (client gone, deadline)


def _json_number(value: object) -> object:
    """Numbers only: pydantic would turn ``true`` into 1 and ``"3"`` into 3, which no schema allows."""
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


JSON_NUMBER = BeforeValidator(_json_number)

MaxLength = Annotated[int, Field(ge=1, description="generated tokens, end-of-sequence excluded"), JSON_NUMBER]
MinLength = Annotated[
    int, Field(ge=0, description="end-of-sequence is impossible before this many tokens"), JSON_NUMBER
]
BeamSize = Annotated[int, Field(ge=1, description="beams per input; each beam is one row of the batch"), JSON_NUMBER]
NBest = Annotated[int, Field(ge=1, description="alternatives to return (<= beam_size)"), JSON_NUMBER]
LengthPenalty = Annotated[
    float,
    Field(ge=0.0, le=5.0, description="GNMT alpha: score / ((5 + len) / 6) ** alpha; 0 = raw log-prob"),
    JSON_NUMBER,
]
Sample = Annotated[StrictBool, Field(description="sample instead of taking the most likely token")]
# Sampling runs in float32: far below these lower bounds the scaled logits overflow and the
# nucleus mass rounds to zero, and the output is noise. Near them sampling is greedy decoding.
Temperature = Annotated[
    float,
    Field(ge=0.01, le=10.0, description="divides the logits before sampling; for 0, use greedy decoding"),
    JSON_NUMBER,
]
TopK = Annotated[
    int, Field(ge=0, description="sample among the k most likely tokens (at most the vocabulary); 0 = all"), JSON_NUMBER
]
TopP = Annotated[float, Field(ge=0.001, le=1.0, description="nucleus sampling mass; 1 = off"), JSON_NUMBER]
NoRepeatNgram = Annotated[
    int,
    Field(ge=0, le=8, description="never repeat an n-gram of this many tokens in the output (stops loops); 0 = off"),
    JSON_NUMBER,
]
MMIWeight = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        description="rerank the beam's hypotheses by (1 - w) * log p(reply | input) + w * log p(input | reply), "
        "a backward model's (models that ship one); 0 = off",
    ),
    JSON_NUMBER,
]
Seed = (
    Annotated[int, Field(ge=0, le=2**53 - 1, description="makes sampling reproducible (exact in JSON)"), JSON_NUMBER]
    | None
)


def source_length_cap(src_len: int) -> int:
    """The default ``max_length`` for a source of ``src_len`` pieces: outputs longer than this are
    loops, not translations (Multi30K's longest references are under twice their source)."""
    return 2 * src_len + 10


@dataclass(frozen=True)
class DecodeParams:
    max_length: MaxLength = 100
    min_length: MinLength = 0
    beam_size: BeamSize = 1
    n_best: NBest = 1
    length_penalty: LengthPenalty = 1.0
    sample: Sample = False
    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    seed: Seed = None
    no_repeat_ngram_size: NoRepeatNgram = 0
    mmi_weight: MMIWeight = 0.0

    @model_validator(mode="after")
    def _combinations(self) -> DecodeParams:
        if self.min_length > self.max_length:
            raise ValueError("min_length must not exceed max_length")
        if self.n_best > self.beam_size:
            raise ValueError("n_best must not exceed beam_size")
        if self.sample and self.beam_size > 1:
            raise ValueError("sample=true cannot be combined with beam_size > 1")
        if self.mmi_weight and self.beam_size == 1:
            raise ValueError("mmi_weight reranks a beam's hypotheses: it needs beam_size > 1")
        return self

    @property
    def strategy(self) -> Strategy:
        if self.beam_size > 1:
            return Strategy.BEAM
        return Strategy.SAMPLE if self.sample else Strategy.GREEDY

    @property
    def rows(self) -> int:
        """Batch rows this request occupies while it decodes."""
        return self.beam_size
