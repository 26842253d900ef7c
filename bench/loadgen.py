"""Asyncio load generator: closed-loop workers and open-loop Poisson arrivals over HTTP/1.1.

Two ways of offering load, because they answer different questions:

- **closed loop** (``concurrency`` workers, each sends its next request as soon as the
  previous one returns): the throughput a fixed number of users get, and the saturation
  throughput at high concurrency. It under-reports latency at overload, because users
  slow down with the server.
- **open loop** (requests arrive at a fixed Poisson rate whatever the server does): the
  latency a service with independent users sees. Each request's latency is measured from
  its *scheduled* arrival, so a client that falls behind cannot hide queueing
  (no coordinated omission).

Every loop is bounded: a closed loop stops issuing at its deadline and cancels what is
still in flight (closing the connection, which the server turns into an abort); an open
loop issues a fixed, pre-drawn list of arrivals and each request has a total timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.httpclient import TRANSPORT_ERRORS, HttpClient

log = logging.getLogger("bench.loadgen")


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request; times are ``time.perf_counter()`` seconds."""

    index: int  # position of the input sentence in the (shuffled) input list
    start: float  # sent (closed loop) or scheduled to arrive (open loop)
    end: float
    status: int  # HTTP status; 0 when no response came (connection error, client timeout)
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None  # streamed requests: seconds from start to the first token event
    finish_reason: str | None = None  # "eos" or "length" (of the first text): long tails are often max_length
    error: str | None = None  # why it failed: "http_429", "client:ReadTimeout", "sse:deadline_exceeded", ...

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class LoadRun:
    """The records of one load level and the window in which it is measured (after warm-up)."""

    records: list[RequestRecord]
    window_start: float
    window_end: float

    @property
    def duration(self) -> float:
        return self.window_end - self.window_start


def load_sentences(path: Path) -> list[str]:
    """Non-empty lines of a text file, gzip-compressed when the name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def shuffled(sentences: Sequence[str], seed: int) -> list[str]:
    """A seeded shuffle, so that every mode and the bare model see the same mixed-length order."""
    out = list(sentences)
    random.Random(seed).shuffle(out)
    return out


def poisson_arrivals(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival offsets (seconds from 0) of a Poisson process of ``rate``/s on ``[0, duration_s)``."""
    if rate <= 0:
        return []
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


class Target:
    """One kind of request (route + body template) over a cycle of inputs; calling it sends the next one.

    Request bodies are encoded once, up front, so that the per-request work on the client
    side is only the HTTP exchange. ``/translate`` replies are read for ``usage``; with
    ``stream=True`` the ``/chat`` SSE stream is read line by line to time the first
    ``token`` event.
    """

    def __init__(
        self,
        client: HttpClient,
        route: str,
        field: str,
        sentences: Sequence[str],
        body: dict[str, Any],
        *,
        timeout_s: float,
        stream: bool = False,
    ) -> None:
        if not sentences:
            raise ValueError("no input sentences")
        self.client = client
        self.route = route
        self.timeout_s = timeout_s
        self.stream = stream
        extra = {"stream": True} if stream else {}
        self.bodies = [json.dumps({**body, field: s, **extra}).encode() for s in sentences]
        self._next: Iterator[int] = itertools.cycle(range(len(sentences)))

    async def __call__(self, scheduled: float | None = None, index: int | None = None) -> RequestRecord:
        """Send the next input (or input ``index``); ``scheduled`` is the open-loop arrival time latency counts from."""
        if index is None:
            index = next(self._next)
        start = time.perf_counter() if scheduled is None else scheduled
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.stream:
                    return await self._streamed(index, start)
                status, content = await self.client.post_json(self.route, self.bodies[index])
        except (*TRANSPORT_ERRORS, TimeoutError) as exc:
            return RequestRecord(index, start, time.perf_counter(), 0, error=f"client:{type(exc).__name__}")
        end = time.perf_counter()
        if status != 200:
            return RequestRecord(index, start, end, status, error=f"http_{status}")
        data = json.loads(content)
        usage = data.get("usage") or {}
        finish = (data.get("translations") or [{}])[0].get("finish_reason")
        return RequestRecord(
            index, start, end, 200, usage.get("input_tokens", 0), usage.get("output_tokens", 0), finish_reason=finish
        )

    async def _streamed(self, index: int, start: float) -> RequestRecord:
        ttft: float | None = None
        event = ""
        record: RequestRecord | None = None
        async with self.client.post(self.route, self.bodies[index]) as resp:
            if resp.status != 200:
                await resp.read()
                return RequestRecord(index, start, time.perf_counter(), resp.status, error=f"http_{resp.status}")
            # Read to the end of the stream even after "done", so the connection can be reused.
            async for line in resp.lines():
                if record is not None:
                    continue
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                    if event == "token" and ttft is None:
                        ttft = time.perf_counter() - start
                elif line.startswith("data:") and event in ("done", "error"):
                    data = json.loads(line.removeprefix("data:"))
                    end = time.perf_counter()
                    if event == "error":
                        code = data.get("error", {}).get("code", "unknown")
                        record = RequestRecord(index, start, end, 200, ttft=ttft, error=f"sse:{code}")
                    else:
                        tokens, finish = data.get("tokens", 0), data.get("finish_reason")
                        record = RequestRecord(
                            index, start, end, 200, output_tokens=tokens, ttft=ttft, finish_reason=finish
                        )
        return record or RequestRecord(index, start, time.perf_counter(), 200, ttft=ttft, error="sse:no_done_event")


