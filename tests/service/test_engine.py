"""Engine behaviour through the app: batching, overload, deadlines, faults, cancellation.

The engine is driven over HTTP; its decoder steps are observed, held and failed through the
batch's ``decode_step`` hook (:class:`Steps`), so the tests wait for events, not for time.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from seq2seq.decoding import DecodeParams
from service.engine.client import LocalEngine
from service.engine.engine import Engine, EngineDead
from service.engine.request import Request, RequestStatus
from service.errors import InternalError
from tests.service.conftest import AppClient, translation_texts

SENTENCES = [
    "Ein Mann spielt mit einem Hund im Park.",
    "Zwei Kinder laufen auf der Straße.",
    "Eine Frau.",
    "Ein rot Ball im Park mit einem Hund und zwei Kinder spielt.",
]
LONG = {"text": SENTENCES[3], "min_length": 60, "max_length": 60}


def core(app: FastAPI, name: str = "translate-de-en") -> Engine:
    client = app.state.registry.entries[name].engine
    assert isinstance(client, LocalEngine)
    return client.core


class Steps:
    """The decoder steps of one engine, through its batch's ``decode_step`` hook: counted, held at
    a gate (:meth:`hold`, :meth:`allow`), slowed (``delay_s``) or failed (``fail_at``)."""

    def __init__(self, app: FastAPI, name: str = "translate-de-en") -> None:
        batch = core(app, name).batch
        self._step = batch.decode_step
        batch.decode_step = self
        self.calls = 0
        self.delay_s = 0.0
        self.fail_at: dict[int, BaseException] = {}  # step number -> what it raises
        self.blocked = threading.Event()  # a step waits at the gate
        self._allowed: int | None = None  # steps that may start; None: no gate
        self._cv = threading.Condition()

    def hold(self) -> None:
        """Steps from now on wait at the gate."""
        self.allow(0)

    def allow(self, steps: int | None = None) -> None:
        """Let ``steps`` more steps through the gate; None opens it."""
        with self._cv:
            self._allowed = steps
            self._cv.notify_all()

    async def wait_blocked(self) -> None:
        assert await asyncio.to_thread(self.blocked.wait, 10), "no step reached the gate"

    async def advance(self) -> None:
        """Let one step through, and wait until the engine's next step is held at the gate."""
        target = self.calls + 1
        self.allow(1)
        await until(lambda: self.calls == target and self.blocked.is_set())

    def __call__(self, tokens, state):
        with self._cv:
            while self._allowed == 0:
                self.blocked.set()
                self._cv.wait()
            self.blocked.clear()
            if self._allowed is not None:
                self._allowed -= 1
            self.calls += 1
            error = self.fail_at.get(self.calls)
        if error is not None:
            raise error
        if self.delay_s:
            time.sleep(self.delay_s)
        return self._step(tokens, state)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition``, which the engine's threads make true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def live_requests(engine: Engine) -> int:
    return len(engine.scheduler.waiting) + len(engine.scheduler.running)


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
        steps = Steps(app)
        steps.hold()  # the first batch waits until every request is queued
        pending = [asyncio.create_task(client.post("/translate", json={"text": t, "max_length": 20})) for t in texts]
        await until(lambda: live_requests(core(app)) == 32)
        steps.allow()
        responses = await asyncio.gather(*pending)
        assert all(r.status_code == 200 for r in responses)
        together = [r.json()["translations"][0]["text"] for r in responses]
        assert together == alone  # batching never changes a greedy result
        after = (await client.get("/metrics")).text
        step_count = metric(after, "seq2seq_batch_size_count") - metric(before, "seq2seq_batch_size_count")
        rows = metric(after, "seq2seq_batch_size_sum") - metric(before, "seq2seq_batch_size_sum")
        if batching == "none":
            assert rows == step_count  # one row per step
        else:
            assert rows / step_count > 2  # several requests shared decoder steps


async def test_new_request_joins_running_batch(app_client: AppClient) -> None:
    """Continuous batching: a short request that arrives while a long one runs joins its batch and
    finishes while the long one still has steps to go."""
    async with app_client() as (client, app):
        steps = Steps(app)
        steps.hold()
        long = asyncio.create_task(client.post("/translate", json=LONG))
        await steps.wait_blocked()  # the long request is in the batch, at its first step
        short = asyncio.create_task(client.post("/translate", json={"text": SENTENCES[2], "max_length": 3}))
        await until(lambda: len(core(app).scheduler.waiting) == 1)
        (short_request,) = core(app).scheduler.waiting
        (long_request,) = core(app).scheduler.running.values()
        while short_request.status is not RequestStatus.FINISHED:  # 3 steps after it joins
            await steps.advance()
        assert long_request.status is RequestStatus.RUNNING and steps.calls < 10  # the long one needs 60
        steps.allow()
        assert (await short).status_code == 200 and (await long).status_code == 200


