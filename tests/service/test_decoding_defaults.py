"""Decoding defaults that come from the model (``no_repeat_ngram_size``, ``length_penalty``,
``mmi_weight``: chosen on val, in the manifest), the end mark, and MMI reranking with the model's
backward model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from seq2seq.checkpoint import load_model_dir
from seq2seq.decoding import DecodeParams, source_length_cap
from seq2seq.generation import GenerationRequest, generate
from tests.seq2seq.test_no_repeat import repeats
from tests.service.conftest import AppClient

TEXTS = ["Ein Mann spielt im Park mit einem Hund.", "Zwei Kinder laufen auf der Straße.", "Ein Hund."]


def with_decoding(tiny_store: Path, tmp_path: Path, decoding: dict, model: str = "translate-de-en-basic") -> Path:
    """A copy of the tiny store whose ``model`` has these decoding defaults in its manifest."""
    store = Path(shutil.copytree(tiny_store, tmp_path / "model_store"))
    path = store / model / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "decoding": {**manifest.get("decoding", {}), **decoding}}))
    return store


async def tokens(client, **options) -> list[list[str]]:
    r = await client.post(
        "/translate", json={"texts": TEXTS, "model": "translate-de-en-basic", "max_length": 20, **options}
    )
    assert r.status_code == 200, r.text
    return [t["text"].split() for t in r.json()["translations"]]


async def test_the_models_no_repeat_default_applies_unless_the_request_sets_it(
    app_client: AppClient, tiny_store: Path, tmp_path: Path
):
    store = with_decoding(tiny_store, tmp_path, {"no_repeat_ngram_size": 2})
    async with app_client(model_store=store) as (client, _):
        default, off, beam = (
            await tokens(client),
            await tokens(client, no_repeat_ngram_size=0),
            await tokens(client, beam_size=3),
        )
    assert any(repeats(words, 2) for words in off)  # the tiny random model repeats itself
    assert not any(repeats(words, 2) for words in default + beam)
    async with app_client(model_store=tiny_store) as (client, _):  # no default in the manifest: off
        assert await tokens(client) == off


async def test_no_repeat_ngram_size_out_of_range_is_422(app_client: AppClient):
    async with app_client() as (client, _):
        for value in (9, -1, "3", True, 2.5):
            r = await client.post("/translate", json={"text": TEXTS[0], "no_repeat_ngram_size": value})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (value, r.text)


async def test_the_models_end_mark_ends_a_source_that_ends_no_sentence(
    app_client: AppClient, tiny_store: Path, tmp_path: Path
):
    store = Path(shutil.copytree(tiny_store, tmp_path / "model_store"))
    path = store / "translate-de-en" / "1" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "preprocessing": {"end_mark": "."}}))

    async def translate(client, text: str) -> dict:
        r = await client.post("/translate", json={"text": text, "model": "translate-de-en", "max_length": 20})
        assert r.status_code == 200, r.text
        return r.json()

    async with app_client(model_store=store) as (client, _):
        bare, ended = (
            await translate(client, "Ein Mann spielt im Park"),
            await translate(client, "Ein Mann spielt im Park."),
        )
    assert bare["translations"] == ended["translations"] and bare["usage"] == ended["usage"]
    async with app_client(model_store=tiny_store) as (client, _):  # no mark declared: the source as it is
        plain = await translate(client, "Ein Mann spielt im Park")
    assert plain["usage"]["input_tokens"] < ended["usage"]["input_tokens"]


MESSAGES = ["a man runs in the park", "two dogs", "the woman plays with a red ball", "hello"]


def offline_replies(store: Path, mmi_weight: float, beam_size: int = 4, length_penalty: float = 1.0) -> list[str]:
    """The tiny chat model's replies decoded here, as the server should decode them."""
    loaded = load_model_dir(store / "chat-en" / "1")
    tok = loaded.source_tokenizer
    requests = []
    for i, message in enumerate(MESSAGES):
        ids = tok.encode(message)
        params = DecodeParams(
            max_length=source_length_cap(len(ids)),
            min_length=1,
            beam_size=beam_size,
            length_penalty=length_penalty,
            mmi_weight=mmi_weight,
        )
        requests.append(GenerationRequest(str(i), ids, params))
    results = generate(loaded.model, requests, backward=loaded.backward)
    return [loaded.target_tokenizer.decode(results[str(i)][0].tokens) for i in range(len(MESSAGES))]


