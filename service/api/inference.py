"""What /translate and /chat share: input checks, decoding parameters, submit and wait.

Handlers call :func:`prepare` (tokenize and check the inputs, build the requests),
:func:`submit` (queue them on the model's engine) and :func:`wait_all` (await the
results, aborting the requests if the client goes away or the deadline passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request as HttpRequest
from pydantic import ValidationError

from seq2seq.decoding import DecodeParams, source_length_cap
from seq2seq.generation import Hypothesis
from seq2seq.tokenizer import end_sentence
from service.api.errors import describe_validation
from service.engine.client import EngineClient, RequestStream
from service.engine.request import Request
from service.errors import ClientClosedRequest, DeadlineExceeded, InvalidRequest
from service.registry import ModelEntry, Registry
from service.schemas import DecodingOptions
from service.settings import Settings
from service.tracing import record_engine_spans

DEADLINE_MARGIN_S = 2.0
_PASSED_AS_THEY_ARE = {f.name for f in dataclasses.fields(DecodeParams)} - {
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram_size",
    "mmi_weight",
}


@dataclass
class Prepared:
    entry: ModelEntry
    engine: EngineClient
    requests: list[Request]

    @property
    def version(self) -> str:
        """The version that answers: its engine's, which an admin swap never changes under a request."""
        return self.engine.info.version

    @property
    def timeout_s(self) -> float:
        return self.requests[0].timeout_s

    @property
    def input_tokens(self) -> int:
        return sum(len(r.src_ids) for r in self.requests)

    @property
    def wait_s(self) -> float:
        """How long a handler waits for results: the engine enforces the deadline itself and
        reports it; this margin later is the safety net if it cannot."""
        return self.timeout_s + DEADLINE_MARGIN_S


def check_attention(entry: ModelEntry) -> None:
    """Attention weights exist only in attention models: the others' decoders see the source
    through one fixed vector, and there is nothing to return."""
    architecture = (entry.manifest.get("model") or {}).get("architecture")
    if architecture != "attention":
        raise InvalidRequest(
            f"return_attention needs an attention model; {entry.name} is a {architecture} model, whose decoder "
            "sees the source only as one fixed vector",
            details={"architecture": architecture},
        )


def check_reranking(entry: ModelEntry, options: DecodingOptions) -> None:
    """``mmi_weight`` reranks with a backward model, which only some models ship."""
    if options.mmi_weight and not entry.mmi_reranking:
        raise InvalidRequest(
            f"mmi_weight needs a model that ships a backward model p(input | output); {entry.name} has none",
            details={"model": entry.name},
        )


def check_text(text: str, field: str, settings: Settings) -> str:
    if len(text) > settings.max_text_chars:
        raise InvalidRequest(f"{field} has {len(text)} characters; the limit is {settings.max_text_chars}")
    # Not str.strip(): the tokenizers drop outer whitespace themselves, and Python's whitespace
    # includes U+0085, which they keep (the schema accepts a text of it alone).
    return text


def decode_params(
    options: DecodingOptions, src_len: int, vocab_size: int, settings: Settings, model_decoding: dict[str, Any]
) -> DecodeParams:
    """The request's decoding parameters within this server's and this model's limits, and with the
    model's defaults (``model_decoding``: its manifest's, chosen on val) where the request has none;
    :class:`DecodeParams` checks everything else about them."""
    if options.top_k > vocab_size:
        raise InvalidRequest(f"top_k {options.top_k} is larger than the model's vocabulary of {vocab_size} pieces")
    if options.beam_size > settings.max_beam_size:
        raise InvalidRequest(f"beam_size {options.beam_size} is above this server's limit of {settings.max_beam_size}")
    for field in ("max_length", "min_length"):
        value = getattr(options, field)
        if value is not None and value > settings.max_output_tokens:
            raise InvalidRequest(f"{field} {value} is above the limit of {settings.max_output_tokens}")
    max_length = options.max_length or min(source_length_cap(src_len), settings.max_output_tokens)
    no_repeat, mmi, alpha = options.no_repeat_ngram_size, options.mmi_weight, options.length_penalty
    if mmi is None:  # the model's default reranks beams; greedy and sampled outputs have nothing to rerank
        mmi = model_decoding.get("mmi_weight", 0.0) if options.beam_size > 1 else 0.0
    try:
        return DecodeParams(
            max_length=max_length,
            no_repeat_ngram_size=no_repeat if no_repeat is not None else model_decoding.get("no_repeat_ngram_size", 0),
            length_penalty=alpha if alpha is not None else model_decoding.get("length_penalty", 1.0),
            mmi_weight=mmi,
            # a default max_length follows the source: min_length is capped by it, not refused
            min_length=options.min_length if options.max_length else min(options.min_length, max_length),
            **options.model_dump(include=_PASSED_AS_THEY_ARE),
        )
    except ValidationError as exc:
        raise InvalidRequest(describe_validation(list(exc.errors()))) from exc


