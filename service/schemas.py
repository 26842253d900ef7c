"""Request and response bodies of the HTTP API.

Requests forbid unknown fields, so a misspelt option is a 422 that names it rather than
a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, create_model, model_validator

from seq2seq.decoding.params import JSON_NUMBER, DecodeParams, LengthPenalty, MaxLength, MMIWeight, NoRepeatNgram
from seq2seq.optimize import Quantization


def _valid_unicode(value: str) -> str:
    """JSON can carry lone surrogates (``"\\ud800"``), which are not text: nothing can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {exc.start}") from None
    return value


# The characters that SentencePiece's nmt_nfkc normalisation (every tokenizer here) turns into
# nothing or into a space: a text of only these tokenizes to no piece at all.
SILENT_CHARACTERS = (
    "\x01-\x20\x7f\x8f\x9f\xa0\u061c\u1680\u2000-\u200c\u200e\u200f\u2028\u2029\u202f\u205f\u2581\u3000\ufeff\ufffd"
)
_SOUNDING = re.compile(f"[^{SILENT_CHARACTERS}]")


def _not_blank(value: str) -> str:
    if not _SOUNDING.search(value):
        raise ValueError("is empty: send some text")
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]  # every string a client sends
InputText = Annotated[Text, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": _SOUNDING.pattern})]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _decoding_fields() -> dict[str, Any]:
    """:class:`~seq2seq.decoding.DecodeParams`' own fields (their types carry the ranges), as the
    request's; ``max_length`` is optional here (its default follows the source), and a request
    also has a deadline."""
    hints = get_type_hints(DecodeParams, include_extras=True)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(DecodeParams)}
    fields["max_length"] = (MaxLength | None, Field(None, description="generated tokens; default: 2 x source + 10"))
    fields["no_repeat_ngram_size"] = (
        NoRepeatNgram | None,
        Field(None, description="never repeat an n-gram of this size; 0 = off; default: the model's (chosen on val)"),
    )
    fields["length_penalty"] = (
        LengthPenalty | None,
        Field(
            None,
            description="GNMT alpha that ranks the beams; default: the model's (chosen on val with its beam size), "
            "else 1.0",
        ),
    )
    fields["mmi_weight"] = (
        MMIWeight | None,
        Field(
            None,
            description="rerank the beam's hypotheses with the model's backward model p(input | output) by this "
            "weight (models that ship one: mmi_reranking in /models); 0 = off; default: the model's (chosen on val) "
            "with beam search, else off",
        ),
    )
    deadline = Annotated[float, Field(gt=0, le=600), JSON_NUMBER] | None
    fields["timeout"] = (deadline, Field(None, description="deadline in seconds for queue + generation"))
    return fields


DecodingOptions = create_model(
    "DecodingOptions",
    __base__=_Request,
    __doc__="Decoding options shared by /translate and /chat. Greedy unless beam_size > 1 or sample is true.\n\n"
    "Their combinations, and this server's limits, are checked when DecodeParams is built from them.",
    **_decoding_fields(),
)


class TranslateRequest(DecodingOptions):
    text: InputText | None = Field(None, description="one text to translate")
    texts: list[InputText] | None = Field(None, min_length=1, description="several texts, translated in one batch")
    model: Text | None = Field(None, description="model name; default: chosen by source_lang/target_lang")
    source_lang: Text | None = Field(None, examples=["de"])
    target_lang: Text | None = Field(None, examples=["en"])
    return_attention: StrictBool = Field(
        False,
        description="return each translation's (and alternative's) attention matrix: the decoder's attention "
        "weights over the source pieces at each generated piece; attention models only",
    )

    @model_validator(mode="after")
    def _one_of(self) -> TranslateRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def inputs(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "oneOf": [  # exactly one of text and texts, as _one_of checks
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["texts"], "properties": {"texts": {"type": "array"}}},
            ],
            "examples": [
                {"text": "Ein Mann fährt Fahrrad auf einer Straße.", "source_lang": "de", "target_lang": "en"},
                {
                    "texts": ["Zwei Hunde spielen im Schnee.", "Ein Kind lacht."],
                    "model": "translate-de-en",
                    "beam_size": 5,
                    "n_best": 2,
                },
            ],
        },
    )


