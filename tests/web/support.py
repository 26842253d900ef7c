"""Helpers for the web tests: a real server, pages on other loopback origins, headless Chromium.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/install-browser.sh``) through Playwright's Python package with ``executable_path``:
Playwright's own browser download is never used. Without the browser they skip, except
under CI (``CI=true``), where a missing browser is a failure rather than a silent skip.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_STORE = ROOT / "model_store"
ARTIFACTS = ROOT / "artifacts" / "web"
CHROMIUM = Path(os.environ.get("SEQ2SEQ_CHROMIUM", "/usr/bin/chromium"))
# Headless as root on a machine without a GPU or outside network (see .ci/install-browser.sh).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-quic",
    "--no-first-run",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_browser() -> None:
    """Skip (fail under CI) when Playwright or Chromium is missing, saying how to get them."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the Python package playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} is missing (run .ci/install-browser.sh as root)")
    if problems:
        reason = "browser tests need Chromium and Playwright: " + "; ".join(problems)
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Static pages on other origins (for the cross-origin tests)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PageServer:
    """``http.server`` on a free loopback port, serving ``directory``: a different origin from the API."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# The real service


def de_en_models(store: Path = MODEL_STORE) -> list[str]:
    """Names of the German -> English translation models in the store (the compare view's rows)."""
    names = []
    for model_dir in sorted(p for p in store.iterdir() if p.is_dir()):
        manifests = sorted(model_dir.glob("*/manifest.json"))
        if not manifests:
            continue
        m = json.loads(manifests[-1].read_text())
        if (m.get("task"), m.get("source_lang"), m.get("target_lang")) == ("translate", "de", "en"):
            names.append(model_dir.name)
    return names


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def start_service(log_path: Path, *args: str, timeout: float = 60) -> Service:
    """``python -m service`` on a free port with the repo's model store; returns once /health/ready is 200."""
    port = free_port()
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--port",
                str(port),
                "--model-store",
                str(MODEL_STORE),
                "--threads",
                "1",
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{service.log()}")
        try:
            if httpx.get(f"{service.url}/health/ready", timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_service(service)
    raise TimeoutError(f"the server was not ready within {timeout:g}s:\n{service.log()}")


def stop_service(service: Service) -> None:
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=5)


@dataclass
class WebEnv:
    service: Service
    allowed: PageServer  # an origin in --cors-origins
    disallowed: PageServer  # an origin that is not
