"""Worker -> event loop hand-off: one wake-up per step, token events only for streaming requests."""

from __future__ import annotations

import asyncio
import threading

import pytest

from seq2seq.decoding import FinishReason
from seq2seq.generation import Hypothesis
from service.engine.streams import ErrorEvent, FinalEvent, RequestStream, TokenEvent, publish
from service.errors import DeadlineExceeded

FINAL = FinalEvent([Hypothesis([5, 6], -1.0, -1.0, FinishReason.EOS)])


async def test_one_step_is_one_wake_up_and_plain_streams_skip_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    wake_ups = 0
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(*args: object) -> object:
        nonlocal wake_ups
        wake_ups += 1
        return call_soon_threadsafe(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    streamed, plain = RequestStream("a", tokens=True), RequestStream("b", tokens=False)
    step = [(streamed, TokenEvent(5)), (plain, TokenEvent(7)), (streamed, TokenEvent(6)), (streamed, FINAL)]
    step.append((plain, ErrorEvent(DeadlineExceeded("late"))))
    worker = threading.Thread(target=publish, args=(step,))
    worker.start()
    worker.join()
    assert wake_ups == 1
    assert streamed.closed and plain.closed
    assert [await streamed.next() for _ in range(3)] == [TokenEvent(5), TokenEvent(6), FINAL]
    with pytest.raises(DeadlineExceeded):
        await plain.final()  # the token event never reached it: the error is its first event


async def test_publish_after_the_loop_closed_is_a_no_op() -> None:
    loop = asyncio.new_event_loop()
    stream = RequestStream("a", loop=loop)
    loop.close()
    publish([(stream, FINAL)])  # the handler is gone; the worker must not fail
    assert stream.closed