async def test_queue_full_is_429_with_retry_after(app_client: AppClient) -> None:
    async with app_client(max_queue=2, max_texts=2, max_batch_rows=1, max_beam_size=1) as (client, app):
        steps = Steps(app)
        steps.hold()
        req = {"text": SENTENCES[0], "min_length": 10, "max_length": 10}
        first = asyncio.create_task(client.post("/translate", json=req))
        await steps.wait_blocked()  # running: the one row is taken
        others = [asyncio.create_task(client.post("/translate", json=req)) for _ in range(7)]
        await until(lambda: sum(t.done() for t in others) == 5)  # 2 queued, 5 refused
        steps.allow()
        responses = [await first, *await asyncio.gather(*others)]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [429] * 5
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["code"] == "overloaded"
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_rejected_total", '{model="translate-de-en",reason="queue_full"}') == 5


async def test_deadline_is_504_in_queue_and_during_generation(app_client: AppClient) -> None:
    async with app_client(max_batch_rows=1, max_beam_size=1) as (client, app):
        steps = Steps(app)
        steps.hold()
        running = asyncio.create_task(
            client.post("/translate", json={"text": SENTENCES[0], "min_length": 40, "max_length": 40, "timeout": 0.3})
        )
        await steps.wait_blocked()
        queued = asyncio.create_task(client.post("/translate", json={"text": SENTENCES[1], "timeout": 0.2}))
        await until(lambda: len(core(app).scheduler.waiting) == 1)
        await asyncio.sleep(0.3)  # both deadlines pass while the step is held
        steps.allow()
        r_running, r_queued = await running, await queued
        assert r_running.status_code == 504 and "during generation" in r_running.json()["error"]["message"]
        assert r_queued.status_code == 504 and "queued" in r_queued.json()["error"]["message"]
        assert r_queued.json()["error"]["code"] == "deadline_exceeded"
        assert len(core(app).batch) == 0
        ok = await client.post("/translate", json={"text": SENTENCES[1], "max_length": 5})
        assert ok.status_code == 200


async def test_exception_in_a_batch_fails_only_that_batch(app_client: AppClient) -> None:
    async with app_client() as (client, app):
        Steps(app).fail_at[2] = RuntimeError("simulated kernel failure")
        r = await client.post("/translate", json={"text": SENTENCES[0], "min_length": 5, "max_length": 5})
        assert r.status_code == 500
        assert r.json()["error"] == {"code": "internal_error", "message": "inference failed: simulated kernel failure"}
        ok = await client.post("/translate", json={"text": SENTENCES[0], "max_length": 5})
        assert ok.status_code == 200  # the worker kept serving
        assert (await client.get("/health/ready")).status_code == 200
        other = await client.post("/chat", json={"message": "hello"})
        assert other.status_code == 200
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_engine_errors_total", '{model="translate-de-en"}') == 1


async def test_a_poisoned_request_fails_alone_and_the_batch_goes_on(app_client: AppClient) -> None:
    """Requests that make the step raise (here a top_k past the API's check, straight to the engine)
    fail with 500 alone; the requests batched with them get what they get alone."""
    async with app_client() as (client, app):
        bodies = [{"text": t, "max_length": 20} for t in SENTENCES] + [
            {"text": SENTENCES[0], "sample": True, "seed": 3, "max_length": 20},
            {"text": SENTENCES[1], "beam_size": 3, "n_best": 2, "max_length": 20},
        ]
        alone = [(await client.post("/translate", json=b)).json()["translations"] for b in bodies]
        steps = Steps(app)
        steps.hold()
        normal = [asyncio.create_task(client.post("/translate", json=b)) for b in bodies]
        await until(lambda: live_requests(core(app)) == len(bodies))
        engine = app.state.registry.entries["translate-de-en"].engine
        ids = engine.info.source_tokenizer.encode(SENTENCES[2])
        poison = DecodeParams(sample=True, top_k=2**63, max_length=20)
        streams = engine.submit([Request(f"poison-{i}", ids, poison, 30.0) for i in range(2)])
        await until(lambda: live_requests(core(app)) == len(bodies) + 2)
        steps.allow()
        replies = await asyncio.gather(*normal)
        assert [translation_texts(r.json()["translations"]) for r in replies] == [translation_texts(t) for t in alone]
        for stream in streams:
            with pytest.raises(InternalError, match="inference failed: Overflow"):
                await stream.final()
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_engine_errors_total", '{model="translate-de-en"}') == 1


