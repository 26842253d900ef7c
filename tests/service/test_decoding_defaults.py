"""Decoding defaults that come from the model: ``no_repeat_ngram_size`` chosen on val, in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.seq2seq.test_no_repeat import repeats
from tests.service.conftest import AppClient

TEXTS = ["Ein Mann spielt im Park mit einem Hund.", "Zwei Kinder laufen auf der Straße.", "Ein Hund."]


def with_decoding(tiny_store: Path, tmp_path: Path, decoding: dict) -> Path:
    store = Path(shutil.copytree(tiny_store, tmp_path / "model_store"))
    path = store / "translate-de-en-basic" / "1" / "manifest.json"
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
