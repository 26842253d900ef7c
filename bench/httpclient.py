"""A lean HTTP/1.1 client for the load generator: keep-alive JSON POSTs, read whole or streamed.

On the benchmark's 2-core machine the load generator shares the CPU with the server, so
its cost per request is part of what gets measured. httpx spent about 3 ms of CPU per
request there (0.8-0.9 of a core at concurrency 128), and the server's batches shrank
for lack of CPU. This client does only what the benchmark needs, on asyncio streams:
one request at a time per pooled connection, ``Content-Length`` or chunked bodies, and
a connection closed (never reused) when a request is cancelled or fails, which the
server sees as a client disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# What a request can fail with on the client side; the load generator records the class name.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,  # a malformed status line, header or chunk size
)


@dataclass(eq=False)  # identity, so that open connections can live in a set
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


@dataclass
class Response:
    """A response whose head has been read; the body is read with :meth:`read` or :meth:`chunks`."""

    status: int
    headers: dict[str, str]
    _reader: asyncio.StreamReader
    complete: bool = field(default=False, init=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: one piece per HTTP chunk, or all of a ``Content-Length`` body."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await self._reader.readuntil(b"\r\n") != b"\r\n":  # optional trailers
                        pass
                    break
                data = await self._reader.readexactly(size + 2)
                yield data[:-2]
        else:
            length = int(self.headers.get("content-length", "0"))
            if length:
                yield await self._reader.readexactly(length)
        self.complete = True

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[str]:
        """The body line by line as it streams in (server-sent events)."""
        pending = b""
        async for piece in self.chunks():
            pending += piece
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode()
        if pending:
            yield pending.decode()


class HttpClient:
    """Pooled keep-alive connections to one ``http://host:port`` server.

    Idle connections older than ``idle_expiry_s`` are dropped rather than reused: uvicorn
    closes idle connections after 5 s, and a request sent on a connection the server is
    closing would fail for reasons that have nothing to do with the server under test.
    """

    def __init__(self, base_url: str, idle_expiry_s: float = 2.0) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.idle_expiry_s = idle_expiry_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    @contextlib.asynccontextmanager
    async def post(self, path: str, body: bytes) -> AsyncIterator[Response]:
        """Send a JSON POST and yield the response once its head is in; the body is the caller's to read."""
        conn = await self._acquire()
        response: Response | None = None
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            conn.writer.write(head.encode() + body)
            response = await _read_head(conn.reader)
            yield response
        finally:
            reusable = response is not None and response.complete
            if reusable and response.headers.get("connection", "").lower() != "close":  # type: ignore[union-attr]
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                self._discard(conn)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send a JSON POST and read the whole response: (status, body)."""
        async with self.post(path, body) as response:
            return response.status, await response.read()

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.idle_expiry_s and not conn.reader.at_eof():
                return conn
            self._discard(conn)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = _Connection(reader, writer)
        self._open.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        closing = list(self._open)
        for conn in closing:
            self._discard(conn)
        self._idle.clear()
        for conn in closing:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await conn.writer.wait_closed()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _read_head(reader: asyncio.StreamReader) -> Response:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Response(int(status), headers, reader)
