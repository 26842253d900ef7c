"""The HTTP side of an engine: outputs routed to their streams, statistics to the metrics; and
the engine's side of it: one message per iteration."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from seq2seq.config import EOS_ID
from seq2seq.decoding import DecodeParams, FinishReason
from seq2seq.device_model import load_model
from seq2seq.generation import Hypothesis, StepEvent
from seq2seq.state import DecoderState
from service.engine.client import EngineClient, LocalEngine, RequestStream
from service.engine.engine import Engine
from service.engine.messages import Abort, Command, EngineStats, Outputs
from service.engine.request import Request, RequestFailed
from service.errors import DeadlineExceeded, EngineUnavailable
from service.metrics import Metrics
from service.settings import Settings

RESULT = [Hypothesis([5, 6], -1.0, -1.0, FinishReason.EOS)]


def request(rid: str, length: int = 200, stream: bool = False) -> Request:
    return Request(rid, [5, 6, 7], DecodeParams(max_length=length, min_length=length), 30, stream_tokens=stream)


async def nothing_in(stream: RequestStream) -> bool:
    try:
        await asyncio.wait_for(stream.next(), 0)
    except TimeoutError:
        return True
    return False


class RecordingClient(EngineClient):
    """An engine client whose engine only records the commands it is sent."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("m", metrics)
        self.sent: list[Command] = []

    alive = True

    def stop(self, grace_s: float = 0.0) -> None:
        self._accepting = False

    def _send(self, command: Command) -> None:
        self.sent.append(command)


async def test_outputs_reach_their_streams_in_order_and_end_them() -> None:
    metrics = Metrics()
    client = RecordingClient(metrics)
    a, b, c = client.submit([request("a"), request("b"), request("c")])
    client.abort({"c"})
    assert c.closed and client.sent[-1] == Abort(frozenset({"c"}))
    assert client.in_flight == 2
    outputs = [
        StepEvent("a", token=5),
        StepEvent("c", token=9),  # aborted: nobody listens
        StepEvent("a", finished=RESULT),
        RequestFailed("b", DeadlineExceeded("late")),
    ]
    stats = EngineStats(queue_depth=3, running_rows=2, step_rows=[2, 1], step_seconds=[0.01, 0.02], rejected=4)
    client.deliver(Outputs(outputs, stats))
    assert await a.next() == outputs[0]
    assert await a.final() == RESULT and a.closed
    with pytest.raises(DeadlineExceeded):
        await b.final()
    assert b.closed and await nothing_in(c)
    sample = metrics.registry.get_sample_value
    assert sample("seq2seq_queue_depth", {"model": "m"}) == 3
    assert sample("seq2seq_batch_size_count", {"model": "m"}) == 2
    assert sample("seq2seq_rejected_total", {"model": "m", "reason": "queue_full"}) == 4
    client.deliver(Outputs([StepEvent("a", token=1)], EngineStats()))  # after its end: dropped
    assert await nothing_in(a)
    client.stop()
    with pytest.raises(EngineUnavailable):
        client.submit([request("d")])


def test_an_engine_sends_one_message_per_iteration(tiny_store: Path) -> None:
    messages: list[Outputs] = []
    done = threading.Event()

    def sink(message: Outputs) -> None:
        messages.append(message)
        if sum(o.finished is not None for m in messages for o in m.outputs if isinstance(o, StepEvent)) == 8:
            done.set()

    engine = Engine("m", load_model(tiny_store / "translate-de-en" / "1", "cpu"), sink, max_rows=8)
    engine.start()
    try:
        engine.submit([request(f"r{i}", length=6, stream=True) for i in range(8)])
        assert done.wait(30)
    finally:
        engine.stop()
    stepped = [m for m in messages if m.stats.step_rows]
    assert len(stepped) == 6 and all(m.stats.step_rows == [8] for m in stepped)  # one message per step
    for m in stepped:  # every streaming request's token of that step, in that one message
        assert sorted(o.request_id for o in m.outputs if o.token is not None) == sorted(f"r{i}" for i in range(8))
    assert sum(m.stats.generated_tokens for m in messages) == 48


async def test_a_stopped_local_engine_fails_what_it_held(tiny_store: Path) -> None:
    settings = Settings(model_store=tiny_store, threads=1, engine_process=False)
    loop = asyncio.get_running_loop()
    client = LocalEngine("translate-de-en", tiny_store / "translate-de-en" / "1", settings, Metrics(), loop)
    (stream,) = client.submit([request("y")])
    await asyncio.to_thread(client.stop, 0)
    with pytest.raises(EngineUnavailable, match="shutting down"):
        await asyncio.wait_for(stream.final(), 5)
    with pytest.raises(EngineUnavailable, match="not accepting"):
        client.submit([request("z")])


def test_a_served_reply_of_min_length_one_shows_text(tiny_store: Path) -> None:
    """The served batch counts no piece that shows no text toward ``min_length``: a model whose
    likeliest reply is a lone "▁" and then EOS still answers with a piece that shows text."""
    model = load_model(tiny_store / "translate-de-en" / "1", "cpu")
    tokenizer = model.loaded.target_tokenizer
    (word_start,) = (i for i in tokenizer.blank_ids if tokenizer.pieces([i]) == ["▁"])
    finished: list[StepEvent] = []
    done = threading.Event()

    def sink(message: Outputs) -> None:
        finished.extend(o for o in message.outputs if isinstance(o, StepEvent) and o.finished is not None)
        if finished:
            done.set()

    engine = Engine("m", model, sink, max_rows=8)
    step = engine.batch.decode_step

    def word_start_then_eos(tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        logprobs, state = step(tokens, state)
        logprobs = logprobs.clone()
        logprobs[:, word_start] += 100.0  # "▁" first ...
        logprobs[tokens == word_start, EOS_ID] += 200.0  # ... and then the end, at once
        return logprobs, state

    engine.batch.decode_step = word_start_then_eos
    engine.start()
    try:
        engine.submit([Request("r", [5, 6, 7], DecodeParams(min_length=1, max_length=6), 30)])
        assert done.wait(30)
    finally:
        engine.stop()
    (hypothesis,) = finished[0].finished or []
    assert hypothesis.tokens[0] == word_start and tokenizer.decode(hypothesis.tokens).strip()
