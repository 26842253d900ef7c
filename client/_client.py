"""``Client`` and ``AsyncClient``: twins with the same methods over a shared base.

The base holds everything that does no I/O: building request bodies, mapping replies and
errors, parsing Server-Sent Events, deciding whether and how long to wait before a retry.
The two subclasses only send, sleep and iterate, each in its own style, so the behaviour
cannot drift apart between them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack
from urllib.parse import quote

import httpx

from client._config import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_RETRY, DEFAULT_TIMEOUT, NO_RETRY, Retry
from client._exceptions import (
    APIError,
    ConnectError,
    Overloaded,
    ProtocolError,
    RateLimited,
    Seq2SeqError,
    Timeout,
    TransportError,
    Unavailable,
    api_error_class,
)
from client._models import (
    ChatDelta,
    ChatEvent,
    ChatResult,
    ChatTurn,
    DecodingOptions,
    Health,
    ModelInfo,
    Readiness,
    TranslateResult,
)

log = logging.getLogger("client")

T = TypeVar("T")
TimeoutTypes = float | httpx.Timeout | None
History = Sequence[ChatTurn | Mapping[str, str]]

REQUEST_ID_HEADER = "X-Request-ID"
_RETRYABLE = (Overloaded, RateLimited, Unavailable, ConnectError)


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get(REQUEST_ID_HEADER) or response.request.headers.get(REQUEST_ID_HEADER)


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """Options left as ``None`` are not sent, so the server's defaults apply."""
    return {k: v for k, v in body.items() if v is not None}


@dataclass
class _SSEParser:
    """Server-Sent Events framing: ``event:`` and ``data:`` lines up to a blank line make one message."""

    event: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str] | None:
        """The ``(event, data)`` that ``line`` completes, if any."""
        if not line:
            message = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return message
        if line.startswith(":"):  # comment / keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


