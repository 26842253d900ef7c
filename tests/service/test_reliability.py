"""Reliability suites: poison among normal load, a burst far past capacity, a soak, and chaos.

The real server (``python -m service``: uvloop, engine processes) runs the poison, burst and
soak suites; the chaos suite kills engine processes of an app served in-process, whose
processes it can name. Each suite has a short form in the default run; ``-m slow`` runs the
soak at full length. Figures go to ``artifacts/reliability/`` (JSON, and the soak's memory
curve as a PNG).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server_process import ROOT, ServiceProcess
from tests.service.conftest import translation_texts

ARTIFACTS = ROOT / "artifacts" / "reliability"
TEXTS = [
    "Ein Mann spielt mit einem Hund im Park.",
    "Zwei Kinder laufen auf der Straße.",
    "Eine Frau liest ein Buch.",
    "Ein Hund läuft.",
    "Drei Männer arbeiten.",
]


def record(name: str, figures: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with ServiceProcess(tmp_path_factory.mktemp("reliability") / "server.log", store=tiny_store) as s:
        s.wait_ready(60)
        yield s


def client_for(server: ServiceProcess, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)


async def test_poisoned_requests_among_normal_load_fail_alone(server: ServiceProcess) -> None:
    normal = [{"text": t, "max_length": 16, **extra} for t in TEXTS for extra in ({}, {"beam_size": 3})]
    normal += [{"text": TEXTS[0], "sample": True, "seed": 5, "max_length": 16}]
    poison = [
        b'{"text": "Ein Hund.", "sample": true, "top_k": 9223372036854775808}',
        b'{"text": "Ein Hund.", "sample": true, "temperature": 1e-300}',
        b'{"text": "Ein Hund.", "sample": true, "top_p": 5e-324}',
        b'{"text": "\\ud800"}',
        b'{"text": "\xed\xa0\x80"}',
        b'{"texts": []}',
        b'{"text": "Ein Hund.", "min_length": 100000000000000000000}',
    ]
    async with client_for(server, 64) as client:
        alone = [(await client.post("/translate", json=b)).json()["translations"] for b in normal]
        headers = {"content-type": "application/json"}
        calls = [client.post("/translate", json=b) for b in normal * 3]
        calls += [client.post("/translate", content=p, headers=headers) for p in poison * 3]
        replies = await asyncio.gather(*calls)
    good, bad = replies[: len(normal) * 3], replies[len(normal) * 3 :]
    said = [translation_texts(r.json()["translations"]) for r in good]
    assert said == [translation_texts(t) for t in alone] * 3  # as alone, whatever ran beside them
    assert all(r.status_code == 422 and r.json()["error"]["code"] == "invalid_request" for r in bad)


async def test_a_burst_far_past_capacity_gets_correct_200s_and_429s(server: ServiceProcess) -> None:
    """200 requests of 64 texts at once, about ten times what the queue holds: only correct 200s
    and 429s, and ready and translating at once after."""
    requests, texts = 200, 64
    body = {"texts": ["Ein Mann spielt im Park.", "Zwei Kinder laufen."] * (texts // 2), "max_length": 12}
    async with client_for(server, requests) as client:
        alone = (await client.post("/translate", json=body)).json()["translations"]
        before = server.memory_bytes()
        t0 = time.monotonic()
        replies = await asyncio.gather(*(client.post("/translate", json=body) for _ in range(requests)))
        burst_s = time.monotonic() - t0
        after = server.memory_bytes()
        statuses = Counter(r.status_code for r in replies)
        assert set(statuses) <= {200, 429} and statuses[429] > 0, statuses
        assert all(r.json()["translations"] == alone for r in replies if r.status_code == 200)
        assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status_code == 429)
        t1 = time.monotonic()
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/translate", json=body)).json()["translations"] == alone
        recovered_s = time.monotonic() - t1
    assert after - before < 200 * 2**20, (before, after)  # bounded by the queue, not by the burst
    assert recovered_s < 1
    record(
        f"burst-{requests}x{texts}",
        {
            "requests": requests,
            "texts_per_request": texts,
            "statuses": dict(statuses),
            "seconds": round(burst_s, 2),
            "pss_before_mib": round(before / 2**20),
            "pss_after_mib": round(after / 2**20),
            "ready_and_translating_after_s": round(recovered_s, 2),
        },
    )


async def soak(server: ServiceProcess, requests: int, name: str) -> None:
    """``requests`` at concurrency 32; memory sampled throughout; fails if it keeps growing."""
    samples: list[tuple[float, int]] = []
    statuses: Counter[int] = Counter()
    done = 0
    t0 = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - t0, server.memory_bytes()))
            await asyncio.sleep(0.25)

    async def worker(client: httpx.AsyncClient, worker_id: int) -> None:
        nonlocal done
        while done < requests:
            done += 1
            text = TEXTS[(done + worker_id) % len(TEXTS)]
            statuses[(await client.post("/translate", json={"text": text, "max_length": 16})).status_code] += 1

    sampler = asyncio.create_task(sample())
    async with client_for(server, 32) as client:
        await asyncio.gather(*(worker(client, i) for i in range(32)))
    sampler.cancel()
    seconds = time.monotonic() - t0
    steady = samples[len(samples) // 5 :]  # after the warm-up
    half = len(steady) // 2
    first, last = statistics.median(m for _, m in steady[:half]), statistics.median(m for _, m in steady[half:])
    figures = {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "seconds": round(seconds, 1),
        "requests_per_s": round(sum(statuses.values()) / seconds, 1),
        "pss_start_mib": round(samples[0][1] / 2**20, 1),
        "pss_peak_mib": round(max(m for _, m in samples) / 2**20, 1),
        "pss_end_mib": round(samples[-1][1] / 2**20, 1),
        "pss_steady_first_half_median_mib": round(first / 2**20, 1),
        "pss_steady_second_half_median_mib": round(last / 2**20, 1),
        "curve": [(round(t, 2), m) for t, m in samples],
    }
    record(name, figures)
    plot_memory(samples, ARTIFACTS / f"{name}.png")
    assert statuses == Counter({200: sum(statuses.values())}), statuses
    assert last - first < 16 * 2**20, figures  # flat after the warm-up, within allocator noise


def plot_memory(samples: list[tuple[float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([t for t, _ in samples], [m / 2**20 for _, m in samples])
    ax.set_xlabel("seconds")
    ax.set_ylabel("PSS, MiB (server + engines)")
    ax.set_title("memory under a soak at concurrency 32")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def test_a_short_soak_keeps_memory_flat(server: ServiceProcess) -> None:
    await soak(server, 3_000, "soak-short")


@pytest.mark.slow
async def test_a_soak_of_20000_requests_keeps_memory_flat(server: ServiceProcess) -> None:
    await soak(server, 20_000, "soak")


def engine_pid(server: ServiceProcess, model: str) -> int:
    """The engine process of ``model``: its process title names it."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if (child.cmdline() or [""])[0] == f"seq2seq-serve engine {model}":
                return child.pid
    raise AssertionError(f"no engine process for {model}")


