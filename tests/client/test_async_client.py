"""``AsyncClient`` against a real server: the same calls as ``Client``, awaited, and concurrent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from client import AsyncClient, ChatDelta, ChatResult, DeadlineExceeded, InvalidRequest, ModelNotFound


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_url) as c:
        yield c


async def test_health_and_ready(client: AsyncClient) -> None:
    assert (await client.health()).status == "ok"
    assert (await client.ready()).ready


async def test_translate_single_and_batch(client: AsyncClient) -> None:
    one = await client.translate("Ein Kind lacht.", target_lang="en")
    assert one.model == "translate-de-en" and len(one.translations) == 1
    batch = await client.translate(["Ein Kind lacht.", "Zwei Hunde spielen im Schnee."], beam_size=3, n_best=2)
    assert len(batch.translations) == 2
    assert all(t.alternatives is not None and len(t.alternatives) == 2 for t in batch.translations)


async def test_concurrent_requests_share_one_client(client: AsyncClient) -> None:
    texts = ["Ein Kind lacht.", "Zwei Hunde spielen im Schnee.", "Ein Mann fährt Fahrrad."]
    results = await asyncio.gather(*(client.translate(t, target_lang="en") for t in texts))
    assert [len(r.translations) for r in results] == [1, 1, 1]
    assert len({r.request_id for r in results}) == 3


async def test_chat_and_stream(client: AsyncClient) -> None:
    whole = await client.chat("Hello, how are you?", seed=5, sample=True, max_length=20)
    async with client.chat_stream("Hello, how are you?", seed=5, sample=True, max_length=20) as stream:
        events = [event async for event in stream]
    *deltas, final = events
    assert all(isinstance(d, ChatDelta) for d in deltas) and isinstance(final, ChatResult)
    assert "".join(d.text for d in deltas) == final.reply == whole.reply
    assert stream.result == final


async def test_stream_text_deltas(client: AsyncClient) -> None:
    async with client.chat_stream("What is your name?") as stream:
        text = "".join([t async for t in stream.text_deltas()])
    assert stream.result is not None and text == stream.result.reply


async def test_models(client: AsyncClient) -> None:
    names = [m.name for m in await client.models()]
    assert sorted(names) == ["chat-en", "translate-de-en", "translate-fr-en"]
    assert (await client.model("translate-de-en")).task == "translate"


async def test_errors(client: AsyncClient) -> None:
    with pytest.raises(ModelNotFound):
        await client.chat("Hi", model="no-such-model")
    with pytest.raises(InvalidRequest):
        await client.translate("", target_lang="en")
    async with client.chat_stream("Hello", min_length=200, max_length=200, timeout=0.001) as stream:
        with pytest.raises(DeadlineExceeded):
            [event async for event in stream]
