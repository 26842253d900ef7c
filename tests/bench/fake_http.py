"""A small real HTTP/1.1 server on asyncio streams, for testing the load generator's client.

Each handler gets the request's path and JSON body and returns (status, body, chunked):
``chunked`` responses go out one HTTP chunk per list item, the way uvicorn streams SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Reply = tuple[int, bytes | list[bytes]]
Handler = Callable[[str, Any], Awaitable[Reply]]


class FakeServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0  # accepted TCP connections
        self.requests = 0
        self.disconnects = 0  # connections the client closed while its request was being handled
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed an idle connection
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = json.loads(await reader.readexactly(int(headers["content-length"])))
                self.requests += 1
                handling = asyncio.create_task(self.handler(path, body))
                closed = asyncio.create_task(reader.read(1))  # b"" once the client hangs up
                done, _ = await asyncio.wait([handling, closed], return_when=asyncio.FIRST_COMPLETED)
                if handling not in done:
                    handling.cancel()
                    self.disconnects += 1
                    return
                closed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await closed  # the reader must be free again before the next request is read
                status, payload = handling.result()
                if isinstance(payload, list):
                    writer.write(f"HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n".encode())
                    for piece in payload:
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeServer]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            for writer in list(self._writers):  # Server.close() leaves open connections alone
                writer.close()
            await asyncio.sleep(0)  # let the transports finish closing before the loop goes away