async def replies(client, **options) -> list[str]:
    out = []
    for message in MESSAGES:
        r = await client.post("/chat", json={"message": message, "model": "chat-en", **options})
        assert r.status_code == 200, r.text
        out.append(r.json()["reply"])
    return out


async def test_mmi_reranks_the_beams_with_the_models_backward_model(app_client: AppClient, tiny_store: Path):
    plain, reranked = offline_replies(tiny_store, 0.0), offline_replies(tiny_store, 0.9)
    assert plain != reranked  # the tiny backward model prefers other replies
    async with app_client(model_store=tiny_store) as (client, _):
        assert await replies(client, beam_size=4, mmi_weight=0.9) == reranked
        assert await replies(client, beam_size=4) == plain  # no default in the manifest: off
        info = (await client.get("/models/chat-en")).json()
        assert info["mmi_reranking"] is True
        assert (await client.get("/models/translate-de-en")).json()["mmi_reranking"] is False


async def test_the_models_mmi_default_reranks_beams_only(app_client: AppClient, tiny_store: Path, tmp_path: Path):
    store = with_decoding(tiny_store, tmp_path, {"mmi_weight": 0.9}, model="chat-en")
    async with app_client(model_store=store) as (client, _):
        assert await replies(client, beam_size=4) == offline_replies(store, 0.9)
        assert await replies(client, beam_size=4, mmi_weight=0) == offline_replies(store, 0.0)
        greedy = await replies(client)  # nothing to rerank: the default does not apply
    assert greedy == offline_replies(store, 0.0, beam_size=1)


async def test_mmi_weight_without_beams_or_backward_model_is_422(app_client: AppClient):
    async with app_client() as (client, _):
        r = await client.post("/chat", json={"message": "hello", "mmi_weight": 0.5})
        assert r.status_code == 422 and "needs beam_size > 1" in r.json()["error"]["message"]
        r = await client.post("/translate", json={"text": TEXTS[0], "beam_size": 3, "mmi_weight": 0.5})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == (
            "mmi_weight needs a model that ships a backward model p(input | output); translate-de-en has none"
        )
        for value in (1.5, -0.1, "0.5", True):
            r = await client.post("/chat", json={"message": "hello", "beam_size": 2, "mmi_weight": value})
            assert r.status_code == 422, value


@pytest.mark.parametrize("engine_process", [False, True], ids=["thread", "process"])
async def test_a_streamed_mmi_reply_is_the_reranked_one_in_a_single_done_event(
    app_client: AppClient, tiny_store: Path, engine_process: bool
):
    """Beams stream no tokens: the SSE stream of an MMI request is its done event, with the
    reranked reply, from an engine on a thread and from one in a process of its own."""
    expected = offline_replies(tiny_store, 0.9)[0]
    async with app_client(model_store=tiny_store, engine_process=engine_process) as (client, _):
        body = {"message": MESSAGES[0], "model": "chat-en", "beam_size": 4, "mmi_weight": 0.9, "stream": True}
        async with client.stream("POST", "/chat", json=body) as s:
            assert s.status_code == 200
            raw = (await s.aread()).decode()
    events = [block for block in raw.split("\n\n") if block.strip()]
    assert len(events) == 1 and events[0].startswith("event: done\n")
    assert json.loads(events[0].split("\n")[1].removeprefix("data: "))["reply"] == expected


async def test_the_models_length_penalty_ranks_the_beams_unless_the_request_sets_one(
    app_client: AppClient, tiny_store: Path, tmp_path: Path
):
    long, plain = offline_replies(tiny_store, 0.0, length_penalty=5.0), offline_replies(tiny_store, 0.0)
    assert long != plain  # alpha changes the tiny model's choice
    store = with_decoding(tiny_store, tmp_path, {"length_penalty": 5.0}, model="chat-en")
    async with app_client(model_store=store) as (client, _):
        assert await replies(client, beam_size=4) == long
        assert await replies(client, beam_size=4, length_penalty=1.0) == plain
    async with app_client(model_store=tiny_store) as (client, _):  # no default in the manifest: 1.0
        assert await replies(client, beam_size=4) == plain