async def run_in_slices(pid: int, until: asyncio.Event | None = None) -> None:
    """Let a stopped process run a few milliseconds at a time (a few decoder steps), until ``until``."""
    while True:
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
        os.kill(pid, signal.SIGSTOP)
        if until is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 0.2)
            return


async def sse_lines(client: httpx.AsyncClient, body: dict, first_token: asyncio.Event) -> tuple[int, list[str]]:
    """The status and the lines of one streamed chat; sets ``first_token`` at its first token."""
    lines = []
    async with client.stream("POST", "/chat", json=body) as stream:
        async for line in stream.aiter_lines():
            if line:
                lines.append(line)
            if line.startswith("data:") and stream.status_code == 200:
                first_token.set()
    return stream.status_code, lines


async def test_killing_engines_mid_beam_and_mid_stream_under_load(server: ServiceProcess) -> None:
    """SIGKILL an engine process while beam requests run on it, and another while it streams: its
    requests in flight end with 503 (the streams with an error event), nothing hangs, the other
    model serves on throughout, and each engine is back within five seconds. The victim runs
    only in slices of a few milliseconds before the kill, so that it is certainly mid-way."""
    chat = ("/chat", {"message": "hello there", "max_length": 20})
    translate = ("/translate", {"text": TEXTS[0], "max_length": 20})
    figures = {}
    async with client_for(server, 64) as client:
        for victim, (route, body), (other_route, other_body) in (
            ("translate-de-en", translate, chat),
            ("chat-en", chat, translate),
        ):
            pid = engine_pid(server, victim)
            os.kill(pid, signal.SIGSTOP)
            other = [asyncio.create_task(client.post(other_route, json=other_body)) for _ in range(16)]
            if victim == "translate-de-en":  # mid-beam
                beams = {"text": TEXTS[0], "beam_size": 4, "min_length": 250, "max_length": 250}
                in_flight = [asyncio.create_task(client.post("/translate", json=beams)) for _ in range(4)]
                await asyncio.sleep(0.3)  # the requests reach the engine's pipe
                await run_in_slices(pid)
            else:  # mid-stream
                first_token = asyncio.Event()
                stream = {"message": "hello", "min_length": 250, "max_length": 250, "stream": True}
                in_flight = [asyncio.create_task(sse_lines(client, stream, first_token)) for _ in range(8)]
                await run_in_slices(pid, until=first_token)
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*in_flight), 30)
            if victim == "translate-de-en":
                assert [r.status_code for r in results] == [503] * 4
                assert all(r.json()["error"]["code"] == "unavailable" for r in results)
            else:  # cut mid-stream: an error event; not started yet: the error's own status
                mid_stream = [lines for status, lines in results if status == 200]
                assert mid_stream and all(status in (200, 503) for status, _ in results)
                for lines in mid_stream:
                    assert lines[0] == "event: token" and "event: done" not in lines, lines[:6]
                    assert lines[-2] == "event: error" and '"code": "unavailable"' in lines[-1], lines[-3:]
                for status, lines in results:
                    if status == 503:
                        assert '"code": "unavailable"' in lines[0] or '"code":"unavailable"' in lines[0]
            replies = await asyncio.wait_for(asyncio.gather(*other), 30)
            assert [r.status_code for r in replies] == [200] * 16  # the other model never noticed
            while (await client.get("/health/ready")).status_code != 200:
                assert time.monotonic() - t_kill < 30, "the engine did not come back"
                await asyncio.sleep(0.05)
            back_s = time.monotonic() - t_kill
            assert (await client.post(route, json=body)).status_code == 200
            assert engine_pid(server, victim) != pid
            figures[victim] = {"killed": "mid-beam" if victim == "translate-de-en" else "mid-stream"}
            figures[victim]["back_after_s"] = round(back_s, 2)
            assert back_s < 5, figures
    record("chaos", figures)
    assert "Traceback" not in server.log()