class _BaseClient:
    """Configuration and every decision that involves no I/O."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str] | None, retry: Retry, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._headers = dict(headers or {})
        key = os.environ.get(API_KEY_ENV) if api_key is None else api_key
        if key:  # never in a repr or a log line: httpx keeps it among the default headers
            self._headers["Authorization"] = f"Bearer {key}"

    # -- requests -------------------------------------------------------------------------------
    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, method: str, path: str, body: Any, request_id: str | None
    ) -> httpx.Request:
        # One id per call, kept across its retries, so the server's log lines of all attempts match.
        headers = {REQUEST_ID_HEADER: request_id or uuid.uuid4().hex}
        return http.build_request(method, path, json=body, headers=headers)

    @staticmethod
    def _translate_body(
        text: str | Sequence[str],
        model: str | None,
        source_lang: str | None,
        target_lang: str | None,
        options: DecodingOptions,
    ) -> dict[str, Any]:
        texts: dict[str, Any] = {"text": text} if isinstance(text, str) else {"texts": list(text)}
        return _drop_none({**texts, "model": model, "source_lang": source_lang, "target_lang": target_lang, **options})

    @staticmethod
    def _chat_body(
        message: str,
        history: History | None,
        model: str | None,
        language: str | None,
        options: DecodingOptions,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        turns = [{"role": t.role, "content": t.content} if isinstance(t, ChatTurn) else dict(t) for t in history or ()]
        return _drop_none(
            {
                "message": message,
                "history": turns or None,
                "model": model,
                "language": language,
                **options,
                "stream": stream or None,
            }
        )

    # -- replies --------------------------------------------------------------------------------
    @staticmethod
    def _parse(response: httpx.Response, build: Callable[[Any], T]) -> T:
        try:
            return build(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(
                f"unexpected reply to {response.request.method} {response.request.url.path}: {exc!r}",
                status=response.status_code,
                request_id=_request_id(response),
            ) from exc

    @staticmethod
    def _error_from_body(
        body: Any,
        *,
        status: int | None,
        request_id: str | None,
        retry_after: float | None = None,
        fallback_message: str = "",
    ) -> APIError:
        """The exception for an error body ``{"error": {"code", "message", "details"}}`` (or for a reply lacking one)."""
        code: str | None = None
        message, details = fallback_message, None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code, message, details = error.get("code"), error.get("message", message), error.get("details")
        cls = api_error_class(code, status)
        if code is None and cls is APIError and status is not None:
            code = f"http_{status}"
        return cls(
            message,
            status=status,
            code=code,
            request_id=request_id,
            details=details,
            retry_after=retry_after,
        )

    def _api_error(self, response: httpx.Response) -> APIError:
        try:
            body = response.json()
        except ValueError:  # not JSON: a proxy's error page, say
            body = None
        return self._error_from_body(
            body,
            status=response.status_code,
            request_id=_request_id(response),
            retry_after=_parse_retry_after(response.headers.get("Retry-After")),
            fallback_message=response.text[:200] or response.reason_phrase,
        )

    @staticmethod
    def _transport_error(exc: httpx.TransportError, request: httpx.Request) -> TransportError:
        # A connect timeout means the request never reached the server: a connection failure, retried.
        # Other timeouts mean the server may be working on it: not retried.
        cls = (
            Timeout
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)
            else ConnectError
        )
        error = cls(
            f"{request.method} {request.url}: {type(exc).__name__}: {exc}",
            request_id=request.headers.get(REQUEST_ID_HEADER),
        )
        error.__cause__ = exc
        return error

    def _chat_event(self, event: str, data: str, request_id: str | None) -> ChatEvent | None:
        """One SSE message of /chat as a delta or the final result; ``error`` events raise."""
        if event not in ("token", "done", "error"):
            return None  # an event type this client does not know: newer servers may add some
        try:
            payload = json.loads(data)
            if event == "token":
                return ChatDelta(payload["text"])
            if event == "done":
                return ChatResult.from_json(payload, request_id)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed {event!r} event: {data[:200]!r}", request_id=request_id) from exc
        raise self._error_from_body(payload, status=None, request_id=request_id, fallback_message=data[:200])

    # -- retries --------------------------------------------------------------------------------
    @staticmethod
    def _retry_delay(policy: Retry, attempt: int, error: Seq2SeqError, request: httpx.Request) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up and raise ``error``."""
        if attempt >= policy.max_attempts or not isinstance(error, _RETRYABLE):
            return None
        delay = policy.delay(attempt, getattr(error, "retry_after", None))
        log.info(
            "%s %s failed (%s, attempt %d/%d, request_id=%s); retrying in %.2fs",
            request.method,
            request.url.path,
            error.code,
            attempt,
            policy.max_attempts,
            error.request_id,
            delay,
        )
        return delay