async def test_dead_worker_makes_ready_503(app_client: AppClient) -> None:
    async with app_client() as (client, app):
        Steps(app).fail_at[1] = EngineDead("simulated fatal failure")
        r = await client.post("/translate", json={"text": SENTENCES[0]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert r.headers["retry-after"] == "1"
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        assert ready.json()["error"]["details"]["models"]["translate-de-en"] == "dead"
        assert (await client.get("/health/live")).status_code == 200
        again = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert again.status_code == 503 and "engine died" in again.json()["error"]["message"]
        fallback = await client.post(
            "/translate", json={"text": SENTENCES[0], "source_lang": "de", "target_lang": "en"}
        )
        assert fallback.status_code == 200  # the pair's other model takes over the default
        assert fallback.json()["model"] == "translate-de-en-basic"
        models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert models["translate-de-en"]["status"] == "dead" and "simulated" in models["translate-de-en"]["error"]
        assert (await client.post("/chat", json={"message": "hello"})).status_code == 200


async def test_abort_removes_rows_within_a_step(app_client: AppClient) -> None:
    """What a client disconnect triggers: the request's rows leave the running batch."""
    async with app_client() as (client, app):
        steps = Steps(app)
        steps.hold()
        task = asyncio.create_task(
            client.post("/translate", json={"text": SENTENCES[0], "min_length": 200, "max_length": 200})
        )
        await steps.wait_blocked()
        assert len(core(app).batch) == 1
        task.cancel()  # the in-process client goes away: the handler is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
        steps.allow(1)  # the held step finishes; the next iteration takes the abort
        await until(lambda: len(core(app).batch) == 0)
        assert steps.calls == 1  # gone before another step ran
        steps.allow()
        await until(lambda: not core(app).scheduler.has_work)
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_cancelled_total", '{model="translate-de-en"}') == 1


def record_encoding_threads(app: FastAPI, gate: threading.Event | None = None, fail: bool = False) -> list[str]:
    """Names of the threads that encode for translate-de-en, in order. Encodes on the encoder
    thread first wait for ``gate``, or raise with ``fail``; the worker's own encodes run as usual."""
    model = core(app).batch.model
    real_encode = model.encode
    threads: list[str] = []

    def encode(src, lengths):
        name = threading.current_thread().name
        threads.append(name)
        if name.startswith("encoder-"):
            if gate is not None:
                assert gate.wait(10)
            if fail:
                raise RuntimeError("simulated encoder failure")
        return real_encode(src, lengths)

    model.encode = encode  # type: ignore[method-assign]
    return threads


async def start_long_request(client, app: FastAPI) -> asyncio.Task:
    """A request that keeps the batch decoding: 60 steps of at least 10 ms."""
    steps = Steps(app)
    steps.delay_s = 0.01
    steps.hold()
    long = asyncio.create_task(client.post("/translate", json=LONG))
    await steps.wait_blocked()
    steps.allow()
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
        assert metric(text, "seq2seq_encode_seconds_count", '{model="translate-de-en"}') == 3  # warm-up excluded


async def test_request_expiring_while_encoded_never_joins(app_client: AppClient) -> None:
    async with app_client(overlap_encode=True) as (client, app):
        gate = threading.Event()
        threads = record_encoding_threads(app, gate=gate)
        long = await start_long_request(client, app)
        late = await client.post("/translate", json={"text": SENTENCES[0], "timeout": 0.1})
        assert late.status_code == 504 and "during generation" in late.json()["error"]["message"]
        assert threads[-1].startswith("encoder-")
        gate.set()  # its encoding finishes after the deadline: its rows must never join
        assert (await long).status_code == 200
        assert len(core(app).batch) == 0 and live_requests(core(app)) == 0


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
        assert metric(text, "seq2seq_decode_step_seconds_count", '{model="translate-de-en"}') == 20
        assert 0 < cpu <= wall * 1.05 + 0.01  # the worker thread's own CPU time, within the steps' wall time


@pytest.mark.parametrize(("threads", "cores", "expected"), [(1, 2, True), (2, 2, False), (1, 1, False)])
async def test_encoder_thread_by_default_only_when_a_core_is_free(
    app_client: AppClient, monkeypatch: pytest.MonkeyPatch, threads: int, cores: int, expected: bool
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    async with app_client(threads=threads) as (_client, app):
        assert core(app).overlap_encode is expected
    async with app_client(threads=threads, overlap_encode=not expected) as (_client, app):
        assert core(app).overlap_encode is not expected  # an explicit setting wins


async def test_a_dead_worker_is_restarted(app_client: AppClient) -> None:
    async with app_client(restart_engines=True) as (client, app):
        dead = core(app)
        Steps(app).fail_at[1] = EngineDead("simulated fatal failure")
        r = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert r.status_code == 503

        async def ready() -> None:
            while (await client.get("/health/ready")).status_code != 200:  # the first restart waits 1 s
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ready(), 10)
        assert core(app) is not dead and core(app).alive
        ok = await client.post("/translate", json={"text": SENTENCES[0], "model": "translate-de-en"})
        assert ok.status_code == 200
        text = (await client.get("/metrics")).text
        assert metric(text, "seq2seq_engine_restarts_total", '{model="translate-de-en"}') == 1
