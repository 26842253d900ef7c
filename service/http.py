"""Limits on what one HTTP client may send and how long it may take, below the ASGI app.

uvicorn's httptools protocol bounds neither the request head (a 1 MB header, or 10,000 of
them, are taken in) nor the time a client takes to send it: a client that opens connections
and trickles bytes holds them forever (slowloris). :func:`limited_protocol` returns that
protocol with the limits of the settings:

- the head: at most ``max_headers`` header fields of ``max_header_bytes`` in all, else 431;
- time: the head must arrive within ``header_timeout_s`` of the connection (or of the first
  byte of the next request on a kept-alive connection), the body within ``body_timeout_s``
  after the head, else 408 and the connection closes. Idle kept-alive connections close
  after uvicorn's ``timeout_keep_alive`` (``--keep-alive-s``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float


LINGER_S = 2.0  # after an error answer: how long the rest of a refused request is read and dropped


class _Refused(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: HttpLimits  # set on the subclass that limited_protocol makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_fields = 0
        self._refused: _Refused | None = None
        self._lingering = False

    # -- time -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)  # a connection must bring a request head

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self.cycle is not None and self.cycle.response_started:
            return  # the app answers already: what is left of the body no longer matters
        self._send_error(HTTPStatus.REQUEST_TIMEOUT)

    # -- the head ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_fields = 0
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), 1)
        super().on_header(name, value)

    def _count(self, size: int, fields: int) -> None:
        self._head_bytes += size
        self._head_fields += fields
        if self._head_bytes > self.limits.max_header_bytes or self._head_fields > self.limits.max_headers:
            # Raised inside the parser's callback: uvicorn answers a parser error, as 431 here.
            self._refused = _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            raise self._refused

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refused is not None:
            self._send_error(self._refused.status)
        else:
            super().send_400_response(msg)

    def _send_error(self, status: HTTPStatus) -> None:
        """Answer ``status`` and close. Closing a socket with unread input resets the connection,
        which can destroy the answer on its way; so the input is read and dropped for a moment
        (a lingering close, as nginx does), and the connection closes once the client has it."""
        if self.transport.is_closing() or self._lingering:
            return
        body = f'{{"error": {{"code": "http_error", "message": "{status.phrase}"}}}}'.encode()
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._lingering = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:  # after an error answer, what else comes is dropped
            super().data_received(data)


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (uvicorn builds one per connection)."""
    return type("HttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
