"""Per-request event streams from the worker thread to the asyncio handlers.

The worker never touches the event loop directly: it hands events over with
``loop.call_soon_threadsafe``, and the handler awaits them in order. Every such call wakes
the loop through its self-pipe and takes the GIL from the worker, so :func:`publish` hands
over all the events of one decoder step in a single call, and a stream that does not
stream (a plain ``/translate`` or ``/chat`` reply) receives no per-token events at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
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

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None, tokens: bool = True) -> None:
        self.request_id = request_id
        self.tokens = tokens  # False: only the final (or error) event is wanted
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = False  # set by the worker once a final or error event was sent

    def put(self, event: Event) -> None:
        """Thread-safe; a no-op once the loop is gone (the handler cannot listen any more)."""
        publish([(self, event)])

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


def publish(events: Iterable[tuple[RequestStream, Event]]) -> None:
    """Thread-safe: deliver events to their streams, with one loop wake-up per event loop."""
    batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
    for stream, event in events:
        if isinstance(event, TokenEvent) and not stream.tokens:
            continue
        if isinstance(event, FinalEvent | ErrorEvent):
            stream.closed = True
        batches.setdefault(stream._loop, []).append((stream._queue, event))
    for loop, batch in batches.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _deliver(batch: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for queue, event in batch:
        queue.put_nowait(event)
