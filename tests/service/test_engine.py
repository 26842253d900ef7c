"""Engine behaviour through the app: batching, overload, deadlines, faults, cancellation."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest
from fastapi import FastAPI

from service.engine.engine import Engine, EngineDead
from tests.service.conftest import AppClient

SENTENCES = [
    "Ein Mann spielt mit einem Hund im Park.",
    "Zwei Kinder laufen auf der Straße.",
    "Eine Frau.",
    "Ein rot Ball im Park mit einem Hund und zwei Kinder spielt.",
]


def engine(app: FastAPI, name: str = "translate-de-en") -> Engine:
    e = app.state.registry.entries[name].engine
    assert e is not None
    return e


def slow_down(app: FastAPI, seconds: float, name: str = "translate-de-en") -> None:
    """Make every decoder step of ``name`` take at least ``seconds`` (the step still runs for real)."""
    runner = engine(app, name).runner
    real_step = runner.step

    def step():
        time.sleep(seconds)
        return real_step()

    runner.step = step  # type: ignore[method-assign]


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (with exactly ``labels``, or with any labels if none are given)."""
    label_pattern = re.escape(labels) if labels else r"(\{[^}]*\})?"
    pattern = rf"^{re.escape(name)}{label_pattern} ([0-9.e+-]+)$"
    values = [float(m.group(m.lastindex or 0)) for m in re.finditer(pattern, text, re.M)]
    return sum(values)


@pytest.mark.parametrize("batching", ["continuous", "static", "none"])
async def test_32_concurrent_requests_are_batched_and_match_sequential(app_client: AppClient, batching: str) -> None:
    texts = [SENTENCES[i % len(SENTENCES)] + " " * (i % 3) + "Hund " * (i % 5) for i in range(32)]
    async with app_client(batching=batching, static_max_delay_ms=50) as (client, app):
        alone = []
        for t in texts:
            r = await client.post("/translate", json={"text": t, "max_length": 20})
            alone.append(r.json()["translations"][0]["text"])
        before = (await client.get("/metrics")).text
        slow_down(app, 0.002)  # keep requests overlapping on a fast machine
        responses = await asyncio.gather(
            *(client.post("/translate", json={"text": t, "max_length": 20}) for t in texts)
        )
        assert all(r.status_code == 200 for r in responses)
        together = [r.json()["translations"][0]["text"] for r in responses]
        assert together == alone  # batching never changes a greedy result
        after = (await client.get("/metrics")).text
        steps = metric(after, "seq2seq_batch_size_count") - metric(before, "seq2seq_batch_size_count")
        rows = metric(after, "seq2seq_batch_size_sum") - metric(before, "seq2seq_batch_size_sum")
        if batching == "none":
            assert rows == steps  # one row per step
        else:
            assert rows / steps > 2  # several requests shared decoder steps


async def test_new_request_joins_running_batch(app_client: AppClient) -> None:
    """Continuous batching: a short request admitted while a long one runs finishes first."""
    async with app_client() as (client, app):
        slow_down(app, 0.01)
        long = asyncio.create_task(
            client.post("/translate", json={"text": SENTENCES[3], "min_length": 60, "max_length": 60})
        )
        await asyncio.sleep(0.15)
        t0 = time.monotonic()
        short = await client.post("/translate", json={"text": SENTENCES[2], "max_length": 3})
        short_s = time.monotonic() - t0
        assert short.status_code == 200
        assert not long.done()
        assert (await long).status_code == 200
        assert short_s < 0.4  # 3 steps of ~10 ms, not the ~0.6 s the long request needs


async def test_queue_full_is_429_with_retry_after(app_client: AppClient) -> None:
    async with app_client(max_queue=2, max_texts=2, max_batch_rows=1, max_beam_size=1) as (client, app):
        slow_down(app, 0.02)
        req = {"text": SENTENCES[0], "min_length": 10, "max_length": 10}
        responses = await asyncio.gather(*(client.post("/translate", json=req) for _ in range(8)))
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes and 200 in codes
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["code"] == "overloaded"
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_rejected_total", '{model="translate-de-en",reason="queue_full"}') == codes.count(
            429
        )


