"""POST /translate with return_attention: the matrix, its axes, and the models that have none."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq.tokenizer import Tokenizer
from tests.service.conftest import AppClient

GERMAN = "Ein Mann spielt mit einem Hund im Park."
OTHER = "Zwei Kinder laufen auf der Straße."


def source_pieces(tiny_store: Path, text: str) -> list[str]:
    tokenizer = Tokenizer.load(tiny_store / "translate-de-en" / "1" / "source.model")
    return tokenizer.pieces(tokenizer.encode(text))


def assert_matrix(attention: dict, source: list[str], tokens: int) -> None:
    """Axes as the pieces say, one row per generated piece, each a distribution over the source."""
    assert attention["source"] == source
    assert len(attention["target"]) == tokens
    weights = attention["weights"]
    assert len(weights) == tokens
    for row in weights:
        assert len(row) == len(source)
        assert all(0 <= w <= 1 for w in row)
        assert sum(row) == pytest.approx(1, abs=0.0005 * len(source) + 1e-9)  # rounded to 3 decimals


async def test_greedy_translation_with_its_attention_matrix(app_client: AppClient, tiny_store: Path) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", json={"text": GERMAN, "model": "translate-de-en", "return_attention": True})
        assert r.status_code == 200, r.text
        (t,) = r.json()["translations"]
        assert_matrix(t["attention"], source_pieces(tiny_store, GERMAN), t["tokens"])
        assert any(w not in (0, 1) for row in t["attention"]["weights"] for w in row), "weights, not one-hot"
        plain = (await client.post("/translate", json={"text": GERMAN, "model": "translate-de-en"})).json()
        assert plain["translations"][0]["attention"] is None  # only when asked
        assert plain["translations"][0]["text"] == t["text"]


async def test_every_alternative_of_a_beam_search_has_its_own_matrix(app_client: AppClient, tiny_store: Path) -> None:
    async with app_client() as (client, _):
        body = {"text": GERMAN, "beam_size": 4, "n_best": 3, "max_length": 12, "return_attention": True}
        r = await client.post("/translate", json=body)
        assert r.status_code == 200, r.text
        (t,) = r.json()["translations"]
        source = source_pieces(tiny_store, GERMAN)
        alternatives = t["alternatives"]
        assert len(alternatives) == 3
        for alternative in alternatives:
            assert_matrix(alternative["attention"], source, len(alternative["attention"]["target"]))
        assert alternatives[0]["attention"] == t["attention"]  # the translation is the best alternative
        assert_matrix(t["attention"], source, t["tokens"])
        assert len({tuple(a["attention"]["target"]) for a in alternatives}) == 3


async def test_sampled_translations_have_their_matrix(app_client: AppClient, tiny_store: Path) -> None:
    async with app_client() as (client, _):
        body = {"text": GERMAN, "sample": True, "seed": 3, "max_length": 15, "return_attention": True}
        first = (await client.post("/translate", json=body)).json()["translations"][0]
        again = (await client.post("/translate", json=body)).json()["translations"][0]
        assert_matrix(first["attention"], source_pieces(tiny_store, GERMAN), first["tokens"])
        assert again["attention"] == first["attention"]


async def test_a_texts_matrix_is_the_same_alone_and_in_a_batch(app_client: AppClient, tiny_store: Path) -> None:
    async with app_client() as (client, _):
        body = {"model": "translate-de-en", "return_attention": True, "beam_size": 2}
        batch = (await client.post("/translate", json={**body, "texts": [GERMAN, OTHER]})).json()["translations"]
        for text, batched in zip([GERMAN, OTHER], batch, strict=True):
            solo = (await client.post("/translate", json={**body, "text": text})).json()["translations"][0]
            assert batched["attention"]["source"] == source_pieces(tiny_store, text)
            assert batched["attention"]["target"] == solo["attention"]["target"]
            for got, want in zip(batched["attention"]["weights"], solo["attention"]["weights"], strict=True):
                assert got == pytest.approx(want, abs=0.0011)  # the last rounded digit may differ


async def test_a_model_without_attention_is_a_422_that_says_why(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.post(
            "/translate", json={"text": GERMAN, "model": "translate-de-en-basic", "return_attention": True}
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request"
        assert "attention model" in error["message"] and "translate-de-en-basic" in error["message"]
        assert error["details"] == {"architecture": "context-init"}
        # The same model without the option translates as ever.
        r = await client.post("/translate", json={"text": GERMAN, "model": "translate-de-en-basic"})
        assert r.status_code == 200


@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_return_attention_is_a_json_boolean(app_client: AppClient, value: object) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", json={"text": GERMAN, "return_attention": value})
        assert r.status_code == 422, r.text
        assert "return_attention" in r.json()["error"]["message"]


async def test_the_matrix_crosses_from_an_engine_process(app_client: AppClient, tiny_store: Path) -> None:
    async with app_client(engine_process=True) as (client, _):
        r = await client.post("/translate", json={"text": GERMAN, "model": "translate-de-en", "return_attention": True})
        assert r.status_code == 200, r.text
        (t,) = r.json()["translations"]
        assert_matrix(t["attention"], source_pieces(tiny_store, GERMAN), t["tokens"])
