"""POST /chat: a reply from a chat model, whole or streamed as Server-Sent Events.

Stream format (``"stream": true``)::

    event: token   data: {"text": "<new text>"}                  one per generated token
    event: done    data: {<ChatResponse>}                        the whole reply, last
    event: error   data: {"error": {"code": ..., "message": ...}} instead of done, on failure

Token deltas come from incremental detokenization, so they concatenate to the reply with
its spaces intact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from seq2seq.generation import Hypothesis
from seq2seq.tokenizer import IncrementalDetokenizer, Tokenizer
from service.api.errors import ERROR_RESPONSES
from service.api.inference import Prepared, disconnected, prepare, record, submit, wait_all
from service.auth import client_name
from service.deps import RegistryDep, SettingsDep
from service.engine.client import RequestStream
from service.engine.request import Output, RequestFailed
from service.errors import ClientClosedRequest, DeadlineExceeded
from service.schemas import ChatRequest, ChatResponse

router = APIRouter(tags=["chat"])


def source_text(body: ChatRequest, manifest: dict[str, Any]) -> str:
    """The model's input: the message, preceded by as many earlier turns as the model was trained with.

    The bundled chat models were trained on single question -> answer pairs
    (``chat.context_turns`` 0 or absent), so for them the history does not change the input.
    """
    turns = int((manifest.get("chat") or {}).get("context_turns", 0))
    context = [t.content for t in body.history[-turns:]] if turns else []
    return " ".join([*context, body.message])


def _response(prepared: Prepared, hyp: Hypothesis, tokenizer: Tokenizer) -> ChatResponse:
    return ChatResponse(
        model=prepared.entry.name,
        version=prepared.version,
        language=prepared.entry.manifest.get("target_lang"),
        reply=tokenizer.decode(hyp.tokens),
        score=hyp.score,
        tokens=len(hyp.tokens),
        finish_reason=hyp.finish_reason.value,
    )


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}, "description": "reply, or SSE stream"}},
)
async def chat(body: ChatRequest, request: Request, registry: RegistryDep, settings: SettingsDep):
    """Reply to ``message``. With ``stream: true`` the reply arrives token by token as SSE."""
    entry = registry.resolve("chat", body.model, None, body.language, body.message)
    request.state.model = entry.name
    source = [source_text(body, entry.manifest)]
    options = body.model_copy(update={"min_length": max(1, body.min_length)})  # a reply is never empty
    prepared = prepare(
        entry, registry, source, ["message"], options, settings, body.stream, client=client_name(request)
    )
    request.state.model_version = prepared.version
    streams = submit(prepared)
    tokenizer = prepared.engine.info.target_tokenizer
    if not body.stream:
        (hyps,) = await wait_all(prepared, streams, request)
        request.state.generated_tokens = len(hyps[0].tokens)
        return _response(prepared, hyps[0], tokenizer)
    # The status line waits for the first event, so a request refused before its first token
    # (queue full, deadline, engine gone) gets its own status (429, 504, 503), not 200 and an
    # error event: what clients and proxies retry by.
    stream = streams[0]
    deadline = asyncio.get_running_loop().time() + prepared.wait_s
    try:
        first = await _first_output(prepared, stream, deadline, request)
        if isinstance(first, RequestFailed):
            raise first.error
    except BaseException:
        if not stream.closed:  # client gone or deadline: free the rows
            prepared.engine.abort({stream.request_id})
        raise
    return StreamingResponse(
        _sse_events(prepared, stream, first, deadline, tokenizer, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _next_output(prepared: Prepared, stream: RequestStream, deadline: float) -> Output:
    """The stream's next output, or a deadline error once ``deadline`` (loop time) passes."""
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        return await asyncio.wait_for(stream.next(), timeout=timeout)
    except TimeoutError:
        return RequestFailed(stream.request_id, DeadlineExceeded(f"no result within {prepared.timeout_s:g}s"))


async def _first_output(prepared: Prepared, stream: RequestStream, deadline: float, request: Request) -> Output:
    """The first output; a client that disconnects before it raises :class:`ClientClosedRequest`."""
    event = asyncio.ensure_future(_next_output(prepared, stream, deadline))
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({event, watcher}, return_when="FIRST_COMPLETED")
        if event.done():
            return event.result()
        raise ClientClosedRequest("the client disconnected; generation was cancelled")
    finally:
        event.cancel()
        watcher.cancel()


async def _sse_events(
    prepared: Prepared, stream: RequestStream, first: Output, deadline: float, tokenizer: Tokenizer, request: Request
) -> AsyncIterator[str]:
    detok = IncrementalDetokenizer(tokenizer)
    output = first
    try:
        while True:
            if isinstance(output, RequestFailed):
                yield sse("error", output.error.body())
                return
            if output.token is not None:
                delta = detok.push(output.token)
                if delta:
                    yield sse("token", {"text": delta})
            if output.finished is not None:
                hyp = output.finished[0]
                request.state.generated_tokens = len(hyp.tokens)
                yield sse("done", _response(prepared, hyp, tokenizer).model_dump())
                return
            output = await _next_output(prepared, stream, deadline)
    finally:
        record(request, prepared, [stream])
        if not stream.closed:  # client gone or deadline: free the rows
            prepared.engine.abort({stream.request_id})
