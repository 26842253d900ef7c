"""HTTP limits on the real server: the request head's size and field count, how long a client may
take to send a request, idle kept-alive connections, and the page's security headers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServiceProcess

LIMITS = ("--header-timeout-s", "1", "--body-timeout-s", "1", "--keep-alive-s", "1")
LIMITS += ("--max-header-bytes", "8192", "--max-headers", "50")


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with ServiceProcess(tmp_path_factory.mktemp("limits") / "server.log", *LIMITS, store=tiny_store) as s:
        s.wait_ready(60)
        yield s


def connect(server: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request_head(*headers: str, body: bytes = b"") -> bytes:
    lines = ["POST /translate HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    "headers",
    [(f"X-Big: {'a' * 1_000_000}",), tuple(f"X-{i}: v" for i in range(10_000))],
    ids=["a 1 MB header", "10,000 headers"],
)
def test_an_oversized_head_is_431(server: ServiceProcess, headers: tuple[str, ...]) -> None:
    with connect(server) as sock:
        try:
            sock.sendall(request_head(*headers))
        except (BrokenPipeError, ConnectionResetError):  # closed while we were still sending
            pass
        answer = reply(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{server.url}/health/ready").status_code == 200


def test_a_head_just_within_the_limits_is_served(server: ServiceProcess) -> None:
    headers = [f"X-{i}: {'v' * 100}" for i in range(40)]
    r = httpx.post(f"{server.url}/translate", json={"text": "Ein Hund."}, headers=dict(h.split(": ") for h in headers))
    assert r.status_code == 200


def test_a_client_that_trickles_its_head_or_body_is_cut_off_with_408(server: ServiceProcess) -> None:
    for partial in (request_head()[:20], request_head(body=b'{"text": "Ein Hund."}')[:-5], b""):
        with connect(server) as sock:
            sock.sendall(partial)
            t0 = time.monotonic()
            answer = reply(sock)
            waited = time.monotonic() - t0
        assert waited < 5, partial  # the 1 s limit, not the client, ended it
        if partial:
            assert answer.startswith(b"HTTP/1.1 408 "), (partial, answer[:200])


def test_an_idle_kept_alive_connection_is_closed(server: ServiceProcess) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(body=b'{"text": "Ein Hund."}'))
        t0 = time.monotonic()
        answer = reply(sock)  # one reply, then nothing: the server closes after --keep-alive-s
        assert time.monotonic() - t0 < 5
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1


def test_the_page_and_every_reply_carry_security_headers(server: ServiceProcess) -> None:
    page = httpx.get(f"{server.url}/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    error = httpx.post(f"{server.url}/translate", json={})
    assert error.status_code == 422 and error.headers["x-content-type-options"] == "nosniff"
