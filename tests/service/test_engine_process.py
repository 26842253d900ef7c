"""Engines in processes of their own (``--engine-process``, the server's default)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal

from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.engine.process import EngineProcess
from service.errors import DeadlineExceeded, EngineUnavailable, Overloaded, ServiceError
from tests.service.conftest import AppClient
from tests.service.test_engine import SENTENCES, metric, until

CHAT = {"message": "hello, how are you?", "min_length": 4, "max_length": 12}


def engine_process(app: FastAPI, name: str = "translate-de-en") -> EngineProcess:
    e = app.state.registry.entries[name].engine
    assert isinstance(e, EngineProcess)
    return e


async def outputs(client) -> tuple[list[str], str, list[str]]:
    """Batched translations, a chat reply and a streamed chat's SSE events."""
    r = await client.post("/translate", json={"texts": SENTENCES, "max_length": 20})
    assert r.status_code == 200, r.text
    texts = [t["text"] for t in r.json()["translations"]]
    chat = await client.post("/chat", json=CHAT)
    assert chat.status_code == 200, chat.text
    async with client.stream("POST", "/chat", json={**CHAT, "stream": True}) as streamed:
        assert streamed.status_code == 200
        events = [line async for line in streamed.aiter_lines() if line.startswith("event:")]
    return texts, chat.json()["reply"], events


async def test_engine_process_serves_what_the_in_process_engine_serves(app_client: AppClient) -> None:
    async with app_client(engine_process=False) as (client, _app):
        expected = await outputs(client)
    async with app_client(engine_process=True) as (client, app):
        assert engine_process(app).pid not in (None, os.getpid())
        assert await outputs(client) == expected
        assert expected[2][-1] == "event: done" and expected[2].count("event: token") >= 1
        info = (await client.get("/models/translate-de-en")).json()
        assert (info["device"], info["dtype"], info["quantization"]) == ("cpu", "float32", "none")


async def test_metrics_count_what_the_engine_processes_report(app_client: AppClient) -> None:
    async with app_client(engine_process=True) as (client, _app):
        await client.post("/translate", json={"texts": SENTENCES, "max_length": 20})
        await client.post("/chat", json=CHAT)
        text = (await client.get("/metrics")).text
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))  # one family per name: valid for Prometheus
    assert text.count("# TYPE seq2seq_decode_step_seconds histogram") == 1
    assert metric(text, "seq2seq_generated_tokens_total", '{model="translate-de-en"}') > 0
    assert metric(text, "seq2seq_generated_tokens_total", '{model="chat-en"}') > 0
    assert metric(text, "seq2seq_batch_size_count", '{model="translate-de-en"}') > 0
    assert metric(text, "seq2seq_requests_total") >= 2  # the HTTP process's own
    assert metric(text, "process_resident_memory_bytes") > 0


async def test_queue_full_in_the_engine_process_is_429_streamed_or_not(app_client: AppClient) -> None:
    settings = {"engine_process": True, "max_queue": 1, "max_texts": 1, "max_batch_rows": 1, "max_beam_size": 1}
    async with app_client(**settings) as (client, _app):
        long = {"text": SENTENCES[3], "min_length": 200, "max_length": 200}
        responses = await asyncio.gather(*(client.post("/translate", json=long) for _ in range(10)))
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes and 200 in codes and set(codes) == {200, 429}
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["code"] == "overloaded"
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_rejected_total", '{model="translate-de-en",reason="queue_full"}') == codes.count(
            429
        )

        chat = {"message": "hello", "min_length": 200, "max_length": 200}

        async def streamed() -> int:
            async with client.stream("POST", "/chat", json={**chat, "stream": True}) as r:
                await r.aread()
                return r.status_code

        statuses = await asyncio.gather(*(streamed() for _ in range(10)))
        assert 429 in statuses and 200 in statuses  # refused before the first token: a real status


async def test_a_killed_engine_process_fails_its_requests_and_readiness(app_client: AppClient) -> None:
    async with app_client(engine_process=True) as (client, app):
        victim = engine_process(app)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGSTOP)  # the request waits in the pipe: in flight, never answered
        running = asyncio.create_task(client.post("/translate", json={"text": SENTENCES[0]}))
        await until(lambda: victim.in_flight == 1)
        os.kill(victim.pid, signal.SIGKILL)
        r = await running
        assert r.status_code == 503 and "exited with code -9" in r.json()["error"]["message"]
        assert not victim.alive
        again = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert again.status_code == 503 and again.json()["error"]["code"] == "unavailable"
        assert "engine died" in again.json()["error"]["message"]
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["models"]["translate-de-en"] == "dead"
        models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert models["translate-de-en"]["status"] == "dead" and "code -9" in models["translate-de-en"]["error"]
        assert (await client.post("/chat", json=CHAT)).status_code == 200  # the other processes serve on
        assert (await client.get("/metrics")).status_code == 200


async def test_a_model_that_fails_to_load_in_its_process_is_reported(app_client: AppClient, tiny_store) -> None:
    weights = tiny_store / "chat-en" / "1" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-64])  # truncated: the checksum check fails in the engine process
    try:
        async with app_client(engine_process=True) as (client, _app):
            models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
            assert models["chat-en"]["status"] == "failed" and "model.safetensors" in models["chat-en"]["error"]
            assert models["translate-de-en"]["status"] == "ready"
    finally:
        weights.write_bytes(original)


def test_service_errors_cross_processes_intact() -> None:
    for error in (
        Overloaded("queue full", retry_after_s=7, details={"queue": 3}),
        EngineUnavailable("gone", retry_after_s=5),
        DeadlineExceeded("late"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and isinstance(copy, ServiceError)
        assert (copy.message, copy.headers, copy.details, copy.body()) == (
            error.message,
            error.headers,
            error.details,
            error.body(),
        )
    assert pickle.loads(pickle.dumps(Overloaded("x", retry_after_s=7))).retry_after_s == 7


async def test_a_dead_engine_process_is_restarted(app_client: AppClient) -> None:
    async with app_client(engine_process=True, restart_engines=True) as (client, app):
        victim = engine_process(app)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        for _ in range(200):  # the first restart waits 1 s
            await asyncio.sleep(0.05)
            if (await client.get("/health/ready")).status_code == 200:
                break
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        revived = engine_process(app)
        assert revived is not victim and revived.alive and revived.pid != victim.pid
        r = await client.post("/translate", json={"text": SENTENCES[0], "max_length": 20})
        assert r.status_code == 200
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_engine_restarts_total", '{model="translate-de-en"}') == 1
        assert metric(text, "seq2seq_engine_restarts_total", '{model="chat-en"}') == 0


async def test_an_engine_process_ignores_sigterm_and_sigint(app_client: AppClient) -> None:
    """systemd stops a service with SIGTERM to all its processes: the HTTP process drains the
    engines, so they must outlive the signal."""
    async with app_client(engine_process=True) as (client, app):
        engine = engine_process(app)
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGTERM)
        os.kill(engine.pid, signal.SIGINT)
        await asyncio.sleep(0.3)
        assert engine.alive
        r = await client.post("/translate", json={"text": SENTENCES[0], "max_length": 20})
        assert r.status_code == 200
