"""Per-request event streams from the worker thread to the asyncio handlers.

The worker never touches the event loop directly: it hands each event over with
``loop.call_soon_threadsafe``, and the handler awaits them in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from seq2seq.generation import Hypothesis
from service.errors import ServiceError


@dataclass(frozen=True)
class TokenEvent:
    token: int


@dataclass(frozen=True)
class FinalEvent:
    hypotheses: list[Hypothesis]


@dataclass(frozen=True)
class ErrorEvent:
    error: ServiceError


Event = TokenEvent | FinalEvent | ErrorEvent


class RequestStream:
    """Events of one request; created on the event loop, fed from any thread."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request_id = request_id
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = False  # set by the worker once a final or error event was sent

    def put(self, event: Event) -> None:
        """Thread-safe; a no-op once the loop is gone (the handler cannot listen any more)."""
        if isinstance(event, FinalEvent | ErrorEvent):
            self.closed = True
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass

    async def next(self) -> Event:
        return await self._queue.get()

    async def final(self) -> list[Hypothesis]:
        """Wait for the end of the request: its hypotheses, or raise its error."""
        while True:
            event = await self._queue.get()
            if isinstance(event, FinalEvent):
                return event.hypotheses
            if isinstance(event, ErrorEvent):
                raise event.error
