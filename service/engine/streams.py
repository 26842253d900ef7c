"""Per-request event streams from the worker thread to the asyncio handlers.

The worker never touches the event loop directly: it hands events over with
``loop.call_soon_threadsafe``, and the handler awaits them in order. Every such call wakes
the loop through its self-pipe and takes the GIL from the worker, so :func:`publish` hands
over all the events of one decoder step in a single call, and a stream that does not
stream (a plain ``/translate`` or ``/chat`` reply) receives no per-token events at all.

An engine only sees :class:`Stream` and a :data:`Publish` function: in the HTTP process
that is :class:`RequestStream` and :func:`publish`; in an engine process of its own
(:mod:`service.engine.process`) the events of a step cross a pipe instead, and the HTTP
process's event loop reads them and calls :meth:`RequestStream.deliver`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
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


class Stream:
    """What an engine holds of a request: where its events go, and whether it still listens."""

    def __init__(self, request_id: str, tokens: bool = True) -> None:
        self.request_id = request_id
        self.tokens = tokens  # False: only the final (or error) event is wanted
        self.closed = False  # set once a final or error event was sent, or the request was cancelled


Publish = Callable[[Iterable[tuple[Stream, Event]]], None]


class RequestStream(Stream):
    """Events of one request; created on the event loop, fed from any thread."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None, tokens: bool = True) -> None:
        super().__init__(request_id, tokens)
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(self, event: Event) -> None:
        """Hand over ``event`` from the stream's own event loop (no thread hop)."""
        for _, wanted in outgoing([(self, event)]):
            self._queue.put_nowait(wanted)

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


def outgoing(events: Iterable[tuple[Stream, Event]]) -> Iterator[tuple[Stream, Event]]:
    """The events that leave the engine: token events only for streams that want them; a
    final or error event closes its stream."""
    for stream, event in events:
        if isinstance(event, TokenEvent) and not stream.tokens:
            continue
        if isinstance(event, FinalEvent | ErrorEvent):
            stream.closed = True
        yield stream, event


def publish(events: Iterable[tuple[Stream, Event]]) -> None:
    """Thread-safe: deliver events to their streams, with one loop wake-up per event loop."""
    batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
    for stream, event in outgoing(events):
        assert isinstance(stream, RequestStream)
        batches.setdefault(stream._loop, []).append((stream._queue, event))
    for loop, batch in batches.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _deliver(batch: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for queue, event in batch:
        queue.put_nowait(event)