async def test_deadline_is_504_in_queue_and_during_generation(app_client: AppClient) -> None:
    async with app_client(max_batch_rows=1, max_beam_size=1) as (client, app):
        slow_down(app, 0.02)
        running = client.post(
            "/translate", json={"text": SENTENCES[0], "min_length": 40, "max_length": 40, "timeout": 0.3}
        )
        queued = client.post("/translate", json={"text": SENTENCES[1], "timeout": 0.2})
        r_running, r_queued = await asyncio.gather(running, queued)
        assert r_running.status_code == 504 and "during generation" in r_running.json()["error"]["message"]
        assert r_queued.status_code == 504 and "queued" in r_queued.json()["error"]["message"]
        assert r_queued.json()["error"]["code"] == "deadline_exceeded"
        assert engine(app).active_rows == 0
        ok = await client.post("/translate", json={"text": SENTENCES[1], "max_length": 5})
        assert ok.status_code == 200


async def test_exception_in_a_batch_fails_only_that_batch(app_client: AppClient) -> None:
    async with app_client() as (client, app):
        runner = engine(app).runner
        real_step = runner.step
        calls = {"n": 0}

        def flaky():
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated kernel failure")
            return real_step()

        runner.step = flaky  # type: ignore[method-assign]
        r = await client.post("/translate", json={"text": SENTENCES[0], "min_length": 5, "max_length": 5})
        assert r.status_code == 500
        assert r.json()["error"] == {"code": "internal_error", "message": "inference failed: simulated kernel failure"}
        ok = await client.post("/translate", json={"text": SENTENCES[0], "max_length": 5})
        assert ok.status_code == 200  # the worker kept serving
        assert (await client.get("/health/ready")).status_code == 200
        other = await client.post("/chat", json={"message": "hello"})
        assert other.status_code == 200


