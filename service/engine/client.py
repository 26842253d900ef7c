"""What the HTTP layer and the registry see of a model's engine, wherever it runs.

An :class:`EngineClient` keeps the streams of its requests in flight, sends requests and
aborts to its engine, and on the event loop hands each :class:`~service.engine.messages.Outputs`
message to those streams and its statistics to the metrics (:meth:`EngineClient.deliver`).
:class:`LocalEngine` runs the engine on a thread of the HTTP process;
:class:`~service.engine.process.EngineProcess` runs it in a process of its own.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from seq2seq.tokenizer import Tokenizer
from service.engine.engine import Engine
from service.engine.loader import build_engine
from service.engine.messages import Outputs
from service.engine.request import Request, is_last
from service.engine.streams import RequestStream
from service.errors import EngineUnavailable
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class EngineInfo:
    """The model as the HTTP layer needs it: tokenizers on this side, and how the model runs."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    device: str
    dtype: str
    quantization: str


class EngineClient(ABC):
    """The HTTP process's side of one model's engine; used on the event loop it was started for,
    except :meth:`stop` (any thread)."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self._metrics = metrics
        self._streams: dict[str, RequestStream] = {}
        self._accepting = True

    info: EngineInfo

    @property
    @abstractmethod
    def dead(self) -> BaseException | None:
        """What killed the engine, if it died."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let the requests in flight finish for up to ``grace_s``, fail the rest."""

    @abstractmethod
    def _send_submit(self, requests: list[Request]) -> None: ...

    @abstractmethod
    def _send_abort(self, request_ids: frozenset[str]) -> None: ...

    def submit(self, requests: list[Request]) -> list[RequestStream]:
        """Queue ``requests`` (all or none): a stream each. An engine that cannot take requests
        raises :class:`EngineUnavailable`; one that refuses them (a full queue) says so on each stream."""
        if not self._accepting or not self.alive:
            raise EngineUnavailable(f"model {self.name} is not accepting requests")
        streams = [RequestStream(r.id) for r in requests]
        self._streams.update((s.request_id, s) for s in streams)
        try:
            self._send_submit(requests)
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
        self._send_abort(frozenset(request_ids))

    def deliver(self, message: Outputs) -> None:
        """On the event loop: each output to its request's stream, the statistics to the metrics."""
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
            str(model.device),
            model.dtype_name,
            model.quantization,
        )

    @property
    def dead(self) -> BaseException | None:
        return self.core.dead

    @property
    def alive(self) -> bool:
        return self.core.alive

    def stop(self, grace_s: float = 0.0) -> None:
        self._accepting = False
        self.core.stop(grace_s)

    def _send_submit(self, requests: list[Request]) -> None:
        self.core.submit(requests)

    def _send_abort(self, request_ids: frozenset[str]) -> None:
        self.core.abort(request_ids)

    def _from_worker(self, message: Outputs) -> None:
        """The engine's sink (its threads): one event-loop wake-up per message."""
        try:
            self._loop.call_soon_threadsafe(self.deliver, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass
