"""Typed results of the API, and the decoding options both generation endpoints accept.

Results are frozen dataclasses built from the JSON replies. Fields the server adds later
are ignored rather than rejected, so an older client keeps working against a newer server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypedDict

FinishReason = Literal["eos", "length"]


class DecodingOptions(TypedDict, total=False):
    """Decoding options of /translate and /chat, passed through as keyword arguments.

    Left out, the server's defaults apply (docs/api.md). ``timeout`` is the *server's*
    deadline for queue + generation (504 when it passes), not the client's HTTP timeout;
    raising it above the client's read timeout (60 s by default) needs a larger one too.
    """

    beam_size: int
    n_best: int
    length_penalty: float
    sample: bool
    temperature: float
    top_k: int
    top_p: float
    seed: int
    max_length: int
    min_length: int
    no_repeat_ngram_size: int
    mmi_weight: float
    timeout: float


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Alternative:
    """One n-best hypothesis; ``score`` is the sum of its token log-probabilities."""

    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Translation:
    """The best translation of one input; ``alternatives`` (best first) only when ``n_best > 1``."""

    text: str
    score: float
    tokens: int
    finish_reason: FinishReason
    alternatives: list[Alternative] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        raw = data.get("alternatives")
        alternatives = None if raw is None else [Alternative(a["text"], a["score"]) for a in raw]
        return cls(**_known_fields(cls, data) | {"alternatives": alternatives})


@dataclass(frozen=True, slots=True)
class TranslateResult:
    """``translations`` is aligned with the inputs: one per text sent."""

    model: str
    version: str
    translations: list[Translation]
    usage: Usage | None = None
    request_id: str | None = None
    source_lang: str | None = None  # the model's: as asked, or identified from the text
    target_lang: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], request_id: str | None = None) -> Self:
        usage = data.get("usage")
        return cls(
            model=data["model"],
            version=data["version"],
            translations=[Translation.from_json(t) for t in data["translations"]],
            usage=Usage(**_known_fields(Usage, usage)) if usage is not None else None,
            request_id=request_id,
            source_lang=data.get("source_lang"),
            target_lang=data.get("target_lang"),
        )


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One earlier turn of a conversation, sent as ``history``."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole chat reply; also the last item of a stream."""

    model: str
    version: str
    reply: str
    score: float
    tokens: int
    finish_reason: FinishReason
    request_id: str | None = None
    language: str | None = None  # the model's: as asked, or identified from the message

    @classmethod
    def from_json(cls, data: Mapping[str, Any], request_id: str | None = None) -> Self:
        return cls(**_known_fields(cls, data) | {"request_id": request_id})


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """New text of a streamed reply; the deltas of one stream concatenate to its ``reply``, spaces included."""

    text: str


ChatEvent = ChatDelta | ChatResult


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model. ``default_for`` lists the keys it is the default for, e.g. ``translate:de-en``."""

    name: str
    version: str
    task: str
    status: Literal["loading", "ready", "failed"]
    versions: list[str] = field(default_factory=list)
    source_lang: str | None = None
    target_lang: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    error: str | None = None
    default_for: list[str] = field(default_factory=list)
    description: str | None = None
    evaluation: dict[str, Any] | None = None
    decoding: dict[str, Any] | None = None  # its defaults, chosen on val
    mmi_reranking: bool = False  # it ships a backward model: mmi_weight works with it
    device: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True, slots=True)
class Health:
    """``/health/live``: the process serves HTTP."""

    status: str


@dataclass(frozen=True, slots=True)
class Readiness:
    """``/health/ready``. ``models`` maps each model to ``ready``, ``loading``, ``failed`` or ``dead``."""

    ready: bool
    models: dict[str, str]
    message: str | None = None
