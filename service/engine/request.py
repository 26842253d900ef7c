"""One request from submit to its last output, and what the engine sends back for it.

A :class:`Request` is built once by the HTTP layer and is the same object everywhere after:
it crosses to an engine process as it is, waits in the scheduler, joins the decoder batch
(it is a :class:`~seq2seq.generation.DecodeRequest`) and leaves it. Its ``status`` says where
it is; only the scheduler changes it.

What comes back for a request is a stream of outputs keyed by its id: the batch's own
:class:`~seq2seq.generation.StepEvent` (a new token, or the finished hypotheses), or a
:class:`RequestFailed`. The asyncio side keeps the request's stream; a stream cannot cross
a process, so the request carries only what its stream wants (``stream_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from seq2seq.decoding import DecodeParams
from seq2seq.generation import StepEvent
from service.errors import ServiceError


class RequestStatus(StrEnum):
    """``waiting -> encoding -> running -> finished``, or ``aborted`` / ``failed`` from any live state."""

    WAITING = "waiting"  # queued for admission
    ENCODING = "encoding"  # admitted; its source is being encoded
    RUNNING = "running"  # its rows are in the decoder batch
    FINISHED = "finished"  # its hypotheses went out
    ABORTED = "aborted"  # cancelled: the client went away; nothing more is sent
    FAILED = "failed"  # its error went out (deadline, failed step, shutdown)

    @property
    def done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.ABORTED, RequestStatus.FAILED)


@dataclass(eq=False)
class Request:
    id: str
    src_ids: list[int]  # source piece ids, no BOS/EOS
    params: DecodeParams
    timeout_s: float  # deadline for queue + generation, from submit
    stream_tokens: bool = False  # the client wants every token as it is decoded, not only the result
    return_attention: bool = False  # its hypotheses carry the attention weights (attention models)
    client: str = ""  # name of the API key that sent it ("" without keys): admission takes turns between clients
    status: RequestStatus = RequestStatus.WAITING
    arrival: float = 0.0  # engine's time.monotonic() at submit
    deadline: float = math.inf
    first_token_at: float | None = None
    encode_start: float | None = None  # engine's time.monotonic(): its group's encoding began
    encode_end: float | None = None  # and ended
    error: ServiceError | None = field(default=None, repr=False)  # why it failed

    def __post_init__(self) -> None:
        if not self.src_ids:
            raise ValueError("source is empty")

    @property
    def rows(self) -> int:
        """Decoder rows it occupies while it runs (beam_size)."""
        return self.params.rows

    @property
    def budget_tokens(self) -> int:
        """Source tokens it holds in the running batch: every row keeps its own copy of the source."""
        return len(self.src_ids) * self.rows

    def timings(self, finished: float) -> Timings:
        """When it passed each stage, for a request that finished at ``finished``."""
        assert self.encode_start is not None and self.encode_end is not None  # it was encoded: it finished
        return Timings(self.arrival, self.encode_start, self.encode_end, finished)


@dataclass(frozen=True, slots=True)
class Timings:
    """When a finished request passed each stage of the engine, in its ``time.monotonic()``.

    Linux's monotonic clock is one clock for every process of a machine, so the HTTP process
    can place these on its own time line (the access log, trace spans) although an engine
    process took them.
    """

    arrival: float  # queued
    encode_start: float  # admitted: its group's encoding began
    encode_end: float  # encoded; it joins the batch at the next step
    finished: float  # its result went out

    @property
    def queue_s(self) -> float:
        return self.encode_start - self.arrival

    @property
    def encode_s(self) -> float:
        return self.encode_end - self.encode_start

    @property
    def generation_s(self) -> float:
        """From the end of its encoding to its result: decoding, including the step it waited to join."""
        return self.finished - self.encode_end


@dataclass(frozen=True, slots=True)
class RequestFailed:
    request_id: str
    error: ServiceError


Output = StepEvent | RequestFailed


def is_last(output: Output) -> bool:
    """Whether nothing more comes for this request after ``output``."""
    return isinstance(output, RequestFailed) or output.finished is not None
