"""HTTP surface: every endpoint, and every kind of bad input, through the real app."""

from __future__ import annotations

import gc
import json
import shutil

import pytest

from tests.service.conftest import AppClient

GERMAN = "Ein Mann spielt mit einem Hund im Park."


async def test_translate_single_and_batch(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", json={"text": GERMAN, "source_lang": "de", "target_lang": "en"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "translate-de-en"  # default for de-en: highest BLEU in its manifest
        assert body["version"] == "1"
        (t,) = body["translations"]
        assert t["tokens"] > 0 and t["score"] < 0 and t["finish_reason"] in ("eos", "length")
        assert t["alternatives"] is None
        assert body["usage"]["output_tokens"] == t["tokens"]

        r = await client.post("/translate", json={"texts": [GERMAN, "Zwei Kinder laufen."], "model": "translate-de-en"})
        assert r.status_code == 200
        batch = r.json()["translations"]
        assert len(batch) == 2
        assert batch[0]["text"] == t["text"]  # same greedy output alone and in a batch


async def test_translate_beam_n_best(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", json={"text": GERMAN, "beam_size": 4, "n_best": 3, "max_length": 12})
        assert r.status_code == 200, r.text
        t = r.json()["translations"][0]
        alts = t["alternatives"]
        assert len(alts) == 3
        assert alts[0]["text"] == t["text"]
        assert len({a["text"] for a in alts}) == 3
        assert alts[0]["score"] == t["score"]  # the translation is the best alternative


async def test_sampling_is_reproducible_with_seed(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        req = {"text": GERMAN, "sample": True, "seed": 7, "temperature": 1.5, "top_k": 20, "max_length": 15}
        a = (await client.post("/translate", json=req)).json()["translations"][0]["text"]
        b = (await client.post("/translate", json=req)).json()["translations"][0]["text"]
        assert a == b
        others = {
            (await client.post("/translate", json={**req, "seed": seed})).json()["translations"][0]["text"]
            for seed in range(8, 16)
        }
        assert len(others | {a}) > 1  # the seed, not the input alone, decides the sample


async def test_chat_and_stream(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.post("/chat", json={"message": "a man runs", "language": "en", "max_length": 10})
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["model"] == "chat-en" and reply["tokens"] > 0

        async with client.stream(
            "POST", "/chat", json={"message": "a man runs", "stream": True, "max_length": 10}
        ) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            raw = (await s.aread()).decode()
        events = [block for block in raw.split("\n\n") if block.strip()]
        parsed = [
            (e.split("\n")[0].removeprefix("event: "), json.loads(e.split("\n")[1].removeprefix("data: ")))
            for e in events
        ]
        kinds = [k for k, _ in parsed]
        assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
        deltas = "".join(d["text"] for k, d in parsed if k == "token")
        final = parsed[-1][1]
        assert deltas == final["reply"] == reply["reply"]  # streamed deltas rebuild the same reply


async def test_bfloat16_models_serve_the_same_api(app_client: AppClient) -> None:
    async with app_client(dtype="bfloat16", models=["translate-de-en", "chat-en"]) as (client, _):
        models = (await client.get("/models")).json()["models"]
        assert {(m["quantization"], m["dtype"]) for m in models} == {("none", "bfloat16")}
        reply = await client.post("/translate", json={"texts": [GERMAN, "Hallo"], "beam_size": 3, "n_best": 2})
        assert reply.status_code == 200
        for t in reply.json()["translations"]:
            assert t["finish_reason"] in ("eos", "length") and t["alternatives"][0]["text"] == t["text"]
        chat = await client.post("/chat", json={"message": "hello"})
        assert chat.status_code == 200 and chat.json()["reply"] is not None


async def test_int8_quantised_models_serve_the_same_api(app_client: AppClient) -> None:
    async with app_client(quantize="int8", models=["translate-de-en", "chat-en"]) as (client, _):
        models = (await client.get("/models")).json()["models"]
        assert {(m["name"], m["quantization"]) for m in models} == {("translate-de-en", "int8"), ("chat-en", "int8")}
        reply = await client.post("/translate", json={"texts": [GERMAN, "Hallo"], "beam_size": 3})
        assert reply.status_code == 200
        assert [t["finish_reason"] in ("eos", "length") for t in reply.json()["translations"]] == [True, True]
        chat = await client.post("/chat", json={"message": "hello"})
        assert chat.status_code == 200 and chat.json()["reply"] is not None


async def test_the_start_up_heap_is_frozen_once_models_are_loaded(app_client: AppClient) -> None:
    gc.unfreeze()
    try:
        async with app_client() as (client, _):
            assert (await client.get("/health/ready")).status_code == 200
            # Everything alive after start-up (torch, the app, the loaded models) is out of the collector's reach.
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


async def test_models_health_metrics_docs(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        models = (await client.get("/models")).json()["models"]
        by_name = {m["name"]: m for m in models}
        assert set(by_name) == {"translate-de-en", "translate-de-en-basic", "chat-en"}
        assert by_name["translate-de-en"]["default_for"] == ["translate:de-en"]
        assert by_name["translate-de-en-basic"]["architecture"] == "context-init"
        assert all(m["status"] == "ready" for m in models)
        assert {(m["device"], m["quantization"], m["dtype"]) for m in models} == {("cpu", "none", "float32")}
        one = await client.get("/models/chat-en")
        assert one.status_code == 200 and one.json()["task"] == "chat"
        missing = await client.get("/models/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        assert "chat-en" in missing.json()["error"]["message"]

        assert (await client.get("/health/live")).json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        await client.post("/translate", json={"text": GERMAN})
        text = (await client.get("/metrics")).text
        assert 'seq2seq_requests_total{route="/translate",status="200"} 1.0' in text
        for name in (
            "seq2seq_queue_depth",
            "seq2seq_active_rows",
            "seq2seq_batch_size_bucket",
            "seq2seq_generated_tokens_total",
            "seq2seq_request_latency_seconds_bucket",
        ):
            assert name in text

        spec = (await client.get("/openapi.json")).json()
        assert "examples" in json.dumps(spec["components"]["schemas"]["TranslateRequest"])
        assert (await client.get("/docs")).status_code == 200


async def test_request_id_is_echoed_or_created(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        r = await client.post("/translate", json={"text": ""})
        assert len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"text": ""}, 422, "invalid_request", "empty"),
        ({"text": "   \n "}, 422, "invalid_request", "empty"),
        ({"texts": []}, 422, "invalid_request", "texts"),
        ({"texts": ["a"] * 65}, 422, "invalid_request", "limit is 64"),
        ({"text": "x" * 2001}, 422, "invalid_request", "2001 characters"),
        ({"text": "ein " * 300}, 422, "invalid_request", "tokens long"),
        ({"text": "a", "beam": 3}, 422, "invalid_request", "beam: unknown field"),
        ({"text": "a", "beam_size": 0}, 422, "invalid_request", "beam_size"),
        ({"text": "a", "top_p": 1.5}, 422, "invalid_request", "top_p"),
        ({"text": "a", "beam_size": 2, "n_best": 3}, 422, "invalid_request", "n_best"),
        ({"text": "a", "beam_size": 2, "sample": True}, 422, "invalid_request", "sample"),
        ({"text": "a", "beam_size": 9}, 422, "invalid_request", "limit of 8"),
        ({"text": "a", "text2": "b"}, 422, "invalid_request", "unknown field"),
        ({"text": "a", "texts": ["b"]}, 422, "invalid_request", "exactly one"),
        ({"text": "a", "model": "nope"}, 404, "model_not_found", "available"),
        ({"text": "a", "source_lang": "xx", "target_lang": "en"}, 404, "model_not_found", "de->en"),
        ({"text": "a", "model": "chat-en"}, 404, "model_not_found", "chat model"),
    ],
)
async def test_bad_translate_input(app_client: AppClient, body: dict, status: int, code: str, fragment: str) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code
        assert fragment in error["message"]


async def test_malformed_json_wrong_type_and_routes(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        r = await client.post("/translate", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "malformed JSON" in r.json()["error"]["message"]
        r = await client.post("/translate", json=["a list"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        r = await client.post("/chat", json={"message": 5})
        assert r.status_code == 422 and "message" in r.json()["error"]["message"]
        r = await client.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await client.get("/translate")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_oversized_body_is_413(app_client: AppClient) -> None:
    async with app_client(max_body_bytes=2048) as (client, _):
        r = await client.post("/translate", json={"text": "a" * 5000})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"

        async def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(10):
                yield b"x" * 1000

        r = await client.post("/translate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


async def test_unexpected_exception_is_500_with_error_shape_and_request_id(app_client: AppClient) -> None:
    async with app_client(cors_origins=["http://ui.example"]) as (client, app):

        async def boom() -> None:
            raise RuntimeError("bug")

        app.add_api_route("/boom", boom)
        r = await client.get("/boom", headers={"X-Request-ID": "req-1", "Origin": "http://ui.example"})
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error", "message": "internal error: RuntimeError"}}
        assert r.headers["x-request-id"] == "req-1"
        assert r.headers["access-control-allow-origin"] == "http://ui.example"
        text = (await client.get("/metrics")).text
        assert 'seq2seq_requests_total{route="/boom",status="500"} 1.0' in text


async def test_latency_is_measured(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        await client.post("/translate", json={"text": GERMAN})
        text = (await client.get("/metrics")).text
        line = next(
            x for x in text.splitlines() if x.startswith('seq2seq_request_latency_seconds_sum{route="/translate"}')
        )
        assert 0 < float(line.split()[-1]) < 30


async def test_the_schema_documents_the_ranges_decode_params_enforces(app_client: AppClient) -> None:
    async with app_client() as (client, _):
        schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["TranslateRequest"]
        props = schema["properties"]
        assert (props["top_p"]["minimum"], props["top_p"]["maximum"]) == (0.001, 1.0)
        assert (props["temperature"]["minimum"], props["temperature"]["maximum"]) == (0.01, 10.0)
        assert props["beam_size"]["minimum"] == 1
        number, default = props["length_penalty"]["anyOf"]  # optional: the model's when left out
        assert (number["minimum"], number["maximum"], default["type"]) == (0.0, 5.0, "null")
        for body, fragment in (
            ({"text": "Hallo", "beam_size": 2, "n_best": 3}, "n_best must not exceed beam_size"),
            ({"text": "Hallo", "min_length": 9, "max_length": 5}, "min_length must not exceed max_length"),
        ):
            r = await client.post("/translate", json=body)
            assert r.status_code == 422 and fragment in r.json()["error"]["message"]  # DecodeParams' own words


async def test_readiness_with_a_failed_model_is_the_operators_choice(
    app_client: AppClient, tiny_store, tmp_path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    (store / "chat-en" / "1" / "model.safetensors").write_bytes(b"corrupt")
    async with app_client(model_store=store) as (client, _):
        ready = await client.get("/health/ready")  # by default every model must serve
        assert ready.status_code == 503 and ready.json()["error"]["details"]["models"]["chat-en"] == "failed"
    async with app_client(model_store=store, required_models=["translate-de-en", "translate-de-en-basic"]) as (
        client,
        _,
    ):
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["models"] == {
            "chat-en": "failed",
            "translate-de-en": "ready",
            "translate-de-en-basic": "ready",
        }
        by_name = await client.post("/chat", json={"message": "hello", "model": "chat-en"})
        assert by_name.status_code == 503 and "failed to load" in by_name.json()["error"]["message"]
        assert "retry-after" not in by_name.headers  # waiting will not load it
        by_language = await client.post("/chat", json={"message": "hello", "language": "en"})
        assert by_language.status_code == 503 and "retry-after" not in by_language.headers
        assert "the chat model for en failed to load" in by_language.json()["error"]["message"]
        models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert models["chat-en"]["status"] == "failed" and "model.safetensors" in models["chat-en"]["error"]
        assert (await client.post("/translate", json={"text": GERMAN})).status_code == 200


async def test_error_replies_are_counted_by_the_code_of_their_body(app_client: AppClient) -> None:
    async with app_client(max_body_bytes=2048) as (client, _):
        assert (await client.post("/translate", json={"text": ""})).status_code == 422
        assert (await client.post("/translate", json={"text": "Hallo", "model": "nope"})).status_code == 404
        assert (await client.post("/translate", content=b"{" + b" " * 4000 + b"}")).status_code == 413
        assert (await client.get("/no-such-route")).status_code == 404
        assert (await client.post("/translate", json={"text": "Ein Hund."})).status_code == 200
        text = (await client.get("/metrics")).text
    counted = {line.split(" ")[0] for line in text.splitlines() if line.startswith("seq2seq_errors_total{")}
    assert counted == {
        'seq2seq_errors_total{code="invalid_request",route="/translate"}',
        'seq2seq_errors_total{code="model_not_found",route="/translate"}',
        'seq2seq_errors_total{code="payload_too_large",route="unmatched"}',  # refused before routing
        'seq2seq_errors_total{code="not_found",route="unmatched"}',
    }
