"""ASGI middleware: request ids, the access log (one line per request), HTTP metrics, body limit.

Written as plain ASGI (not ``BaseHTTPMiddleware``) so streamed responses pass through
untouched and disconnects still reach the handlers.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine.request import Timings
from service.errors import InternalError, PayloadTooLarge, ServiceError
from service.metrics import Metrics

log = logging.getLogger("service.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._reply_too_large(send, request_id, int(length))
            self._record(scope, 413, started, request_id, PayloadTooLarge.code)
            return

        received = 0
        too_large = replied = response_started = False
        error_code: str | None = None  # of an error reply, read from its body

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, replied, response_started, error_code
            if too_large:  # whatever the app made of the aborted body read, the answer is 413
                if not replied:
                    replied, status = True, 413
                    await self._reply_too_large(send, request_id, received)
                return
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-content-type-options", b"nosniff"),  # a JSON error is never read as a page
                    *_model_headers(state),
                ]
            elif message["type"] == "http.response.body" and status >= 400 and error_code is None:
                error_code = _error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if not replied:
                status = 413
                await self._reply_too_large(send, request_id, received)
        except Exception as exc:
            # Rendered here rather than by an app-level handler, which would run outside this
            # middleware and answer without X-Request-ID (and outside CORS).
            log.exception("unhandled error, request %s", request_id)
            status = 500
            if not response_started:
                error = InternalError(f"internal error: {type(exc).__name__}")
                await self._reply(send, request_id, error)
        finally:
            if too_large:
                error_code = PayloadTooLarge.code
            elif status == 500 and error_code is None:
                error_code = InternalError.code
            self._record(scope, status, started, request_id, error_code)

    async def _reply_too_large(self, send: Send, request_id: str, size: int) -> None:
        error = PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {self.max_body_bytes}")
        await self._reply(send, request_id, error)

    @staticmethod
    async def _reply(send: Send, request_id: str, error: ServiceError) -> None:
        body = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, started: float, request_id: str, error_code: str | None) -> None:
        latency = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", None)
        if route is None:  # files of a mounted app (the web page's /static) carry no route object
            route = scope.get("root_path") or "unmatched"
        state = scope.get("state", {})
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(latency)
        if status >= 400 and error_code is not None:
            self.metrics.errors.labels(route, error_code).inc()
        key = state.get("api_key")  # the API key's name (service/auth.py), never the key
        if key is not None:
            self.metrics.key_requests.labels(key, str(status)).inc()
        fields = {
            "request_id": request_id,
            "method": scope.get("method"),
            "route": route,
            "key": key,
            "model": state.get("model"),
            "version": state.get("model_version"),
            "status": status,
            **_engine_times(state.get("timings")),
            "total_ms": _ms(latency),
            "input_tokens": state.get("input_tokens"),
            "output_tokens": state.get("generated_tokens"),
        }
        log.info(_access_line(fields), extra=fields)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _engine_times(timings: list[Timings] | None) -> dict[str, float | None]:
    """Queue, encode and generation time of a request that the engine answered (``None`` for
    the others): the longest among its texts, which is what the reply waited for."""
    if not timings:
        return {"queue_ms": None, "encode_ms": None, "generation_ms": None}
    return {
        "queue_ms": _ms(max(t.queue_s for t in timings)),
        "encode_ms": _ms(max(t.encode_s for t in timings)),
        "generation_ms": _ms(max(t.generation_s for t in timings)),
    }


def _access_line(fields: dict[str, Any]) -> str:
    """The access line as text: ``POST /translate 200 request_id=... model=...``, without unknown values.
    In JSON logs the same fields are the line's keys."""
    head = ("method", "route", "status")
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in head and v is not None)
    return f"{fields['method']} {fields['route']} {fields['status']} {rest}"


def _error_code(body: bytes) -> str:
    """The ``error.code`` of an error reply's body (every JSON error has one); ``http_error`` otherwise."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "http_error"
    return code if isinstance(code, str) else "http_error"


def _model_headers(state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Which model and version answered: set by the handler once its request has an engine."""
    if state.get("model_version") is None:
        return []
    return [(b"x-model", state["model"].encode()), (b"x-model-version", state["model_version"].encode())]


class _BodyTooLarge(Exception):
    pass
