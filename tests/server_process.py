"""A real ``python -m service`` child process on a free loopback port, for the tests that need one.

Used by the client, web, service and deployment tests. The process logs stdout and stderr to a
file, never to a pipe that nobody reads (a full pipe would block the server); failures quote the
log's tail. Typical use::

    with ServiceProcess(tmp_path / "server.log", "--models", "chat-en") as server:
        server.wait_ready(60)
        httpx.get(f"{server.url}/models")
    # leaving the block sends SIGTERM (SIGKILL if the server does not exit in time)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
MODEL_STORE = ROOT / "model_store"


class ServiceError(AssertionError):
    """The service exited, did not become ready, or did not stop; the message carries its log's tail."""


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless someone grabs it within milliseconds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """Starts ``sys.executable -m MODULE [MODULE_ARGS] --port P --model-store STORE --threads 1 *args``.

    The process starts at construction, with the repository root as working directory and
    ``PYTHONUNBUFFERED=1`` (plus ``env``) on top of this process's environment. ``module`` and
    ``module_args`` swap in a wrapper of the service's entry point (tests/deploy/gated_service.py).
    """

    def __init__(
        self,
        log_path: Path,
        *args: str,
        store: Path = MODEL_STORE,
        module: str = "service",
        module_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [sys.executable, "-m", module, *module_args, "--port", str(self.port)]
        self.argv += ["--model-store", str(store), "--threads", "1", *args]
        with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.proc.pid} returncode={self.proc.returncode}>"

    def memory_bytes(self) -> int:
        """Proportional set size of the server and every process it started (its engine processes)."""
        root = psutil.Process(self.proc.pid)
        return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])

    def log(self) -> str:
        """Everything the process has written so far (stdout and stderr, interleaved)."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise :class:`ServiceError` with the log's tail if the process has exited."""
        if self.proc.poll() is not None:
            raise ServiceError(f"the server on port {self.port} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60, interval: float = 0.1) -> None:
        """Return once GET /health/ready answers 200; fail at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the server on port {self.port} was not ready after {timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def terminate(self, timeout: float = 15, *, kill_is_error: bool = False) -> int:
        """SIGTERM (the server drains, then exits) and wait; SIGKILL after ``timeout`` seconds.

        Returns the exit code (negative: the signal that ended it). With ``kill_is_error``, a
        process that had to be killed raises :class:`ServiceError` instead.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            if kill_is_error:
                raise ServiceError(
                    f"the server on port {self.port} did not exit within {timeout:g}s of SIGTERM and was killed:\n"
                    f"{self.log_tail()}"
                ) from None
            return code
