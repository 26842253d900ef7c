"""The load generator and its HTTP client against a real local HTTP server: records, windows, timeouts, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import time
from collections.abc import AsyncIterator

import pytest

from bench import loadgen
from bench.httpclient import HttpClient
from bench.loadgen import Target
from tests.bench.fake_http import FakeServer, Handler, Reply


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


def translate_handler(delay_s: float = 0.01, status: int = 200) -> Handler:
    async def handler(path: str, body: dict) -> Reply:
        await asyncio.sleep(delay_s)
        if status != 200:
            return status, json.dumps({"error": {"code": "overloaded", "message": "full"}}).encode()
        text = body["text"]
        usage = {"input_tokens": len(text), "output_tokens": 2 * len(text)}
        translations = [{"text": text, "finish_reason": "eos"}]
        return 200, json.dumps({"translations": translations, "usage": usage}).encode()

    return handler


@contextlib.asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[tuple[FakeServer, HttpClient]]:
    server = FakeServer(handler)
    async with server.running(), HttpClient(server.url) as client:
        yield server, client


async def test_closed_loop_cycles_inputs_and_stops_at_its_deadline() -> None:
    async with served(translate_handler()) as (server, client):
        target = Target(client, "/translate", "text", ["ab", "abc"], {"model": "m"}, timeout_s=5)
        run = await loadgen.closed_loop(target, concurrency=4, warmup_s=0.05, duration_s=0.2)
    assert run.duration == pytest.approx(0.2, abs=0.05)
    assert len(run.records) > 20
    assert all(r.ok for r in run.records)
    assert {(r.index, r.input_tokens, r.output_tokens) for r in run.records} == {(0, 2, 4), (1, 3, 6)}
    assert {r.finish_reason for r in run.records} == {"eos"}
    assert max(r.end for r in run.records) <= run.window_end + 0.05  # stragglers were cancelled
    assert server.connections == 4  # one keep-alive connection per worker, reused for every request


async def test_closed_loop_warm_up_waits_for_every_worker_once() -> None:
    edges: list[float] = []

    async def on_edge() -> None:
        edges.append(time.perf_counter())

    async with served(translate_handler(0.3)) as (_, client):
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        t0 = time.perf_counter()
        run = await loadgen.closed_loop(target, concurrency=3, warmup_s=0.01, duration_s=0.1, on_edge=on_edge)
    assert run.window_start - t0 >= 0.3  # not the 0.01 s asked for: the first replies took 0.3 s
    assert len(edges) == 2 and edges[0] >= run.window_start and edges[1] >= run.window_end


async def test_closed_loop_raises_what_kills_a_worker() -> None:
    async def broken(path: str, body: dict) -> Reply:
        return 200, json.dumps({"usage": "not a dict"}).encode()

    async with served(broken) as (_, client):
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        with pytest.raises(AttributeError):
            await loadgen.closed_loop(target, concurrency=2, warmup_s=0.01, duration_s=0.1)


async def test_open_loop_latency_counts_from_the_scheduled_arrival() -> None:
    async with served(translate_handler(0.05)) as (_, client):
        target = Target(client, "/translate", "text", ["ab"], {}, timeout_s=5)
        run = await loadgen.open_loop(target, rate=100.0, warmup_s=0.0, duration_s=0.3, seed=0)
    assert len(run.records) == len(loadgen.poisson_arrivals(100.0, 0.3, random.Random(0)))
    assert all(r.ok and r.latency >= 0.05 for r in run.records)


async def test_errors_and_client_timeouts_are_recorded() -> None:
    async with served(translate_handler(status=429)) as (_, client):
        record = await Target(client, "/translate", "text", ["x"], {}, timeout_s=5)()
    assert (record.status, record.error, record.ok) == (429, "http_429", False)
    async with served(translate_handler(delay_s=1.0)) as (server, client):
        record = await Target(client, "/translate", "text", ["x"], {}, timeout_s=0.05)()
        await asyncio.sleep(0.05)
        assert server.disconnects == 1  # the timed-out request's connection was closed, not left to finish
    assert (record.status, record.error) == (0, "client:TimeoutError")


async def test_connection_refused_is_a_client_error() -> None:
    server = FakeServer(translate_handler())
    async with server.running():
        url = server.url
    async with HttpClient(url) as client:
        record = await Target(client, "/translate", "text", ["x"], {}, timeout_s=5)()
    assert (record.status, record.error) == (0, "client:ConnectionRefusedError")


def sse_handler(events: list[tuple[str, dict]]) -> Handler:
    async def handler(path: str, body: dict) -> Reply:
        assert body["stream"] is True
        # Split events across chunks in odd places: lines must be reassembled.
        text = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()
        return 200, [text[i : i + 7] for i in range(0, len(text), 7)]

    return handler


async def test_streamed_chat_times_the_first_token_and_reads_done() -> None:
    done = {"reply": "Hi there", "tokens": 2, "finish_reason": "length"}
    events = [("token", {"text": "Hi"}), ("token", {"text": " there"}), ("done", done)]
    async with served(sse_handler(events)) as (server, client):
        target = Target(client, "/chat", "message", ["hello"], {}, timeout_s=5, stream=True)
        record = await target()
        again = await target()
    assert record.ok and (record.output_tokens, record.finish_reason) == (2, "length")
    assert record.ttft is not None and 0 <= record.ttft <= record.latency
    assert again.ok and server.connections == 1  # the stream was read to its end and the connection reused


async def test_streamed_error_event_is_a_failure() -> None:
    events = [("error", {"error": {"code": "deadline_exceeded", "message": "late"}})]
    async with served(sse_handler(events)) as (_, client):
        record = await Target(client, "/chat", "message", ["hello"], {}, timeout_s=5, stream=True)()
    assert (record.ok, record.error, record.ttft) == (False, "sse:deadline_exceeded", None)


async def test_idle_connections_expire_instead_of_being_reused() -> None:
    server = FakeServer(translate_handler(0.0))
    async with server.running(), HttpClient(server.url, idle_expiry_s=0.05) as client:
        assert (await client.post_json("/translate", b'{"text": "a"}'))[0] == 200
        assert (await client.post_json("/translate", b'{"text": "a"}'))[0] == 200
        assert server.connections == 1
        await asyncio.sleep(0.1)
        assert (await client.post_json("/translate", b'{"text": "a"}'))[0] == 200
        assert server.connections == 2


def test_client_needs_an_http_url() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        HttpClient("https://example.org")
