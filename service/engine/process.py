"""An engine in a process of its own, so that its decoder steps never wait for the HTTP process's GIL.

In one process each of the ~60 PyTorch calls of a decoder step releases the GIL and must
win it back from the event loop (HTTP parsing, validation, tokenisation); under load about
a fifth of every step went to that wait (``seq2seq_decode_step_cpu_seconds`` against the
steps' wall time). As vLLM does with its engine core, :class:`EngineProcess` runs the
model's :class:`~service.engine.engine.Engine` in a child process and talks to it over a
pipe. The children fork from one server process that imported torch once (``forkserver``):
against spawning each, six models start in 3.3 s instead of 7.0 s, with 0.95 GB of PSS
instead of 1.42. The messages:

- HTTP process to engine: ``submit`` (requests, which of them stream tokens, timeout),
  ``abort``, ``metrics`` (a ``/metrics`` scrape), ``stop`` (drain, then exit);
- engine to HTTP process: ``ready`` or ``failed`` once, then ``events`` (every event of one
  decoder step in one message), ``metrics``, ``dead`` (the worker died), ``stopped``.

The HTTP side reads the pipe on its event loop (``loop.add_reader``), so events reach the
waiting handlers without a thread hop. The engine process owns admission: a full queue
comes back as an error event on each stream. If the process dies, every request in flight
fails with 503 and readiness turns 503, as for a dead worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
from prometheus_client import Metric

from seq2seq.checkpoint import load_tokenizers
from seq2seq.generation import GenerationRequest
from service.engine.engine import Engine, EngineDead
from service.engine.handle import EngineInfo
from service.engine.loader import build_engine, freeze_startup_heap, torch_threads
from service.engine.streams import ErrorEvent, Event, FinalEvent, RequestStream, Stream, outgoing
from service.errors import EngineUnavailable, ServiceError
from service.metrics import Metrics
from service.settings import Settings, configure_logging

log = logging.getLogger("service.engine")

SCRAPE_TIMEOUT_S = 2.0


# Messages are plain data (requests, events, metric families) and go through plain pickle:
# ``Connection.send`` pickles with multiprocessing's ForkingPickler, which copies its table of
# reducers (torch registers many) for every message, about 20 us a request on each side.
def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> tuple[Any, ...]:
    message: tuple[Any, ...] = pickle.loads(conn.recv_bytes())
    return message


class EngineProcess:
    """The HTTP process's side of an engine process; used on the event loop it was started for
    (``submit``, ``abort``, ``metric_families``) and from any thread (``stop``)."""

    def __init__(
        self,
        name: str,
        info: EngineInfo,
        process: BaseProcess,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.info = info
        self.dead: BaseException | None = None
        self._process = process
        self._conn = conn
        self._loop = loop
        self._send_lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._scrapes: dict[int, asyncio.Future[list[Metric]]] = {}
        self._scrape_ids = itertools.count()
        self._accepting = True
        self._stopped = threading.Event()
        loop.call_soon_threadsafe(loop.add_reader, conn.fileno(), self._on_readable)

    @classmethod
    def start(
        cls,
        name: str,
        path: Path,
        manifest: dict[str, Any],
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float = 600.0,
    ) -> EngineProcess:
        """Spawn the engine process of the model in ``path``; return once it is loaded and warmed up."""
        tokenizers = load_tokenizers(path, manifest)  # checked here too: a bad store fails fast
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["service.engine.process"])
        conn, child_conn = context.Pipe()
        process = context.Process(
            target=serve, args=(child_conn, name, path, settings), name=f"engine-{name}", daemon=True
        )
        process.start()
        child_conn.close()
        try:
            if not conn.poll(timeout_s):
                raise RuntimeError(f"the engine process of {name} did not load within {timeout_s:g}s")
            message = _recv(conn)
        except (EOFError, OSError, RuntimeError) as exc:
            process.kill()
            process.join(5)
            conn.close()
            if isinstance(exc, RuntimeError):
                raise
            raise RuntimeError(
                f"the engine process of {name} exited with code {process.exitcode} while loading"
            ) from exc
        if message[0] == "failed":
            process.join(5)
            conn.close()
            raise RuntimeError(message[1])
        _, device, dtype, quantization = message
        info = EngineInfo(tokenizers["source"], tokenizers["target"], device, dtype, quantization)
        return cls(name, info, process, conn, loop)

    @property
    def alive(self) -> bool:
        # No system call to ask the process (several per request, 5% of the HTTP process's time):
        # a process that dies closes its end of the pipe, and the event loop marks it dead on EOF.
        return self.dead is None and not self._stopped.is_set()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # -- requests (on the event loop) ---------------------------------------------------------
    def submit(self, requests: list[GenerationRequest], streams: list[RequestStream], timeout_s: float) -> None:
        if not self._accepting or not self.alive:
            raise EngineUnavailable(f"model {self.name} is not accepting requests")
        for stream in streams:
            self._streams[stream.request_id] = stream
        try:
            self._send(("submit", requests, [s.tokens for s in streams], timeout_s))
        except OSError as exc:
            for stream in streams:
                self._streams.pop(stream.request_id, None)
            raise EngineUnavailable(f"the engine process of model {self.name} is gone") from exc

    def abort(self, request_ids: set[str]) -> None:
        for request_id in request_ids:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.closed = True
        with contextlib.suppress(OSError):
            self._send(("abort", request_ids))

    async def metric_families(self) -> list[Metric]:
        if not self.alive:
            return []
        scrape = next(self._scrape_ids)
        future: asyncio.Future[list[Metric]] = self._loop.create_future()
        self._scrapes[scrape] = future
        try:
            self._send(("metrics", scrape))
            return await asyncio.wait_for(future, SCRAPE_TIMEOUT_S)
        except (OSError, TimeoutError):
            log.warning("engine %s: no metrics within %gs", self.name, SCRAPE_TIMEOUT_S)
            return []
        finally:
            self._scrapes.pop(scrape, None)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, grace_s: float = 0.0) -> None:
        """Drain the engine process for up to ``grace_s`` (its requests finish or fail), then end it."""
        self._accepting = False
        if self._process.is_alive() and not self._stopped.is_set():
            with contextlib.suppress(OSError):
                self._send(("stop", grace_s))
            self._stopped.wait(grace_s + 10)
        self._process.join(5)
        if self._process.is_alive():
            log.error("engine %s: the process did not exit; killing it", self.name)
            self._process.kill()
            self._process.join(5)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            _send(self._conn, message)

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(_recv(self._conn))
        except (EOFError, OSError):
            self._lost()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "events":
            for request_id, event in message[1]:
                stream = self._streams.get(request_id)
                if stream is None:  # aborted: nobody listens
                    continue
                if isinstance(event, FinalEvent | ErrorEvent):
                    del self._streams[request_id]
                stream.deliver(event)
        elif kind == "metrics":
            future = self._scrapes.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "dead":
            self.dead = EngineDead(message[1])
            log.error("engine %s: the worker of the engine process died: %s", self.name, message[1])
        elif kind == "stopped":
            self._stopped.set()

    def _lost(self) -> None:
        """The pipe closed: the process exited after a stop, or died."""
        self._loop.remove_reader(self._conn.fileno())
        if not self._stopped.is_set():
            self._process.join(1)
            reason = f"the engine process exited with code {self._process.exitcode}"
            self.dead = self.dead or EngineDead(reason)
            log.error("engine %s: %s", self.name, reason)
        error = EngineUnavailable(f"model {self.name} is unavailable: {self.dead or 'stopped'}")
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.deliver(ErrorEvent(error))
        self._stopped.set()
        self._conn.close()


# -- the engine process ---------------------------------------------------------------------------
class _Pipe:
    """The engine process's end: what its engine publishes goes out as one message per call."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()  # the worker and the command loop both send

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock, contextlib.suppress(OSError):  # the HTTP process is gone: the command loop ends us
            _send(self.conn, message)

    def publish(self, events: list[tuple[Stream, Event]]) -> None:
        out = [(stream.request_id, event) for stream, event in outgoing(events)]
        if out:
            self.send(("events", out))


