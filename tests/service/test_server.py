"""A real ``python -m service`` process on loopback: streaming disconnects and SIGTERM draining."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServiceProcess


@pytest.fixture
def server(tiny_store: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(tmp_path / "server.log", "--shutdown-grace-s", "10", store=tiny_store) as s:
        s.wait_ready(60)
        yield s


def cancelled_count(url: str, model: str = "chat-en") -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(rf'^seq2seq_cancelled_total\{{model="{model}"\}} ([0-9.]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_live_before_ready_and_stream_disconnect_cancels(server: ServiceProcess) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "ok"}
    body = {"message": "a man runs", "stream": True, "min_length": 250, "max_length": 250}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("POST", "/chat", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("event: token")
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 5
    while cancelled_count(server.url) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_count(server.url) == 1
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'^seq2seq_active_rows\{model="chat-en"\} 0.0$', text, re.M)


def test_translate_disconnect_cancels_quietly(server: ServiceProcess) -> None:
    body = {"texts": ["Ein Mann spielt im Park."] * 64, "beam_size": 2, "min_length": 250, "max_length": 250}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{server.url}/translate", json=body, timeout=0.2)
    deadline = time.monotonic() + 5
    while cancelled_count(server.url, "translate-de-en") < 64 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_count(server.url, "translate-de-en") == 64
    server.terminate()
    log = server.log()
    assert "Traceback" not in log and "never retrieved" not in log
    assert "POST /translate 499 " in log  # the access line


def test_sigterm_drains_in_flight_requests_then_exits_0(server: ServiceProcess) -> None:
    body = {"text": "Ein Mann spielt im Park.", "min_length": 150, "max_length": 150}

    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(8)]

    def call(client: httpx.Client) -> int:
        return client.post("/translate", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, c) for c in clients]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # SIGTERM only once all 8 are accepted and decoding
            text = httpx.get(f"{server.url}/metrics").text
            if re.search(r'^seq2seq_active_rows\{model="translate-de-en"\} 8.0$', text, re.M):
                break
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in futures]
    for c in clients:
        c.close()
    assert statuses == [200] * 8  # nothing accepted is lost
    assert server.proc.wait(timeout=15) == 0
    log = server.log()
    assert "Shutting down" in log or "shutting down" in log.lower()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health/live", timeout=1)
