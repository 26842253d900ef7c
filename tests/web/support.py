"""Helpers for the web tests: the real server's models, pages on other loopback origins, headless Chromium.

The server itself is a :class:`tests.server_process.ServiceProcess`.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/install-browser.sh``) through Playwright's Python package with ``executable_path``:
Playwright's own browser download is never used. Without the browser they skip, except
under CI (``CI=true``), where a missing browser is a failure rather than a silent skip.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import MODEL_STORE, ROOT, ServiceProcess

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
# The real service (started by the web_env fixture)


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
class WebEnv:
    service: ServiceProcess  # ready; see tests.server_process
    allowed: PageServer  # an origin in --cors-origins
    disallowed: PageServer  # an origin that is not
