"""A real ``python -m service`` on a free loopback port, shared by every client test that needs one.

The server runs the repository's model store (translate-de-en and chat-en) with one torch
thread (see :mod:`tests.server_process`). Its log is shown if it fails to become ready.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server_process import ServiceProcess

MODELS = "translate-de-en,translate-fr-en,chat-en"
READY_TIMEOUT_S = 120  # model loading and warm-up compete with background training for two cores


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with ServiceProcess(log_path, "--models", MODELS, "--shutdown-grace-s", "2") as server:
        server.wait_ready(READY_TIMEOUT_S)
        yield server.url
    # leaving the block: SIGTERM, the server drains and exits on its own (killed after 15 s)