class ChatStream:
    """A streamed chat reply: iterate for ``ChatDelta`` events, then the final ``ChatResult``.

    The request is sent on first iteration. Use it as a context manager (or call
    :meth:`close`) so that leaving early closes the connection, which makes the server
    drop the generation instead of finishing it for nobody.
    """

    def __init__(self, events: Generator[ChatEvent, None, None]) -> None:
        self._events = events
        self.result: ChatResult | None = None  # set once the stream has finished

    def __iter__(self) -> Iterator[ChatEvent]:
        for event in self._events:
            if isinstance(event, ChatResult):
                self.result = event
            yield event

    def text_deltas(self) -> Iterator[str]:
        """Only the text, in pieces; the final result is then in :attr:`result`. A beam-searched
        reply comes as one piece, at the end: the server streams no tokens of a beam search,
        whose best reply is only known once it is over."""
        streamed = False
        for event in self:
            if isinstance(event, ChatDelta):
                streamed = True
                yield event.text
        if not streamed and self.result is not None and self.result.reply:
            yield self.result.reply

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncChatStream:
    """The async twin of :class:`ChatStream`: ``async for`` events, ``text_deltas()``, ``aclose()``."""

    def __init__(self, events: AsyncGenerator[ChatEvent, None, None]) -> None:
        self._events = events
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        async for event in self._events:
            if isinstance(event, ChatResult):
                self.result = event
            yield event

    async def text_deltas(self) -> AsyncIterator[str]:
        streamed = False
        async for event in self:
            if isinstance(event, ChatDelta):
                streamed = True
                yield event.text
        if not streamed and self.result is not None and self.result.reply:
            yield self.result.reply

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Client(_BaseClient):
    """Blocking client of the seq2seq-serve HTTP API.

    ``timeout`` is the HTTP timeout (seconds or an ``httpx.Timeout``); the server-side
    deadline of one request is the ``timeout`` decoding option. ``api_key`` is sent as
    ``Authorization: Bearer``; without it the client takes ``$SEQ2SEQ_API_KEY``, if set (``""``:
    send none). ``transport`` replaces the network, e.g. with ``httpx.MockTransport`` in tests;
    ``sleep`` is what waits between retries, injectable so tests need not wait.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        retry: Retry = DEFAULT_RETRY,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, headers=headers, retry=retry, api_key=api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self._headers, transport=transport)
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        request_id: str | None = None,
        retry: Retry | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries; a successful response, else the last error raised."""
        request = self._build_request(self._http, method, path, body, request_id)
        policy = retry or self.retry
        attempt = 1
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error: Seq2SeqError = self._transport_error(exc, request)
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                error = self._api_error(response)
            delay = self._retry_delay(policy, attempt, error, request)
            if delay is None:
                raise error
            self._sleep(delay)
            attempt += 1

    def translate(
        self,
        text: str | Sequence[str],
        *,
        model: str | None = None,
        source_lang: str | None = None,
        target_lang: str | None = None,
        request_id: str | None = None,
        retry: Retry | None = None,
        **options: Unpack[DecodingOptions],
    ) -> TranslateResult:
        """Translate one text, or a list of texts in one batch (``translations`` follows their order).
        ``retry`` replaces the client's retry policy for this call."""
        body = self._translate_body(text, model, source_lang, target_lang, options)
        response = self._send("POST", "/translate", body=body, request_id=request_id, retry=retry)
        return self._parse(response, lambda data: TranslateResult.from_json(data, _request_id(response)))

    def chat(
        self,
        message: str,
        *,
        history: History | None = None,
        model: str | None = None,
        language: str | None = None,
        request_id: str | None = None,
        **options: Unpack[DecodingOptions],
    ) -> ChatResult:
        """The whole reply to ``message``; ``history`` holds earlier turns, oldest first."""
        body = self._chat_body(message, history, model, language, options, stream=False)
        response = self._send("POST", "/chat", body=body, request_id=request_id)
        return self._parse(response, lambda data: ChatResult.from_json(data, _request_id(response)))

    def chat_stream(
        self,
        message: str,
        *,
        history: History | None = None,
        model: str | None = None,
        language: str | None = None,
        request_id: str | None = None,
        **options: Unpack[DecodingOptions],
    ) -> ChatStream:
        """The reply to ``message`` token by token. Errors before the stream starts are retried like
        any request; an ``error`` event mid-stream raises the matching :class:`APIError`."""
        body = self._chat_body(message, history, model, language, options, stream=True)
        return ChatStream(self._chat_events(body, request_id))

    def _chat_events(self, body: dict[str, Any], request_id: str | None) -> Generator[ChatEvent, None, None]:
        response = self._send("POST", "/chat", body=body, request_id=request_id, stream=True)
        rid = _request_id(response)
        parser = _SSEParser()
        try:
            for line in response.iter_lines():
                message = parser.feed(line)
                event = self._chat_event(*message, rid) if message else None
                if event is not None:
                    yield event
                    if isinstance(event, ChatResult):
                        return
        except httpx.TransportError as exc:
            raise self._transport_error(exc, response.request) from exc
        finally:
            response.close()
        raise ProtocolError("the chat stream ended without a 'done' event", request_id=rid)

    def models(self) -> list[ModelInfo]:
        """Every model the server knows, with status, versions, languages and evaluation."""
        response = self._send("GET", "/models")
        return self._parse(response, lambda data: [ModelInfo.from_json(m) for m in data["models"]])

    def model(self, name: str) -> ModelInfo:
        """One model; :class:`ModelNotFound` if the server does not serve it."""
        response = self._send("GET", f"/models/{quote(name, safe='')}")
        return self._parse(response, ModelInfo.from_json)

    def health(self) -> Health:
        """Liveness; not retried, since a probe should report the state now."""
        response = self._send("GET", "/health/live", retry=NO_RETRY)
        return self._parse(response, lambda data: Health(data["status"]))

    def ready(self) -> Readiness:
        """Readiness; a 503 (loading, draining, dead worker) is reported as ``ready=False``, not raised."""
        try:
            response = self._send("GET", "/health/ready", retry=NO_RETRY)
        except Unavailable as exc:
            return Readiness(ready=False, models=exc.details.get("models", {}), message=exc.message)
        return self._parse(response, lambda data: Readiness(ready=True, models=data.get("models", {})))


