"""Admission policy: which waiting requests join the running batch, and when.

Plain Python, no tensors: the engine asks :meth:`Scheduler.schedule` once per loop with
the size of the running batch and gets back the requests to encode now.

- ``continuous``: admit at any step while the row and token budgets allow; a new
  request never waits for the running batch to finish. While a batch runs, admission
  waits until the group it can take (waiting rows that fit in the free rows) is at least
  a quarter of the rows in flight, or until ``admit_delay_s`` has passed since the last
  admission, and then encodes the group together. Encoding is a sequential LSTM pass
  whose cost hardly grows with the batch (about 5 ms for one sentence and 13 ms for
  eight on a 2-core CPU), so admitting every arrival on its own spent half of a busy
  engine's time on admission (measured when each join also copied the running state). The delay counts
  from the last admission, not from the oldest arrival: under overload every queued
  request is old, and would be admitted a few rows at every step. An idle engine admits
  at once, so a lone request pays no delay (vLLM's ``scheduler_delay_factor`` groups
  prompt prefills for the same reason).
- ``static``: only when the batch is empty, collect up to ``max_rows`` rows or wait at
  most ``max_delay_s`` after the oldest arrival, then run that batch to completion
  (the dynamic batching of TorchServe / Triton).
- ``none``: one request at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["continuous", "static", "none"]
ADMIT_GROUP_FRACTION = 4  # continuous: a group to encode is >= 1/4 of the rows in flight (or admit_delay_s passed)


class QueueFull(Exception):
    pass


@dataclass
class WorkItem:
    request_id: str
    rows: int  # decoder rows it occupies (beam_size)
    src_tokens: int
    deadline: float  # time.monotonic() by which it must be answered
    enqueued: float
    payload: Any = field(default=None, repr=False)  # what the engine needs to run it


@dataclass(frozen=True)
class Decision:
    admit: list[WorkItem]
    wait_s: float | None = None  # static batching: nothing to admit yet, look again after this long


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        max_rows: int,
        max_tokens: int,
        max_queue: int,
        max_delay_s: float = 0.0,
        admit_delay_s: float = 0.0,
    ) -> None:
        self.policy = policy
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s  # static
        self.admit_delay_s = admit_delay_s  # continuous, while a batch runs
        self._last_admit = float("-inf")
        self.waiting: deque[WorkItem] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, items: list[WorkItem]) -> None:
        """Queue all of ``items`` or none of them."""
        if len(self.waiting) + len(items) > self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests waiting (limit {self.max_queue})")
        self.waiting.extend(items)

    def abort(self, request_ids: set[str]) -> list[WorkItem]:
        return self._take(lambda item: item.request_id in request_ids)

    def expired(self, now: float) -> list[WorkItem]:
        return self._take(lambda item: item.deadline <= now)

    def _take(self, pred: Any) -> list[WorkItem]:
        taken = [item for item in self.waiting if pred(item)]
        if taken:
            self.waiting = deque(item for item in self.waiting if not pred(item))
        return taken

    def schedule(self, running_rows: int, running_tokens: int, now: float) -> Decision:
        if not self.waiting:
            return Decision([])
        if self.policy == "continuous":
            if running_rows and now - self._last_admit < self.admit_delay_s:
                group = min(sum(item.rows for item in self.waiting), self.max_rows - running_rows)
                if group * ADMIT_GROUP_FRACTION < running_rows + group:
                    return Decision([])  # keep decoding; encode a larger group a little later
            admit = self._fill(running_rows, running_tokens)
            if admit:
                self._last_admit = now
            return Decision(admit)
        if running_rows:  # static and none run a batch to completion before the next
            return Decision([])
        if self.policy == "none":
            return Decision([self.waiting.popleft()])
        waited = now - self.waiting[0].enqueued
        if sum(item.rows for item in self.waiting) < self.max_rows and waited < self.max_delay_s:
            return Decision([], wait_s=self.max_delay_s - waited)
        return Decision(self._fill(0, 0))

    def _fill(self, rows: int, tokens: int) -> list[WorkItem]:
        """FIFO admission within the budgets; an empty batch always takes at least one request."""
        admitted: list[WorkItem] = []
        while self.waiting:
            item = self.waiting[0]
            fits = rows + item.rows <= self.max_rows and tokens + item.src_tokens * item.rows <= self.max_tokens
            if not fits and (rows or admitted):
                break
            admitted.append(self.waiting.popleft())
            rows += item.rows
            tokens += item.src_tokens * item.rows
        return admitted