async def test_dead_worker_makes_ready_503(app_client: AppClient) -> None:
    async with app_client() as (client, app):
        runner = engine(app).runner

        def die():
            raise EngineDead("simulated fatal failure")

        runner.step = die  # type: ignore[method-assign]
        r = await client.post("/translate", json={"text": SENTENCES[0]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert r.headers["retry-after"] == "1"
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        assert ready.json()["error"]["details"]["models"]["translate-de-en"] == "dead"
        assert (await client.get("/health/live")).status_code == 200
        again = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert again.status_code == 503
        fallback = await client.post(
            "/translate", json={"text": SENTENCES[0], "source_lang": "de", "target_lang": "en"}
        )
        assert fallback.status_code == 200  # the pair's other model takes over the default
        assert fallback.json()["model"] == "translate-de-en-basic"
        models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert models["translate-de-en"]["status"] == "failed" and "simulated" in models["translate-de-en"]["error"]
        assert (await client.post("/chat", json={"message": "hello"})).status_code == 200


async def test_abort_removes_rows_within_a_step(app_client: AppClient) -> None:
    """What a client disconnect triggers: the request's rows leave the running batch."""
    async with app_client() as (client, app):
        slow_down(app, 0.01)
        eng = engine(app)
        task = asyncio.create_task(
            client.post("/translate", json={"text": SENTENCES[0], "min_length": 200, "max_length": 200})
        )
        for _ in range(100):
            await asyncio.sleep(0.02)
            if eng.active_rows:
                break
        assert eng.active_rows == 1
        task.cancel()  # the in-process client goes away: the handler is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            await asyncio.sleep(0.02)
            if eng.active_rows == 0:
                break
        assert eng.active_rows == 0
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_cancelled_total", '{model="translate-de-en"}') == 1


def record_encoding_threads(app: FastAPI, gate: threading.Event | None = None, fail: bool = False) -> list[str]:
    """Names of the threads that encode for translate-de-en, in order. Encodes on the encoder
    thread first wait for ``gate``, or raise with ``fail``; the worker's own encodes run as usual."""
    runner = engine(app).runner
    real_encode = runner.encode
    threads: list[str] = []

    def encode(requests):
        name = threading.current_thread().name
        threads.append(name)
        if name.startswith("encoder-"):
            if gate is not None:
                assert gate.wait(10)
            if fail:
                raise RuntimeError("simulated encoder failure")
        return real_encode(requests)

    runner.encode = encode  # type: ignore[method-assign]
    return threads


async def start_long_request(client, app: FastAPI) -> asyncio.Task:
    """A request that keeps the batch decoding for ~0.6 s (60 steps of >= 10 ms)."""
    slow_down(app, 0.01)
    long = asyncio.create_task(
        client.post("/translate", json={"text": SENTENCES[3], "min_length": 60, "max_length": 60})
    )
    for _ in range(100):
        await asyncio.sleep(0.01)
        if engine(app).active_rows:
            break
    return long


@pytest.mark.parametrize("overlap", [True, False])
async def test_arrivals_are_encoded_beside_the_running_batch(app_client: AppClient, overlap: bool) -> None:
    async with app_client(overlap_encode=overlap) as (client, app):
        solo = await client.post("/translate", json={"text": SENTENCES[1], "max_length": 8})
        threads = record_encoding_threads(app)
        long = await start_long_request(client, app)
        joined = await client.post("/translate", json={"text": SENTENCES[1], "max_length": 8})
        assert not long.done()  # it joined the running batch
        assert (await long).status_code == 200
        assert joined.json()["translations"] == solo.json()["translations"]
        assert threads[0] == "engine-translate-de-en"  # an idle engine encodes on its own worker
        assert threads[1] == ("encoder-translate-de-en_0" if overlap else "engine-translate-de-en")
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_encode_seconds_count", '{model="translate-de-en"}') >= 3  # warm-up excluded


async def test_request_expiring_while_encoded_never_joins(app_client: AppClient) -> None:
    async with app_client(overlap_encode=True) as (client, app):
        gate = threading.Event()
        threads = record_encoding_threads(app, gate=gate)
        long = await start_long_request(client, app)
        late = await client.post("/translate", json={"text": SENTENCES[0], "timeout": 0.1})
        assert late.status_code == 504 and "during generation" in late.json()["error"]["message"]
        assert threads[-1].startswith("encoder-")
        gate.set()  # its encoding finishes after the deadline: the rows must leave at once
        for _ in range(20):
            await asyncio.sleep(0.02)
            if engine(app).active_rows == 1:
                break
        assert engine(app).active_rows == 1  # only the long request
        assert (await long).status_code == 200
        assert engine(app).active_rows == 0


async def test_failed_encoding_on_the_encoder_thread_fails_only_its_requests(app_client: AppClient) -> None:
    async with app_client(overlap_encode=True) as (client, app):
        record_encoding_threads(app, fail=True)
        long = await start_long_request(client, app)
        failed = await client.post("/translate", json={"text": SENTENCES[0]})
        assert failed.status_code == 500
        assert failed.json()["error"] == {
            "code": "internal_error",
            "message": "encoding failed: simulated encoder failure",
        }
        long_reply = await long
        assert long_reply.status_code == 200 and len(long_reply.json()["translations"]) == 1
        ok = await client.post("/translate", json={"text": SENTENCES[0], "max_length": 5})
        assert ok.status_code == 200  # an idle engine encodes on its worker


async def test_step_cpu_time_is_counted_and_bounded_by_step_wall_time(app_client: AppClient) -> None:
    async with app_client() as (client, _app):
        r = await client.post("/translate", json={"text": SENTENCES[3], "min_length": 20, "max_length": 20})
        assert r.status_code == 200
        text = (await client.get("/metrics")).text
        cpu = metric(text, "seq2seq_decode_step_cpu_seconds_total", '{model="translate-de-en"}')
        wall = metric(text, "seq2seq_decode_step_seconds_sum", '{model="translate-de-en"}')
        assert 0 < cpu <= wall * 1.05 + 0.01  # the worker thread's own CPU time, within the steps' wall time


@pytest.mark.parametrize(("threads", "cores", "expected"), [(1, 2, True), (2, 2, False), (1, 1, False)])
async def test_encoder_thread_by_default_only_when_a_core_is_free(
    app_client: AppClient, monkeypatch: pytest.MonkeyPatch, threads: int, cores: int, expected: bool
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    async with app_client(threads=threads) as (_client, app):
        assert (engine(app)._encoder is not None) is expected
    async with app_client(threads=threads, overlap_encode=not expected) as (_client, app):
        assert (engine(app)._encoder is not None) is (not expected)  # an explicit setting wins


async def test_a_dead_worker_is_restarted(app_client: AppClient) -> None:
    async with app_client(restart_engines=True) as (client, app):
        dead = engine(app)

        def die():
            raise EngineDead("simulated fatal failure")

        dead.runner.step = die  # type: ignore[method-assign]
        r = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert r.status_code == 503
        for _ in range(100):  # the first restart waits 1 s
            await asyncio.sleep(0.05)
            if (await client.get("/health/ready")).status_code == 200:
                break
        assert engine(app) is not dead and engine(app).alive
        ok = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert ok.status_code == 200
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_engine_restarts_total", '{model="translate-de-en"}') == 1
