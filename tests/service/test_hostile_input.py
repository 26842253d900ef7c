"""Hostile input, table-driven: every body is a 200 or a clear 4xx in the common error shape, never
a 5xx, and the server still serves after each."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.service.conftest import AppClient

NUMERIC = ["beam_size", "n_best", "length_penalty", "temperature", "top_k", "top_p", "seed", "max_length"]
NUMERIC += ["min_length", "timeout"]
HUGE = [10**30, -(10**30), 2**63, 1e308, -1e308]

SURROGATE_BODIES = [
    ("/translate", '{"text": "\\ud800"}'),
    ("/translate", '{"texts": ["Ein Hund.", "\\udfff"]}'),
    ("/translate", '{"text": "a", "source_lang": "\\ud800"}'),
    ("/translate", '{"text": "a", "target_lang": "\\ud800"}'),
    ("/translate", '{"text": "a", "model": "\\ud800"}'),
    ("/chat", '{"message": "\\ud800"}'),
    ("/chat", '{"message": "\\ud800", "stream": true}'),
    ("/chat", '{"message": "a", "language": "\\udbff"}'),
    ("/chat", '{"message": "a", "history": [{"role": "user", "content": "\\ud800"}]}'),
]


async def post(client, route: str, content: bytes, content_type: str = "application/json", **headers: str):
    return await client.post(route, content=content, headers={"content-type": content_type, **headers})


def assert_clear_4xx(r, status: int = 422) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] and error["message"]
    return error


async def assert_still_serving(client) -> None:
    r = await client.post("/translate", json={"text": "Ein Hund läuft.", "max_length": 8})
    assert r.status_code == 200
    assert (await client.get("/health/ready")).status_code == 200


async def test_lone_surrogates_and_cesu8_bytes_are_422(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        for route, body in SURROGATE_BODIES:
            error = assert_clear_4xx(await post(client, route, body.encode()))
            assert "unicode" in error["message"].lower(), (route, body)
        cesu8 = b'{"text": "\xed\xa0\x80"}'  # a surrogate encoded as if it were a character
        assert "not valid Unicode" in assert_clear_4xx(await post(client, "/translate", cesu8))["message"]
        invalid_utf8 = b'{"text": "\xff\xfe"}'
        assert_clear_4xx(await post(client, "/translate", invalid_utf8))
        await assert_still_serving(client)


@pytest.mark.parametrize("field", NUMERIC)
async def test_huge_numbers_in_every_numeric_field_are_422(app_client: AppClient, field: str) -> None:
    async with app_client() as (client, _):
        for value in HUGE:
            body = {"text": "Ein Hund.", "sample": field in ("temperature", "top_k", "top_p", "seed"), field: value}
            r = await client.post("/translate", json=body)
            error = assert_clear_4xx(r)
            assert field in error["message"], (field, value, error)
        await assert_still_serving(client)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"sample": True, "temperature": 1e-300}, "temperature"),
        ({"sample": True, "top_p": 5e-324}, "top_p"),
        ({"sample": True, "top_k": 61}, "vocabulary of 60"),  # the tiny model's
        ({"sample": True, "top_k": 9223372036854775808}, "vocabulary"),
    ],
)
async def test_values_where_float32_sampling_breaks_down_are_422(
    app_client: AppClient, body: dict, fragment: str
) -> None:
    async with app_client() as (client, _):
        error = assert_clear_4xx(await client.post("/translate", json={"text": "Ein Hund.", **body}))
        assert fragment in error["message"]
        ok = await client.post("/translate", json={"text": "Ein Hund.", "sample": True, "temperature": 0.01, "seed": 1})
        assert ok.status_code == 200 and ok.json()["translations"][0]["text"]


async def test_control_characters_long_tokens_many_texts_and_odd_bodies(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        for text in ("a\u0000b", "\x01\x02\x1b[31m", "\u202eEin Hund\u202c", "🐕" * 50, "Ein\tHund\r\n", "\ufeffEin"):
            r = await client.post("/translate", json={"text": text, "max_length": 8})
            assert r.status_code in (200, 422), (text, r.text)
        long_token = await client.post("/translate", json={"text": "x" * 100_000})
        assert "characters" in assert_clear_4xx(long_token)["message"]
        many = await client.post("/translate", json={"texts": ["Ein Hund."] * 10_000})
        assert "limit" in assert_clear_4xx(many)["message"]
        deep = await post(client, "/translate", b'{"text": ' + b"[" * 5_000 + b'"x"' + b"]" * 5_000 + b"}")
        assert_clear_4xx(deep)
        assert_clear_4xx(await post(client, "/translate", b"text=Ein+Hund", "application/x-www-form-urlencoded"))
        assert_clear_4xx(await post(client, "/translate", b"Ein Hund.", "text/plain"))
        gzipped = gzip.compress(json.dumps({"text": "Ein Hund."}).encode())
        assert_clear_4xx(await post(client, "/translate", gzipped, **{"content-encoding": "gzip"}))
        assert_clear_4xx(await post(client, "/translate", b""))
        assert_clear_4xx(await post(client, "/translate", b"null"))
        assert_clear_4xx(await post(client, "/chat", b'{"message": "hi", "history": [{"role": "system"}]}'))
        await assert_still_serving(client)


def test_silent_characters_are_exactly_those_every_tokenizer_drops(tiny_store) -> None:
    """The schema's pattern for texts (something to tokenize) matches the tokenizers themselves."""
    import re

    from seq2seq.tokenizer import Tokenizer
    from service.schemas import SILENT_CHARACTERS
    from tests.server_process import MODEL_STORE

    silent = re.compile(f"[{SILENT_CHARACTERS}]")
    paths = sorted(MODEL_STORE.glob("*/*/source.model")) + sorted(tiny_store.glob("*/*/source.model"))
    for path in paths:
        tokenizer = Tokenizer.load(path)
        for code in range(0x30000):
            if 0xD800 <= code <= 0xDFFF:
                continue
            char = chr(code)
            assert (not tokenizer.encode(char)) == bool(silent.fullmatch(char)), (path, hex(code))
