"""``Client`` against a real server: results, streaming, models, health and error mapping.

The bundled checkpoints are early and get replaced as training goes on, so the tests check
the shape and consistency of replies, never their wording.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from client import (
    ChatDelta,
    ChatResult,
    ChatTurn,
    Client,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Translation,
)
from seq2seq.checkpoint import store_versions
from tests.server_process import MODEL_STORE

GERMAN = ["Zwei Hunde spielen im Schnee.", "Ein Kind lacht.", "Ein Mann fährt Fahrrad auf einer Straße."]


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as c:
        yield c


def assert_translation(t: Translation) -> None:
    assert t.text.strip()
    assert t.tokens > 0
    assert t.finish_reason in ("eos", "length")


def test_health_and_ready(client: Client) -> None:
    assert client.health().status == "ok"
    readiness = client.ready()
    assert readiness.ready
    assert readiness.models == {"chat-en": "ready", "translate-de-en": "ready", "translate-fr-en": "ready"}


def test_translate_one_text(client: Client) -> None:
    result = client.translate(GERMAN[0], source_lang="de", target_lang="en")
    assert (result.model, result.version) == ("translate-de-en", store_versions(MODEL_STORE)["translate-de-en"][-1])
    (translation,) = result.translations
    assert_translation(translation)
    assert translation.alternatives is None
    assert result.usage is not None and result.usage.output_tokens == translation.tokens


def test_translate_batch_is_aligned_with_inputs(client: Client) -> None:
    batch = client.translate(GERMAN, target_lang="en")
    assert len(batch.translations) == len(GERMAN)
    for translation in batch.translations:
        assert_translation(translation)
    # Each row of the batch is its own greedy search: alone it gives the same text.
    assert client.translate(GERMAN[2], target_lang="en").translations[0].text == batch.translations[2].text


def test_translate_n_best_alternatives(client: Client) -> None:
    result = client.translate(GERMAN[:2], model="translate-de-en", beam_size=4, n_best=3)
    for translation in result.translations:
        assert translation.alternatives is not None and len(translation.alternatives) == 3
        best = translation.alternatives[0]
        assert (best.text, best.score) == (translation.text, translation.score)


def test_request_id_is_sent_and_echoed(client: Client) -> None:
    assert client.translate(GERMAN[1], target_lang="en", request_id="client-test-1").request_id == "client-test-1"
    assert client.chat("Hi", request_id="client-test-2").request_id == "client-test-2"
    generated = client.translate(GERMAN[1], target_lang="en").request_id
    assert generated and generated != "client-test-1"


def test_chat(client: Client) -> None:
    history = [ChatTurn("user", "Hello"), {"role": "assistant", "content": "Hi there."}]
    result = client.chat("How are you?", history=history, language="en")
    assert result.model == "chat-en"
    assert result.reply.strip() and result.tokens > 0 and result.finish_reason in ("eos", "length")


def test_chat_stream_deltas_concatenate_to_the_reply(client: Client) -> None:
    with client.chat_stream("Hello, how are you?", seed=3, sample=True, max_length=20) as stream:
        events = list(stream)
    *deltas, final = events
    assert isinstance(final, ChatResult) and stream.result == final
    assert deltas and all(isinstance(d, ChatDelta) for d in deltas)
    assert "".join(d.text for d in deltas) == final.reply
    # Same seed, same reply: the stream and the whole reply come from the same generation.
    assert client.chat("Hello, how are you?", seed=3, sample=True, max_length=20).reply == final.reply


def test_chat_stream_text_deltas(client: Client) -> None:
    with client.chat_stream("What is your name?") as stream:
        text = "".join(stream.text_deltas())
    assert stream.result is not None and text == stream.result.reply


def cancelled_chats(server_url: str) -> float:
    metrics = httpx.get(f"{server_url}/metrics").text
    match = re.search(r'^seq2seq_cancelled_total\{model="chat-en"\} (\S+)$', metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_leaving_a_stream_early_cancels_the_generation(client: Client, server_url: str) -> None:
    before = cancelled_chats(server_url)
    with client.chat_stream("Hello", min_length=250, max_length=250) as stream:
        for _ in stream.text_deltas():
            break
    deadline = time.monotonic() + 10
    while cancelled_chats(server_url) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_chats(server_url) == before + 1
    assert stream.result is None


def test_models(client: Client) -> None:
    models = {m.name: m for m in client.models()}
    assert set(models) == {"chat-en", "translate-de-en", "translate-fr-en"}
    translate = models["translate-de-en"]
    assert (translate.task, translate.source_lang, translate.target_lang, translate.status) == (
        "translate",
        "de",
        "en",
        "ready",
    )
    assert "translate:de-en" in translate.default_for
    assert client.model("chat-en") == models["chat-en"]


def test_unknown_model_raises_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFound) as info:
        client.translate(GERMAN[0], model="no-such-model", request_id="missing-model")
    error = info.value
    assert (error.status, error.code, error.request_id) == (404, "model_not_found", "missing-model")
    assert "no-such-model" in error.message
    with pytest.raises(ModelNotFound):
        client.model("no-such-model")


def test_unknown_language_pair_lists_what_is_available(client: Client) -> None:
    with pytest.raises(ModelNotFound) as info:
        client.translate(GERMAN[0], target_lang="fr")
    assert info.value.details["available"] == ["de->en", "fr->en"]


def test_invalid_requests_raise_invalid_request(client: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.translate("   ", target_lang="en")
    assert (info.value.status, info.value.code) == (422, "invalid_request")
    with pytest.raises(InvalidRequest, match="n_best"):
        client.translate(GERMAN[0], target_lang="en", beam_size=2, n_best=3)
    with pytest.raises(InvalidRequest):
        client.chat("")


def test_error_event_in_a_stream_raises(client: Client) -> None:
    # A deadline far shorter than the forced reply length fails after the stream has started.
    stream = client.chat_stream("Hello", min_length=200, max_length=200, timeout=0.001)
    with stream, pytest.raises(DeadlineExceeded) as info:
        list(stream)
    assert (info.value.status, info.value.code) == (504, "deadline_exceeded")
    assert stream.result is None


def test_unknown_route_is_not_found_not_model_not_found(client: Client) -> None:
    # The name is quoted into one segment, but the server decodes %2F, so /models/a/b matches no route.
    with pytest.raises(NotFound) as info:
        client.model("a/b")
    assert type(info.value) is NotFound
    assert (info.value.status, info.value.code) == (404, "not_found")
