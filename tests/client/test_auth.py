"""The client and the CLI against a real server that asks for API keys (tiny test models)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from client import API_KEY_ENV, AsyncClient, Client, Forbidden, RateLimited, Retry, Unauthorized
from tests.client.test_cli import seq2seq
from tests.server_process import ServiceProcess
from tests.tiny_models import make_tiny_store

INFER = "client-infer-key-0123456789"
ADMIN = "client-admin-key-0123456789"
LIMITED = "client-limited-key-0123456789"  # one request per second, no burst
GERMAN = "Ein Mann spielt mit einem Hund im Park."


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "api-keys"
    keys.write_text(f"app {INFER} infer\nops {ADMIN} admin\nlimited {LIMITED} infer rps=1 burst=1\n")
    args = ["--api-keys-file", str(keys), "--engine-process", "false", "--shutdown-grace-s", "2"]
    with ServiceProcess(root / "server.log", *args, store=make_tiny_store(root / "store")) as server:
        server.wait_ready(60)
        yield server.url


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def test_the_key_is_sent_as_a_bearer_token(keyed_url: str) -> None:
    with Client(keyed_url, api_key=INFER) as c:
        assert {m.name for m in c.models()} >= {"translate-de-en", "chat-en"}
        assert c.translate(GERMAN, target_lang="en", max_length=5).translations[0].text is not None
        assert c.health().status == "ok"
    with Client(keyed_url) as c:
        assert c.health().status == "ok"  # the probes need no key
        with pytest.raises(Unauthorized) as info:
            c.models()
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with Client(keyed_url, api_key="not-the-key-0123456789") as c, pytest.raises(Unauthorized):
        c.translate(GERMAN, target_lang="en")
    with Client(keyed_url, api_key=ADMIN) as c, pytest.raises(Forbidden) as forbidden:
        c.chat("Hello there")
    assert forbidden.value.status == 403 and "'infer'" in forbidden.value.message
    assert INFER not in str(info.value) and ADMIN not in str(forbidden.value)


def test_the_key_comes_from_the_environment(keyed_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, INFER)
    with Client(keyed_url) as c:
        assert c.models()
    with Client(keyed_url, api_key="") as c, pytest.raises(Unauthorized):  # "": send none
        c.models()


async def test_async_client_sends_the_key(keyed_url: str) -> None:
    async with AsyncClient(keyed_url, api_key=INFER) as c:
        reply = await c.chat("Hello there", max_length=4)
        assert reply.tokens <= 4
        async for _ in c.chat_stream("Hello there", max_length=3):
            pass
    async with AsyncClient(keyed_url) as c:
        with pytest.raises(Unauthorized):
            await c.models()


def test_a_rate_limited_key_is_told_when_and_retried_after_it(keyed_url: str) -> None:
    with Client(keyed_url, api_key=LIMITED, retry=Retry(max_attempts=1)) as c:
        c.models()
        with pytest.raises(RateLimited) as info:
            c.models()
    assert (info.value.status, info.value.code) == (429, "rate_limited")
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with Client(keyed_url, api_key=LIMITED, retry=Retry(max_attempts=4, max_backoff=2), sleep=sleep) as c:
        for _ in range(2):  # the second call is refused, waits as Retry-After says, then passes
            assert c.models()
    assert waits and all(w >= 1 for w in waits)


def test_cli_takes_the_key_from_a_flag_or_the_environment(keyed_url: str) -> None:
    refused = seq2seq("models", url=keyed_url)
    assert refused.returncode == 1 and "error (unauthorized)" in refused.stderr
    for args, env in [
        (["--api-key", INFER, "models"], None),
        (["models", "--api-key", INFER], None),  # after the command, like --url
        (["models"], {API_KEY_ENV: INFER}),
    ]:
        done = seq2seq(*args, url=keyed_url, env=env)
        assert done.returncode == 0, done.stderr
        assert "translate-de-en" in done.stdout
    done = seq2seq("chat", "Hello there", "--api-key", ADMIN, url=keyed_url)
    assert done.returncode == 1 and "error (forbidden)" in done.stderr
    assert ADMIN not in done.stderr