def prepare(
    entry: ModelEntry,
    registry: Registry,
    texts: list[str],
    fields: list[str],
    options: DecodingOptions,
    settings: Settings,
    stream_tokens: bool = False,
    return_attention: bool = False,
    client: str = "",
) -> Prepared:
    """Check and tokenize ``texts`` for ``entry``'s model; nothing is queued yet.
    ``stream_tokens``: the requests' streams get every token as it is decoded;
    ``return_attention``: their hypotheses carry the attention weights (see :func:`check_attention`);
    ``client``: the name of the API key that sent them, by which the engine takes turns."""
    check_reranking(entry, options)
    engine = registry.engine(entry)
    tokenizer = engine.info.source_tokenizer
    timeout_s = options.timeout or settings.request_timeout_s
    end_mark = (entry.manifest.get("preprocessing") or {}).get("end_mark")
    model_decoding = entry.decoding
    requests = []
    for text, field in zip(texts, fields, strict=True):
        ids = tokenizer.encode(end_sentence(check_text(text, field, settings), end_mark))
        if len(ids) > settings.max_input_tokens:
            raise InvalidRequest(
                f"{field} is {len(ids)} tokens long; the limit is {settings.max_input_tokens}: split it into sentences"
            )
        if not ids:  # the schema's pattern knows nmt_nfkc; a model trained with other normalisation may differ
            raise InvalidRequest(f"{field} has no translatable content")
        vocab_size = engine.info.target_tokenizer.vocab_size
        params = decode_params(options, len(ids), vocab_size, settings, model_decoding)
        requests.append(Request(uuid.uuid4().hex, ids, params, timeout_s, stream_tokens, return_attention, client))
    return Prepared(entry, engine, requests)


def submit(prepared: Prepared) -> list[RequestStream]:
    """Hand the requests to their engine: a stream each."""
    return prepared.engine.submit(prepared.requests)


async def disconnected(request: HttpRequest) -> None:
    """Returns when the client disconnects. The body has been read, so the server's next ASGI
    message for this request is the disconnect: waiting on it costs nothing, unlike polling
    ``is_disconnected()`` for every open request several times a second."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def record(request: HttpRequest, prepared: Prepared, streams: list[RequestStream]) -> None:
    """The engine's part of the request, for the access log (``request.state``) and, with tracing
    on, as spans: its input tokens and the timings of the texts that the engine answered."""
    timings = [s.timings for s in streams]
    request.state.input_tokens = prepared.input_tokens
    request.state.timings = [t for t in timings if t is not None]
    tracer = request.app.state.tracer
    if tracer is not None:
        record_engine_spans(tracer, prepared.entry.name, prepared.version, prepared.requests, timings)


async def wait_all(prepared: Prepared, streams: list[RequestStream], request: HttpRequest) -> list[list[Hypothesis]]:
    """Results of every stream, in order. A client that disconnects, or a deadline that passes,
    aborts the requests so their rows leave the batch at the next step. The outcome is
    :func:`record`-ed either way."""
    results = asyncio.ensure_future(asyncio.gather(*(s.final() for s in streams)))
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({results, watcher}, timeout=prepared.wait_s, return_when="FIRST_COMPLETED")
        if results in done:
            return results.result()
        if watcher in done:
            raise ClientClosedRequest("the client disconnected; generation was cancelled")
        raise DeadlineExceeded(f"no result within {prepared.timeout_s:g}s")
    finally:  # also on cancellation of the handler itself
        record(request, prepared, streams)
        watcher.cancel()
        if not results.done():
            prepared.engine.abort({s.request_id for s in streams})
            results.cancel()
            results.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no asyncio warning
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