class AsyncClient(_BaseClient):
    """The asyncio twin of :class:`Client`: same arguments and methods, awaited.

    ``chat_stream`` returns an :class:`AsyncChatStream` to use with ``async for``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        retry: Retry = DEFAULT_RETRY,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, headers=headers, retry=retry, api_key=api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=self._headers, transport=transport
        )
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        request_id: str | None = None,
        retry: Retry | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        request = self._build_request(self._http, method, path, body, request_id)
        policy = retry or self.retry
        attempt = 1
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error: Seq2SeqError = self._transport_error(exc, request)
            else:
                if response.is_success:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                error = self._api_error(response)
            delay = self._retry_delay(policy, attempt, error, request)
            if delay is None:
                raise error
            await self._sleep(delay)
            attempt += 1

    async def translate(
        self,
        text: str | Sequence[str],
        *,
        model: str | None = None,
        source_lang: str | None = None,
        target_lang: str | None = None,
        request_id: str | None = None,
        retry: Retry | None = None,
        **options: Unpack[DecodingOptions],
    ) -> TranslateResult:
        body = self._translate_body(text, model, source_lang, target_lang, options)
        response = await self._send("POST", "/translate", body=body, request_id=request_id, retry=retry)
        return self._parse(response, lambda data: TranslateResult.from_json(data, _request_id(response)))

    async def chat(
        self,
        message: str,
        *,
        history: History | None = None,
        model: str | None = None,
        language: str | None = None,
        request_id: str | None = None,
        **options: Unpack[DecodingOptions],
    ) -> ChatResult:
        body = self._chat_body(message, history, model, language, options, stream=False)
        response = await self._send("POST", "/chat", body=body, request_id=request_id)
        return self._parse(response, lambda data: ChatResult.from_json(data, _request_id(response)))

    def chat_stream(
        self,
        message: str,
        *,
        history: History | None = None,
        model: str | None = None,
        language: str | None = None,
        request_id: str | None = None,
        **options: Unpack[DecodingOptions],
    ) -> AsyncChatStream:
        body = self._chat_body(message, history, model, language, options, stream=True)
        return AsyncChatStream(self._chat_events(body, request_id))

    async def _chat_events(self, body: dict[str, Any], request_id: str | None) -> AsyncGenerator[ChatEvent, None, None]:
        response = await self._send("POST", "/chat", body=body, request_id=request_id, stream=True)
        rid = _request_id(response)
        parser = _SSEParser()
        try:
            async for line in response.aiter_lines():
                message = parser.feed(line)
                event = self._chat_event(*message, rid) if message else None
                if event is not None:
                    yield event
                    if isinstance(event, ChatResult):
                        return
        except httpx.TransportError as exc:
            raise self._transport_error(exc, response.request) from exc
        finally:
            await response.aclose()
        raise ProtocolError("the chat stream ended without a 'done' event", request_id=rid)

    async def models(self) -> list[ModelInfo]:
        response = await self._send("GET", "/models")
        return self._parse(response, lambda data: [ModelInfo.from_json(m) for m in data["models"]])

    async def model(self, name: str) -> ModelInfo:
        response = await self._send("GET", f"/models/{quote(name, safe='')}")
        return self._parse(response, ModelInfo.from_json)

    async def health(self) -> Health:
        response = await self._send("GET", "/health/live", retry=NO_RETRY)
        return self._parse(response, lambda data: Health(data["status"]))

    async def ready(self) -> Readiness:
        try:
            response = await self._send("GET", "/health/ready", retry=NO_RETRY)
        except Unavailable as exc:
            return Readiness(ready=False, models=exc.details.get("models", {}), message=exc.message)
        return self._parse(response, lambda data: Readiness(ready=True, models=data.get("models", {})))
