"""The load generator against mock transports: records, windows, timeouts and SSE parsing."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time

import httpx
import pytest

from bench import loadgen
from bench.loadgen import Target


def test_poisson_arrivals_are_seeded_and_near_the_rate() -> None:
    a = loadgen.poisson_arrivals(50.0, 20.0, random.Random(1))
    assert a == loadgen.poisson_arrivals(50.0, 20.0, random.Random(1))
    assert 900 < len(a) < 1100  # mean 1000, sd ~32
    assert a == sorted(a) and 0 < a[0] and a[-1] < 20.0
    assert loadgen.poisson_arrivals(0.0, 5.0, random.Random(1)) == []


def test_load_sentences_reads_gzip(tmp_path) -> None:
    path = tmp_path / "s.de.gz"
    path.write_bytes(gzip.compress("Ein Hund läuft.\n\n Zwei Katzen. \n".encode()))
    assert loadgen.load_sentences(path) == ["Ein Hund läuft.", "Zwei Katzen."]
    assert sorted(loadgen.shuffled(["a", "b", "c"], 3)) == ["a", "b", "c"]


def translate_app(delay_s: float = 0.01, status: int = 200) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay_s)
        text = json.loads(request.content)["text"]
        if status != 200:
            return httpx.Response(status, json={"error": {"code": "overloaded", "message": "full"}})
        usage = {"input_tokens": len(text), "output_tokens": 2 * len(text)}
        translations = [{"text": text, "finish_reason": "eos"}]
        return httpx.Response(200, json={"translations": translations, "usage": usage})

    return httpx.MockTransport(handler)


async def test_closed_loop_cycles_inputs_and_stops_at_its_deadline() -> None:
    async with httpx.AsyncClient(transport=translate_app(), base_url="http://bench") as client:
        target = Target(client, "/translate", "text", ["ab", "abc"], {"model": "m"}, timeout_s=5)
        run = await loadgen.closed_loop(target, concurrency=4, warmup_s=0.05, duration_s=0.2)
    assert run.duration == pytest.approx(0.2, abs=0.05)
    assert len(run.records) > 20
    assert all(r.ok for r in run.records)
    assert {(r.index, r.input_tokens, r.output_tokens) for r in run.records} == {(0, 2, 4), (1, 3, 6)}
    assert {r.finish_reason for r in run.records} == {"eos"}
    assert max(r.end for r in run.records) <= run.window_end + 0.05  # stragglers were cancelled


async def test_closed_loop_warm_up_waits_for_every_worker_once() -> None:
    edges: list[float] = []

    async def on_edge() -> None:
        edges.append(time.perf_counter())

    async with httpx.AsyncClient(transport=translate_app(0.3), base_url="http://bench") as client:
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        t0 = time.perf_counter()
        run = await loadgen.closed_loop(target, concurrency=3, warmup_s=0.01, duration_s=0.1, on_edge=on_edge)
    assert run.window_start - t0 >= 0.3  # not the 0.01 s asked for: the first replies took 0.3 s
    assert len(edges) == 2 and edges[0] >= run.window_start and edges[1] >= run.window_end


async def test_closed_loop_raises_what_kills_a_worker() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"usage": "not a dict"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken), base_url="http://bench") as client:
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        with pytest.raises(AttributeError):
            await loadgen.closed_loop(target, concurrency=2, warmup_s=0.01, duration_s=0.1)


async def test_open_loop_latency_counts_from_the_scheduled_arrival() -> None:
    async with httpx.AsyncClient(transport=translate_app(0.05), base_url="http://bench") as client:
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        run = await loadgen.open_loop(target, rate=100.0, warmup_s=0.0, duration_s=0.3, seed=0)
    assert len(run.records) == len(loadgen.poisson_arrivals(100.0, 0.3, random.Random(0)))
    assert all(r.latency >= 0.05 for r in run.records)


async def test_errors_and_client_timeouts_are_recorded() -> None:
    async with httpx.AsyncClient(transport=translate_app(status=429), base_url="http://bench") as client:
        record = await Target(client, "/translate", "text", ["x"], {}, timeout_s=5)()
    assert (record.status, record.error, record.ok) == (429, "http_429", False)
    async with httpx.AsyncClient(transport=translate_app(delay_s=1.0), base_url="http://bench") as client:
        record = await Target(client, "/translate", "text", ["x"], {}, timeout_s=0.05)()
    assert (record.status, record.error) == (0, "client:TimeoutError")


def sse_app(events: list[tuple[str, dict]]) -> httpx.MockTransport:
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def test_streamed_chat_times_the_first_token_and_reads_done() -> None:
    done = {"reply": "Hi there", "tokens": 2, "finish_reason": "length"}
    events = [("token", {"text": "Hi"}), ("token", {"text": " there"}), ("done", done)]
    async with httpx.AsyncClient(transport=sse_app(events), base_url="http://bench") as client:
        record = await Target(client, "/chat", "message", ["hello"], {}, timeout_s=5, stream=True)()
    assert record.ok and (record.output_tokens, record.finish_reason) == (2, "length")
    assert record.ttft is not None and 0 <= record.ttft <= record.latency


async def test_streamed_error_event_is_a_failure() -> None:
    events = [("error", {"error": {"code": "deadline_exceeded", "message": "late"}})]
    async with httpx.AsyncClient(transport=sse_app(events), base_url="http://bench") as client:
        record = await Target(client, "/chat", "message", ["hello"], {}, timeout_s=5, stream=True)()
    assert (record.ok, record.error, record.ttft) == (False, "sse:deadline_exceeded", None)