class Attention(BaseModel):
    """Where the decoder looked: Luong "general" attention weights, one row per target piece."""

    source: list[str] = Field(description="the source pieces, as the model's tokenizer cut the text")
    target: list[str] = Field(description="the generated pieces (end-of-sequence excluded)")
    weights: list[list[float]] = Field(
        description="target x source: row i is the attention over the source pieces at the step that produced "
        "target piece i; each row sums to 1 (up to the rounding to 3 decimals)"
    )


class Alternative(BaseModel):
    text: str
    score: float = Field(description="sum of token log-probabilities")
    attention: Attention | None = Field(None, description="with return_attention")


class Translation(Alternative):
    tokens: int = Field(description="generated tokens")
    finish_reason: Literal["eos", "length"]
    alternatives: list[Alternative] | None = Field(None, description="n_best hypotheses, best first (n_best > 1)")


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class TranslateResponse(BaseModel):
    model: str
    version: str
    source_lang: str | None = Field(description="the model's languages: as asked, or the source identified")
    target_lang: str | None
    translations: list[Translation]
    usage: Usage


class ChatTurn(_Request):
    role: Literal["user", "assistant"]
    content: Text = Field(max_length=10_000)


class ChatRequest(DecodingOptions):
    message: InputText
    history: list[ChatTurn] = Field(default_factory=list, max_length=100)
    model: Text | None = None
    language: Text | None = Field(None, examples=["en"])
    stream: StrictBool = Field(False, description="Server-Sent Events: token deltas, then a final 'done' event")

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"message": "Hello, how are you?", "language": "en"},
                {"message": "오늘 너무 피곤해", "language": "ko", "stream": True},
            ]
        },
    )


class ChatResponse(BaseModel):
    model: str
    version: str
    language: str | None = Field(description="the model's language: as asked, or identified from the message")
    reply: str
    score: float
    tokens: int
    finish_reason: Literal["eos", "length"]


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    versions: list[str]
    task: str
    source_lang: str | None = None
    target_lang: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    status: Literal["loading", "ready", "failed", "dead"] = Field(
        description="loading; ready; failed: could not be loaded; dead: its engine died (restarted if enabled)"
    )
    error: str | None = None
    default_for: list[str] = Field(default_factory=list)
    description: str | None = None
    evaluation: dict[str, Any] | None = None
    decoding: dict[str, Any] | None = Field(
        None,
        description="its decoding settings, chosen on val: length_penalty, no_repeat_ngram_size and mmi_weight are "
        "the defaults of requests to it; beam_size is the beam they were chosen with (requests are greedy unless "
        "they set beam_size)",
    )
    mmi_reranking: bool = Field(False, description="it ships a backward model: requests may set mmi_weight")
    device: str | None = None
    quantization: Quantization | None = None  # of the loaded weights; None while not loaded
    dtype: str | None = None  # floating-point type of weights and activations; None while not loaded


class ModelList(BaseModel):
    models: list[ModelInfo]


VersionStatus = Literal["available", "loading", "ready", "draining", "failed", "dead"]


class AdminVersion(BaseModel):
    version: str
    on_disk: bool = Field(description="in the model store now")
    status: VersionStatus = Field(
        description="available: on disk, not in memory; loading: loading beside the active version; ready: "
        "serving; draining: replaced or unloaded, finishing its requests; failed: its latest load failed "
        "(see error); dead: its engine died"
    )
    active: bool = Field(description="the version new requests go to")
    error: str | None = None


class AdminModel(BaseModel):
    name: str
    active_version: str | None = Field(description="the version new requests go to; none when not loaded")
    status: VersionStatus | Literal["not_loaded"]
    versions: list[AdminVersion]


class AdminModelList(BaseModel):
    models: list[AdminModel]
    defaults: dict[str, str] = Field(description="the model serving each translate:<src>-<tgt> and chat:<lang>")


class LoadRequest(_Request):
    version: Text | None = Field(None, description="default: the newest version in the store", examples=["2"])


class ReloadResult(BaseModel):
    model: str
    version: str
    outcome: Literal["loaded", "failed"]
    error: str | None = None


class ReloadResponse(BaseModel):
    results: list[ReloadResult] = Field(description="one per model that had a newer version (or was new) in the store")
    api_keys_reloaded: bool = Field(description="whether an API keys file was read again")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