EdgeHook = Callable[[], Awaitable[None]]  # called at the start and at the end of the measurement window


async def _no_hook() -> None:
    return None


async def closed_loop(
    target: Target, concurrency: int, warmup_s: float, duration_s: float, on_edge: EdgeHook = _no_hook
) -> LoadRun:
    """``concurrency`` workers send back to back; the window opens after warm-up, then stragglers are cancelled.

    Warm-up lasts ``warmup_s`` *and* until every worker has completed one request: at high
    concurrency the first replies come back faster than in steady state (the first batch
    starts from an empty queue), and in ``none`` mode at concurrency 128 one round of
    requests takes far longer than a fixed warm-up. Each first request ends within the
    target's timeout, so the wait is bounded.

    Only requests that *complete* inside the window count (the usual closed-loop rule);
    cancelling the stragglers instead of waiting for them keeps a slow mode from
    stretching the run.
    """
    t0 = time.perf_counter()
    records: list[RequestRecord] = []
    unwarmed = concurrency
    warm = asyncio.Event()

    async def worker() -> None:
        nonlocal unwarmed
        first = True
        while True:
            records.append(await target())
            if first:
                first = False
                unwarmed -= 1
                if not unwarmed:
                    warm.set()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        warmed = asyncio.create_task(warm.wait())
        done, _ = await asyncio.wait([warmed, *workers], return_when=asyncio.FIRST_COMPLETED)
        for task in done - {warmed}:
            warmed.cancel()
            task.result()  # a worker can only end by an unexpected error: raise it here instead of hanging
        window_start = time.perf_counter()
        await on_edge()
        await asyncio.sleep(max(0.0, window_start + duration_s - time.perf_counter()))
        window_end = time.perf_counter()
        await on_edge()
    finally:
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    log.debug("closed loop c=%d: warm-up %.1f s", concurrency, window_start - t0)
    return LoadRun(records, window_start, window_end)


async def open_loop(
    target: Target, rate: float, warmup_s: float, duration_s: float, seed: int, on_edge: EdgeHook = _no_hook
) -> LoadRun:
    """Poisson arrivals at ``rate``/s for ``warmup_s + duration_s``; waits for every request (each is time-bounded).

    Requests that *arrive* in the window are the latency sample, so overload shows up as
    growing latency and errors rather than disappearing from the statistics.
    """
    arrivals = poisson_arrivals(rate, warmup_s + duration_s, random.Random(seed))
    t0 = time.perf_counter()
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s

    async def edges() -> None:
        for edge in (window_start, window_end):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            await on_edge()

    marker = asyncio.create_task(edges())
    tasks: list[asyncio.Task[RequestRecord]] = []
    for offset in arrivals:
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(target(scheduled=t0 + offset)))
    records = list(await asyncio.gather(*tasks))
    await marker
    return LoadRun(records, window_start, window_end)