def serve(conn: Connection, name: str, path: Path, settings: Settings) -> None:
    """Main function of an engine process: load, report ready, then serve commands until stopped."""
    # Ctrl-C reaches the whole process group, and systemd's stop sends SIGTERM to every process
    # of the service: the HTTP process drains its engines, which end on its "stop" or when its
    # end of the pipe closes, never half-way through the drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(settings)
    torch.set_num_threads(torch_threads(settings))
    pipe = _Pipe(conn)
    metrics = Metrics(process=False)
    try:
        engine = build_engine(name, path, settings, metrics, publish=pipe.publish)
    except Exception as exc:  # noqa: BLE001 - whatever failed the load is reported as the model's error
        pipe.send(("failed", str(exc) or repr(exc)))
        return
    freeze_startup_heap()
    pipe.send(("ready", engine.info.device, engine.info.dtype, engine.info.quantization))
    threading.Thread(target=_report_death, args=(engine, pipe), name="engine-watch", daemon=True).start()
    _serve_commands(engine, pipe, metrics)


def _report_death(engine: Engine, pipe: _Pipe) -> None:
    engine.wait()
    if engine.dead is not None:
        pipe.send(("dead", repr(engine.dead)))


def _serve_commands(engine: Engine, pipe: _Pipe, metrics: Metrics) -> None:
    while True:
        try:
            message = _recv(pipe.conn)
        except (EOFError, OSError):  # the HTTP process is gone
            engine.stop(0)
            return
        kind = message[0]
        if kind == "submit":
            _, requests, tokens, timeout_s = message
            streams = [Stream(r.id, t) for r, t in zip(requests, tokens, strict=True)]
            try:
                engine.submit(requests, streams, timeout_s)
            except ServiceError as exc:
                pipe.publish([(stream, ErrorEvent(exc)) for stream in streams])
        elif kind == "abort":
            engine.abort(message[1])
        elif kind == "metrics":
            pipe.send(("metrics", message[1], [f for f in metrics.registry.collect() if f.samples]))
        elif kind == "stop":
            engine.stop(message[1])
            pipe.send(("stopped",))
            return
