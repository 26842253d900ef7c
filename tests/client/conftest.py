"""A real ``python -m service`` on a free loopback port, shared by every client test that needs one.

The server runs the repository's model store (translate-de-en and chat-en) with one torch
thread, and logs to a file rather than a pipe that nobody reads (a full pipe would block it).
Its log is shown if it fails to become ready.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = "translate-de-en,chat-en"
READY_TIMEOUT_S = 120  # model loading and warm-up compete with background training for two cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server not ready after {READY_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "service",
        "--port",
        str(port),
        "--model-store",
        str(ROOT / "model_store"),
        "--models",
        MODELS,
        "--threads",
        "1",
        "--shutdown-grace-s",
        "2",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=log)
        try:
            _wait_ready(proc, url, log_path)
            yield url
        finally:
            proc.terminate()  # SIGTERM: the server drains and exits on its own
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
