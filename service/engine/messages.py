"""Messages between the HTTP process and an engine, one dataclass per kind.

The same :class:`Outputs` message reaches the HTTP process's event loop from an engine
thread of its own process and from an engine process's pipe, so both deliver outputs and
record statistics by one path (:meth:`service.engine.client.EngineClient.deliver`). An
engine process is driven with the commands; it answers with the reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.request import Output, Request, Timings


@dataclass
class EngineStats:
    """What an engine did since its last message; the HTTP process adds it to its metrics."""

    queue_depth: int = 0  # at the time of the message
    running_rows: int = 0
    step_rows: list[int] = field(default_factory=list)  # per decoder step
    step_seconds: list[float] = field(default_factory=list)
    step_cpu_seconds: float = 0.0  # the worker thread's CPU time in those steps
    encode_seconds: list[float] = field(default_factory=list)  # per encoded group
    ttft_seconds: list[float] = field(default_factory=list)  # submit to first token, per request
    generated_tokens: int = 0
    cancelled: int = 0
    rejected: int = 0  # queue full
    errors: int = 0  # groups or batches failed by an exception

    @property
    def empty(self) -> bool:
        return not (
            self.step_rows or self.encode_seconds or self.ttft_seconds or self.cancelled or self.rejected or self.errors
        )


# -- commands: HTTP process -> engine process ---------------------------------------------------
@dataclass(frozen=True)
class Submit:
    requests: list[Request]  # all queued, or all refused (an error output each)


@dataclass(frozen=True)
class Abort:
    request_ids: frozenset[str]


@dataclass(frozen=True)
class Stop:
    grace_s: float  # let the requests in flight finish for this long, then fail the rest


Command = Submit | Abort | Stop


# -- reports: engine -> HTTP process ------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    device: str
    dtype: str
    quantization: str


@dataclass(frozen=True)
class LoadFailed:
    error: str


@dataclass(frozen=True)
class Outputs:
    """Every output of one engine iteration, with the statistics since the last message."""

    outputs: list[Output]
    stats: EngineStats
    timings: dict[str, Timings] = field(default_factory=dict)  # of the requests that finished, by id


@dataclass(frozen=True)
class Died:
    reason: str


Report = Loaded | LoadFailed | Outputs | Died
