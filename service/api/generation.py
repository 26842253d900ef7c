"""What /translate and /chat share: input checks, decoding parameters, submit and wait.

Handlers call :func:`prepare` (tokenize and check the inputs, build the requests),
:func:`submit` (queue them on the model's engine) and :func:`wait_all` (await the
results, aborting the requests if the client goes away or the deadline passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from fastapi import Request

from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, Hypothesis
from seq2seq.tokenizer import Tokenizer
from service.engine.handle import EngineHandle
from service.engine.streams import RequestStream
from service.errors import ClientClosedRequest, DeadlineExceeded, EngineUnavailable, InvalidRequest
from service.registry import ModelEntry, Registry
from service.schemas import DecodingOptions
from service.settings import Settings

DEADLINE_MARGIN_S = 2.0


@dataclass
class Prepared:
    entry: ModelEntry
    engine: EngineHandle
    requests: list[GenerationRequest]
    timeout_s: float

    @property
    def input_tokens(self) -> int:
        return sum(len(r.src_ids) for r in self.requests)

    @property
    def wait_s(self) -> float:
        """How long a handler waits for results: the engine enforces the deadline itself and
        reports it; this margin later is the safety net if it cannot."""
        return self.timeout_s + DEADLINE_MARGIN_S


def ready_engine(entry: ModelEntry, registry: Registry) -> EngineHandle:
    if registry.draining:
        raise EngineUnavailable("the server is shutting down")
    if entry.status == "ready" and entry.engine is not None and not entry.engine.alive:
        raise EngineUnavailable(f"model {entry.name} is unavailable: its engine died ({entry.engine.dead!r})")
    if not entry.ready or entry.engine is None:
        reason = f": {entry.error}" if entry.error else ""
        raise EngineUnavailable(f"model {entry.name} is {entry.status}{reason}", retry_after_s=5)
    return entry.engine


def check_text(text: str, field: str, settings: Settings) -> str:
    if not text.strip():
        raise InvalidRequest(f"{field} is empty: send some text")
    if len(text) > settings.max_text_chars:
        raise InvalidRequest(f"{field} has {len(text)} characters; the limit is {settings.max_text_chars}")
    return text.strip()


def decode_params(options: DecodingOptions, src_len: int, settings: Settings) -> DecodeParams:
    if options.beam_size > settings.max_beam_size:
        raise InvalidRequest(f"beam_size {options.beam_size} is above this server's limit of {settings.max_beam_size}")
    if options.max_length is not None and options.max_length > settings.max_output_tokens:
        raise InvalidRequest(f"max_length {options.max_length} is above the limit of {settings.max_output_tokens}")
    max_length = options.max_length or min(2 * src_len + 10, settings.max_output_tokens)
    try:
        return DecodeParams(
            max_length=max_length,
            min_length=min(options.min_length, max_length),
            beam_size=options.beam_size,
            n_best=options.n_best,
            length_penalty=options.length_penalty,
            sample=options.sample,
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            seed=options.seed,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def prepare(
    entry: ModelEntry,
    registry: Registry,
    texts: list[str],
    fields: list[str],
    options: DecodingOptions,
    settings: Settings,
) -> Prepared:
    """Check and tokenize ``texts`` for ``entry``'s model; nothing is queued yet."""
    engine = ready_engine(entry, registry)
    tokenizer: Tokenizer = engine.info.source_tokenizer
    requests = []
    for text, field in zip(texts, fields, strict=True):
        ids = tokenizer.encode(check_text(text, field, settings))
        if len(ids) > settings.max_input_tokens:
            raise InvalidRequest(
                f"{field} is {len(ids)} tokens long; the limit is {settings.max_input_tokens}: split it into sentences"
            )
        if not ids:
            raise InvalidRequest(f"{field} has no translatable content")
        requests.append(GenerationRequest(uuid.uuid4().hex, ids, decode_params(options, len(ids), settings)))
    rows = max(r.params.rows for r in requests)
    if rows > settings.max_batch_rows:
        raise InvalidRequest(f"beam_size {rows} exceeds max_batch_rows {settings.max_batch_rows}")
    return Prepared(entry, engine, requests, options.timeout or settings.request_timeout_s)


def submit(prepared: Prepared, tokens: bool = False) -> list[RequestStream]:
    """Hand the requests to their engine; ``tokens``: the streams also get every token as it is decoded."""
    streams = [RequestStream(r.id, tokens=tokens) for r in prepared.requests]
    prepared.engine.submit(prepared.requests, streams, prepared.timeout_s)
    return streams


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects. The body has been read, so the server's next ASGI
    message for this request is the disconnect: waiting on it costs nothing, unlike polling
    ``is_disconnected()`` for every open request several times a second."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_all(prepared: Prepared, streams: list[RequestStream], request: Request) -> list[list[Hypothesis]]:
    """Results of every stream, in order. A client that disconnects, or a deadline that passes,
    aborts the requests so their rows leave the batch at the next step."""
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
        watcher.cancel()
        if not results.done():
            prepared.engine.abort({s.request_id for s in streams})
            results.cancel()
            results.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no asyncio warning
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
