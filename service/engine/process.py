"""An engine in a process of its own, so that its decoder steps never wait for the HTTP process's GIL.

In one process each of the PyTorch calls of a decoder step releases the GIL and must win
it back from the event loop (HTTP parsing, validation, tokenisation), and under load the
steps spend a good part of their time in that wait. As vLLM does with its engine core,
:class:`EngineProcess` runs the model's :class:`~service.engine.engine.Engine` in a child
process and talks to it over a pipe, in the messages of :mod:`service.engine.messages`:
commands (``Submit``, ``Abort``, ``Stop``) one way; ``Loaded`` or ``LoadFailed`` once, then
``Outputs`` (every output of one iteration, with the engine's statistics) and ``Died`` the
other. After a ``Stop`` the process drains its engine and exits, which closes the pipe. The children fork from one server process that imported torch once
(``forkserver``), which starts several models faster and in less memory than spawning each.

The HTTP side reads the pipe on its event loop (``loop.add_reader``), so outputs reach the
waiting handlers without a thread hop. The engine process owns admission: a full queue
comes back as an error output for each request. If the process dies, every request in
flight fails with 503 and readiness turns 503, as for a dead worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from seq2seq.checkpoint import load_tokenizers
from service.engine.client import EngineClient, EngineInfo
from service.engine.engine import Engine, EngineDead
from service.engine.loader import build_engine, freeze_startup_heap, torch_threads
from service.engine.messages import Command, Died, Loaded, LoadFailed, Outputs, Report, Stop
from service.engine.request import RequestFailed
from service.errors import EngineUnavailable
from service.metrics import Metrics
from service.settings import Settings, configure_logging

log = logging.getLogger("service.engine")


# Messages are plain data and go through plain pickle: ``Connection.send`` pickles with
# multiprocessing's ForkingPickler, which copies its table of reducers (torch registers many)
# for every message.
def _send(conn: Connection, message: Command | Report) -> None:
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


class EngineProcess(EngineClient):
    """The HTTP process's side of an engine process."""

    def __init__(
        self,
        name: str,
        info: EngineInfo,
        process: BaseProcess,
        conn: Connection,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(name, metrics)
        self.info = info
        self._process = process
        self._conn = conn
        self._loop = loop
        self._send_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()  # the pipe closed
        loop.call_soon_threadsafe(loop.add_reader, conn.fileno(), self._on_readable)

    @classmethod
    def start(
        cls,
        name: str,
        path: Path,
        manifest: dict[str, Any],
        settings: Settings,
        metrics: Metrics,
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
        message: Report
        try:
            loading = f"the engine process of {name} did not load within {timeout_s:g}s"
            message = _recv(conn) if conn.poll(timeout_s) else LoadFailed(loading)
        except (EOFError, OSError):
            process.join(5)
            message = LoadFailed(f"the engine process of {name} exited with code {process.exitcode} while loading")
        if not isinstance(message, Loaded):
            process.kill()
            process.join(5)
            conn.close()
            raise RuntimeError(message.error if isinstance(message, LoadFailed) else f"unexpected {message!r}")
        info = EngineInfo(
            tokenizers["source"], tokenizers["target"], message.device, message.dtype, message.quantization
        )
        return cls(name, info, process, conn, metrics, loop)

    @property
    def alive(self) -> bool:
        # No system call to ask the process: a process that dies closes its end of the pipe,
        # and the event loop marks it dead on EOF.
        return self.dead is None and not self._stopped.is_set()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def stop(self, grace_s: float = 0.0) -> None:
        """Drain the engine process for up to ``grace_s`` (its requests finish or fail), then end it."""
        self._accepting = False
        if self._process.is_alive() and not self._stopped.is_set():
            self._stopping = True  # the process ends after the drain: its pipe closes, as expected
            with contextlib.suppress(EngineUnavailable):
                self._send(Stop(grace_s))
            self._stopped.wait(grace_s + 10)
        self._process.join(5)
        if self._process.is_alive():
            log.error("engine %s: the process did not exit; killing it", self.name)
            self._process.kill()
            self._process.join(5)

    def _send(self, command: Command) -> None:
        try:
            with self._send_lock:
                _send(self._conn, command)
        except OSError as exc:
            raise EngineUnavailable(f"the engine process of model {self.name} is gone") from exc

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(_recv(self._conn))
        except (EOFError, OSError):
            self._lost()

    def _handle(self, message: Report) -> None:
        match message:
            case Outputs():
                self.deliver(message)
            case Died(reason):
                self.dead = EngineDead(reason)
                log.error("engine %s: the worker of the engine process died: %s", self.name, reason)

    def _lost(self) -> None:
        """The pipe closed: the process exited after a stop, or died."""
        self._loop.remove_reader(self._conn.fileno())
        if not self._stopping:
            self._process.join(1)
            reason = f"the engine process exited with code {self._process.exitcode}"
            self.dead = self.dead or EngineDead(reason)
            log.error("engine %s: %s", self.name, reason)
        error = EngineUnavailable(f"model {self.name} is unavailable: {self.dead or 'stopped'}")
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.put(RequestFailed(stream.request_id, error))
        self._stopped.set()
        self._conn.close()


# -- the engine process ---------------------------------------------------------------------------
class _Pipe:
    """The engine process's end of the pipe; its engine's worker and its command loop both send."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: Report) -> None:
        with self._lock, contextlib.suppress(OSError):  # the HTTP process is gone: the command loop ends us
            _send(self.conn, message)


def serve(conn: Connection, name: str, path: Path, settings: Settings) -> None:
    """Main function of an engine process: load, report, then serve commands until stopped."""
    # Ctrl-C reaches the whole process group, and systemd's stop sends SIGTERM to every process
    # of the service: the HTTP process drains its engines, which end on its Stop or when its
    # end of the pipe closes, never half-way through the drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(settings)
    torch.set_num_threads(torch_threads(settings))
    pipe = _Pipe(conn)
    try:
        engine = build_engine(name, path, settings, pipe.send)
    except Exception as exc:  # noqa: BLE001 - whatever failed the load is reported as the model's error
        pipe.send(LoadFailed(str(exc) or repr(exc)))
        return
    freeze_startup_heap()
    model = engine.model
    pipe.send(Loaded(str(model.device), model.dtype_name, model.quantization))
    _serve_commands(engine, pipe)


def _serve_commands(engine: Engine, pipe: _Pipe) -> None:
    while True:
        try:
            command: Command = _recv(pipe.conn)
        except (EOFError, OSError):  # the HTTP process is gone
            engine.stop(0)
            return
        engine.handle(command)
        if isinstance(command, Stop):
            return  # the process exits, and its end of the pipe closes
