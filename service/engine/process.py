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

Commands and reports travel on two one-way pipes. The HTTP side writes and reads them through
asyncio pipe transports on its event loop: a command is buffered when the pipe is full
(backpressure, never an error), and reports reach the waiting handlers without a thread hop.
Only the end of the reports pipe, a closed transport, says that the engine process is gone. The engine process owns admission: a full queue
comes back as an error output for each request. If the process dies, every request in
flight fails with 503 and readiness turns 503, as for a dead worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import setproctitle
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
# for every message. On the wire, each is ``Connection.send_bytes``'s frame: a 4-byte
# big-endian length, then the pickle.
_HEADER = struct.Struct("!i")


def _send(conn: Connection, message: Command | Report) -> None:
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _frame(message: Command) -> bytes:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class _Reports(asyncio.Protocol):
    """The HTTP side's reader of the reports pipe: frames in, reports out, then the end of the pipe."""

    def __init__(self, client: EngineProcess) -> None:
        self._client = client
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0  # every whole frame in the buffer, then the consumed prefix dropped once
        while len(self._buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer, start)
            end = start + _HEADER.size + size
            if len(self._buffer) < end:
                break
            with memoryview(self._buffer) as view:
                report = pickle.loads(view[start + _HEADER.size : end])
            start = end
            self._client._handle(report)
        del self._buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost()


def _pipe_file(conn: Connection, mode: str) -> Any:
    """The pipe under ``conn`` as an unbuffered file, for an asyncio pipe transport."""
    fd = os.dup(conn.fileno())
    conn.close()
    return os.fdopen(fd, mode, buffering=0)


class EngineProcess(EngineClient):
    """The HTTP process's side of an engine process."""

    def __init__(
        self,
        name: str,
        info: EngineInfo,
        process: BaseProcess,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(name, metrics)
        self.info = info
        self._process = process
        self._loop = loop
        self._commands: asyncio.WriteTransport | None = None
        self._stopping = False
        self._stopped = threading.Event()  # the reports pipe ended

    async def _connect(self, commands: Connection, reports: Connection) -> None:
        self._commands, _ = await self._loop.connect_write_pipe(asyncio.Protocol, _pipe_file(commands, "wb"))
        await self._loop.connect_read_pipe(lambda: _Reports(self), _pipe_file(reports, "rb"))

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
        commands_in, commands = context.Pipe(duplex=False)
        reports, reports_out = context.Pipe(duplex=False)
        process = context.Process(
            target=serve, args=(commands_in, reports_out, name, path, settings), name=f"engine-{name}", daemon=True
        )
        process.start()
        commands_in.close()
        reports_out.close()
        message: Report
        try:
            loading = f"the engine process of {name} did not load within {timeout_s:g}s"
            message = _recv(reports) if reports.poll(timeout_s) else LoadFailed(loading)
        except (EOFError, OSError):
            process.join(5)
            message = LoadFailed(f"the engine process of {name} exited with code {process.exitcode} while loading")

        def abandon() -> None:
            process.kill()
            process.join(5)
            commands.close()
            reports.close()

        if not isinstance(message, Loaded):
            abandon()
            raise RuntimeError(message.error if isinstance(message, LoadFailed) else f"unexpected {message!r}")
        info = EngineInfo(
            tokenizers["source"], tokenizers["target"], path.name, message.device, message.dtype, message.quantization
        )
        client = cls(name, info, process, metrics, loop)
        try:
            asyncio.run_coroutine_threadsafe(client._connect(commands, reports), loop).result()
        except BaseException:  # the event loop is gone (the server stops): so is the process
            abandon()
            raise
        return client

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
            try:
                self._loop.call_soon_threadsafe(self._send_quietly, Stop(grace_s))
                self._stopped.wait(grace_s + 10)
            except RuntimeError:  # the event loop is closed: nobody waits for a drain
                pass
        self._process.join(5)
        if self._process.is_alive():
            log.error("engine %s: the process did not exit; killing it", self.name)
            self._process.kill()
            self._process.join(5)

    def _send(self, command: Command) -> None:
        """On the event loop: queue ``command`` on the pipe; the transport writes it when the pipe has room."""
        if self._commands is None or self._commands.is_closing():
            raise EngineUnavailable(f"the engine process of model {self.name} is gone")
        self._commands.write(_frame(command))

    def _send_quietly(self, command: Command) -> None:
        try:
            self._send(command)
        except EngineUnavailable:
            pass

    def _handle(self, message: Report) -> None:
        match message:
            case Outputs():
                self.deliver(message)
            case Died(reason):
                self.dead = EngineDead(reason)
                log.error("engine %s: the worker of the engine process died: %s", self.name, reason)

    def _lost(self) -> None:
        """The reports pipe ended: the process exited after a stop, or died."""
        if self._commands is not None and not self._commands.is_closing():
            self._commands.abort()
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


# -- the engine process ---------------------------------------------------------------------------
class _Pipe:
    """The engine process's end of the reports pipe; its engine's worker and its command loop both send."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: Report) -> None:
        with self._lock:
            try:
                _send(self.conn, message)
            except OSError:  # the HTTP process is gone: the end of the commands pipe ends us
                pass


def serve(commands: Connection, reports: Connection, name: str, path: Path, settings: Settings) -> None:
    """Main function of an engine process: load, report, then serve commands until stopped."""
    # Ctrl-C reaches the whole process group, and systemd's stop sends SIGTERM to every process
    # of the service: the HTTP process drains its engines, which end on its Stop or when its
    # end of the pipe closes, never half-way through the drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setproctitle.setproctitle(f"seq2seq-serve engine {name}")  # what ps and top show: the model's own process
    configure_logging(settings)
    torch.set_num_threads(torch_threads(settings))
    pipe = _Pipe(reports)
    try:
        engine = build_engine(name, path, settings, pipe.send)
    except Exception as exc:  # noqa: BLE001 - whatever failed the load is reported as the model's error
        pipe.send(LoadFailed(str(exc) or repr(exc)))
        return
    freeze_startup_heap()
    model = engine.model
    pipe.send(Loaded(str(model.device), model.dtype_name, model.quantization))
    _serve_commands(engine, commands)


def _serve_commands(engine: Engine, commands: Connection) -> None:
    while True:
        try:
            command: Command = _recv(commands)
        except (EOFError, OSError):  # the HTTP process is gone
            engine.stop(0)
            return
        engine.handle(command)
        if isinstance(command, Stop):
            return  # the process exits, and its end of the pipe closes
