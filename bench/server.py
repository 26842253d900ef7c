"""The server under test: ``python -m service`` as a child process on a free loopback port.

Start-up time is measured from spawn to the first ``/health/ready`` 200 (models loaded and
warmed up). Memory is the proportional set size (PSS, psutil) of the server and its engine processes:
once at ready, and the peak of a sampler that runs for the server's whole life. PSS splits
each shared page among the processes that map it, so the forked engine processes' shared
torch pages count once; a sum of RSS would count them in every process. The server's own ``/metrics`` give the batch-side
view of each load level (rows per decoder step, step time, queue depth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
MEMORY_SAMPLE_S = 1.0  # a PSS reading walks the page tables: ~3 ms per process


class ServerError(RuntimeError):
    """The server exited or never became ready; the message carries the tail of its log."""


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless someone grabs it within milliseconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """Samples of the Prometheus text without labels or with only ``model=<model>``, by sample name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if set(sample.labels) <= {"model"} and sample.labels.get("model", model) == model:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


class ServerProcess:
    """Async context manager: spawn on enter (after which ``startup_s`` and ``memory_ready`` are set), stop on exit."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self.memory_ready = 0
        self.memory_peak = 0
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ServerProcess:
        try:
            await self.start()
        except BaseException:  # interrupted or failed while starting: never leave the child behind
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                if time.perf_counter() - t0 > READY_TIMEOUT_S:
                    raise ServerError(f"server not ready after {READY_TIMEOUT_S:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        self.startup_s = time.perf_counter() - t0
        self.memory_ready = self.memory_peak = self.memory()
        self._sampler = asyncio.create_task(self._sample_memory())

    async def stop(self) -> None:
        """SIGTERM (the server drains in-flight requests and exits 0); SIGKILL if it hangs."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

    def _processes(self) -> list[psutil.Process]:
        """The server and the processes it spawned (its engine processes)."""
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        return [proc, *proc.children(recursive=True)]

    def memory(self) -> int:
        """Proportional set size in bytes of the server and its engine processes."""
        return sum(p.memory_full_info().pss for p in self._processes())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of the server and its engine processes, all threads."""
        return sum(t.user + t.system for t in (p.cpu_times() for p in self._processes()))

    async def _sample_memory(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.memory_peak = max(self.memory_peak, self.memory())
            await asyncio.sleep(MEMORY_SAMPLE_S)

    async def metrics(self, client: httpx.AsyncClient, model: str) -> dict[str, float]:
        resp = await client.get(f"{self.url}/metrics")
        resp.raise_for_status()
        return parse_metrics(resp.text, model)

    async def wait_idle(self, client: httpx.AsyncClient, model: str, timeout_s: float = 60.0) -> float | None:
        """Wait until the model's queue is empty and no tokens are being generated; seconds waited, None on timeout.

        Between load levels, so that requests a closed loop cancelled (or an open loop left
        queued) cannot spill into the next level's numbers.
        """
        t0 = time.perf_counter()
        last_tokens = -1.0
        while time.perf_counter() - t0 < timeout_s:
            m = await self.metrics(client, model)
            tokens = m.get("seq2seq_generated_tokens_total", 0.0)
            if m.get("seq2seq_queue_depth", 0.0) == 0 and (
                m.get("seq2seq_active_rows", 0.0) == 0 or tokens == last_tokens
            ):
                return time.perf_counter() - t0
            last_tokens = tokens
            await asyncio.sleep(0.25)
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
