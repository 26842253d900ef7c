"""What the HTTP layer and the registry see of a model's engine, wherever it runs.

An :class:`EngineClient` sends commands to its engine (:mod:`service.engine.messages`), keeps
a :class:`RequestStream` per request in flight, and on the event loop hands each ``Outputs``
message to those streams and its statistics to the metrics (:meth:`EngineClient.deliver`).
:class:`LocalEngine` runs the engine on a thread of the HTTP process;
:class:`~service.engine.process.EngineProcess` runs it in a process of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from seq2seq.generation import Hypothesis
from seq2seq.tokenizer import Tokenizer
from service.engine.engine import Engine
from service.engine.loader import build_engine
from service.engine.messages import Abort, Command, Died, Outputs, Submit
from service.engine.request import Output, Request, RequestFailed, Timings, is_last
from service.errors import EngineUnavailable
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class EngineInfo:
    """The model as the HTTP layer needs it: tokenizers on this side, and how the model runs."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    version: str  # of the model this engine serves: the name of its directory in the store
    device: str
    dtype: str
    quantization: str


class RequestStream:
    """The outputs of one request in order, for the handler waiting on the event loop."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.closed = False  # its last output arrived, or the request was aborted
        self.timings: Timings | None = None  # the engine's, once it finished
        self._queue: asyncio.Queue[Output] = asyncio.Queue()

    def put(self, output: Output) -> None:
        self.closed = self.closed or is_last(output)
        self._queue.put_nowait(output)

    async def next(self) -> Output:
        return await self._queue.get()

    async def final(self) -> list[Hypothesis]:
        """Wait for the end of the request: its hypotheses, or raise its error."""
        while True:
            output = await self._queue.get()
            if isinstance(output, RequestFailed):
                raise output.error
            if output.finished is not None:
                return output.finished


class EngineClient:
    """The HTTP process's side of one model's engine; used on its event loop, except :meth:`stop`.

    Subclasses say how commands reach the engine (:meth:`_send`), whether it is alive, and how it stops.
    """

    info: EngineInfo
    dead: BaseException | None = None  # what killed the engine, if it died

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self._metrics = metrics
        self._streams: dict[str, RequestStream] = {}
        self._accepting = True

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let the requests in flight finish for up to ``grace_s``, fail the rest."""
        raise NotImplementedError

    def _send(self, command: Command) -> None:
        """Hand ``command`` to the engine; :class:`EngineUnavailable` if it cannot take it."""
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        """Requests submitted here whose last output has not arrived yet."""
        return len(self._streams)

    def submit(self, requests: list[Request]) -> list[RequestStream]:
        """Queue ``requests`` (all or none): a stream each. An engine that cannot take requests
        raises :class:`EngineUnavailable`; one that refuses them (a full queue) says so on each stream."""
        if not self._accepting or not self.alive:
            raise EngineUnavailable(f"model {self.name} is not accepting requests")
        streams = [RequestStream(r.id) for r in requests]
        self._streams.update((s.request_id, s) for s in streams)
        try:
            self._send(Submit(requests))
        except EngineUnavailable:
            for s in streams:
                del self._streams[s.request_id]
            raise
        return streams

    def abort(self, request_ids: set[str]) -> None:
        """Cancel these requests; nothing more reaches their streams."""
        for request_id in request_ids:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.closed = True
        try:
            self._send(Abort(frozenset(request_ids)))
        except EngineUnavailable:  # gone: so are its requests
            pass

    def deliver(self, message: Outputs) -> None:
        """On the event loop: each output to its request's stream, the statistics to the metrics."""
        for request_id, timings in message.timings.items():  # no later than the request's result
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.timings = timings
        for output in message.outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:  # aborted: nobody listens
                continue
            if is_last(output):
                del self._streams[output.request_id]
            stream.put(output)
        self._metrics.record_engine(self.name, message.stats)


class LocalEngine(EngineClient):
    """An engine on a worker thread of the HTTP process (``--engine-process false``)."""

    def __init__(self, name: str, path: Path, settings: Settings, metrics: Metrics, loop: asyncio.AbstractEventLoop):
        super().__init__(name, metrics)
        self._loop = loop
        self.core: Engine = build_engine(name, path, settings, self._from_worker)
        model = self.core.model
        self.info = EngineInfo(
            model.loaded.source_tokenizer,
            model.loaded.target_tokenizer,
            path.name,
            str(model.device),
            model.dtype_name,
            model.quantization,
        )

    @property
    def dead(self) -> BaseException | None:  # type: ignore[override]
        return self.core.dead

    @property
    def alive(self) -> bool:
        return self.core.alive

    def stop(self, grace_s: float = 0.0) -> None:
        self._accepting = False
        self.core.stop(grace_s)

    def _send(self, command: Command) -> None:
        self.core.handle(command)

    def _from_worker(self, message: Outputs | Died) -> None:
        """The engine's sink (its threads): one event-loop wake-up per message. A death needs
        no message here: :attr:`dead` reads the engine's own."""
        if isinstance(message, Died):
            return
        try:
            self._loop.call_soon_threadsafe(self.deliver, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass
