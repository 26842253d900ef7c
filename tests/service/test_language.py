"""Requests without a source language reach the model of the text's language (the bundled models)."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from service.app import create_app
from service.registry import identify_language
from service.settings import Settings

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"
MODELS = ["translate-de-en", "translate-fr-en", "chat-en", "chat-ko"]
pytestmark = pytest.mark.asyncio(loop_scope="module")  # one server for the module's tests


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client():
    settings = Settings(models=MODELS, threads=1, engine_process=False, restart_engines=False)
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c, app


@pytest.mark.parametrize(
    ("text", "model", "source"),
    [
        ("Zwei Hunde spielen im Schnee.", "translate-de-en", "de"),
        ("Deux chiens jouent dans la neige.", "translate-fr-en", "fr"),
        ("Ein Mann.", "translate-de-en", "de"),
        ("Un homme.", "translate-fr-en", "fr"),
    ],
)
async def test_translate_without_source_lang_reaches_the_texts_language(client, text, model, source) -> None:
    c, _ = client
    r = await c.post("/translate", json={"text": text, "target_lang": "en"})
    assert r.status_code == 200, r.text
    assert (r.json()["model"], r.json()["source_lang"], r.json()["target_lang"]) == (model, source, "en")


async def test_chat_without_language_reaches_the_messages_language(client) -> None:
    c, _ = client
    korean = await c.post("/chat", json={"message": "오늘 너무 피곤해"})
    english = await c.post("/chat", json={"message": "Hello, how are you?"})
    assert (korean.json()["model"], korean.json()["language"]) == ("chat-ko", "ko")
    assert (english.json()["model"], english.json()["language"]) == ("chat-en", "en")


async def test_a_text_whose_language_is_unclear_is_422_with_the_choices(client) -> None:
    c, _ = client
    r = await c.post("/translate", json={"text": "Berlin", "target_lang": "en"})  # a name in both
    assert r.status_code == 422
    error = r.json()["error"]
    assert "cannot tell the language" in error["message"] and error["details"]["languages"] == ["de", "fr"]
    given = await c.post("/translate", json={"text": "Berlin", "source_lang": "fr", "target_lang": "en"})
    assert given.status_code == 200 and given.json()["model"] == "translate-fr-en"  # naming it always works


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
async def test_identification_on_the_multi30k_test_sets(client) -> None:
    _, app = client
    entries = [app.state.registry.entries[name] for name in ("translate-de-en", "translate-fr-en")]
    for language in ("de", "fr"):
        with gzip.open(DATA / f"test_2016_flickr.{language}.gz", "rt") as f:
            sentences = [line.strip() for line in f][:500]
        assert all(identify_language(s, entries) == language for s in sentences)
