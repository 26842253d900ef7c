"""The scheduler: owner of every live request of one engine, and of when each joins the batch.

Plain Python, no tensors. A request enters with :meth:`Scheduler.add` and is ``waiting``;
once per engine iteration :meth:`Scheduler.schedule` returns the plan: which requests
to encode now (``encoding``), and which leave (aborted, or failed past their deadline).
The engine joins the encoded ones to its batch (:meth:`Scheduler.joined`: ``running``),
steps it and hands the step's events back to :meth:`Scheduler.update`, which finishes
requests and decides what goes out. Nothing else changes a request's status.

Admission takes turns between clients (a request's ``client``, the name of its API key): the
next request admitted is the oldest of the client whose turn it is, and a client that got
one goes to the back of the line. So a client that floods the queue gets one request in for
every one of each other waiting client, instead of all the rows in arrival order; within a
client, and with a single client (no API keys), admission is first come, first served. The
queue bound (``max_queue``) is one for all clients: keeping a key from filling it is the
rate limits' job (service/ratelimit.py).

Admission policies:

- ``continuous``: admit at any step while the row and token budgets allow; a new
  request never waits for the running batch to finish. While a batch runs, admission
  waits until the group it can take (waiting rows that fit in the free rows) is at least
  a quarter of the rows in flight, or until ``admit_delay_s`` has passed since the last
  admission, and then encodes the group together: encoding is a sequential LSTM pass whose
  cost hardly grows with the batch, so admitting every arrival on its own spends a busy
  engine's time on admission. The delay counts from the last admission, not from the
  oldest arrival: under overload every queued request is old, and would be admitted a few
  rows at every step. An idle engine admits at once, so a lone request pays no delay
  (vLLM's ``scheduler_delay_factor`` groups prompt prefills for the same reason).
- ``static``: only when the batch is empty, collect up to ``max_rows`` rows or wait at
  most ``max_delay_s`` after the oldest arrival, then run that batch to completion
  (the dynamic batching of TorchServe / Triton).
- ``none``: one request at a time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from seq2seq.generation import StepEvent
from service.engine.messages import EngineStats
from service.engine.request import Output, Request, RequestStatus
from service.errors import DeadlineExceeded, ServiceError

Policy = Literal["continuous", "static", "none"]
ADMIT_GROUP_FRACTION = 4  # continuous: a group to encode is >= 1/4 of the rows in flight (or admit_delay_s passed)
SERVICE_TIME_WEIGHT = 0.1  # of the newest request in the moving average behind Retry-After


class QueueFull(Exception):
    pass


@dataclass
class SchedulerOutput:
    """The plan of one engine iteration."""

    admit: list[Request] = field(default_factory=list)  # encode these now, as one group
    left: list[Request] = field(default_factory=list)  # aborted or failed: their rows leave the batch
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
        self.waiting: deque[Request] = deque()  # every waiting request, in arrival order
        # The same requests by client, in arrival order; the dict's order is the clients' turns.
        self._queues: dict[str, deque[Request]] = {}
        self.running: dict[str, Request] = {}  # admitted: encoding, or in the batch
        self.rows = 0  # decoder rows of the running requests
        self.tokens = 0  # source tokens they hold (budget_tokens)
        self.stats = EngineStats()
        self._aborts: set[str] = set()
        self._last_admit = -math.inf
        self._service_s = 0.5  # moving average of submit-to-result time, for Retry-After

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborts)

    # -- entering and leaving ----------------------------------------------------------------
    def add(self, requests: list[Request], now: float) -> None:
        """Queue all of ``requests`` or none of them (:class:`QueueFull`)."""
        if len(self.waiting) + len(requests) > self.max_queue:
            self.stats.rejected += len(requests)
            raise QueueFull(f"{len(self.waiting)} requests waiting (limit {self.max_queue})")
        for r in requests:
            r.arrival, r.deadline, r.status = now, now + r.timeout_s, RequestStatus.WAITING
            self._queues.setdefault(r.client, deque()).append(r)
        self.waiting.extend(requests)

    def retry_after_s(self) -> int:
        """Seconds until the queue has room, by the recent time per request and the rows that work on it."""
        return math.ceil(self._service_s * (len(self.waiting) + 1) / self.max_rows)

    def abort(self, request_ids: Iterable[str]) -> None:
        """Cancel these requests wherever they are; they leave at the next :meth:`schedule`."""
        self._aborts.update(request_ids)

    def fail(self, requests: Iterable[Request], error: ServiceError) -> list[Request]:
        """End these live requests with ``error``; returns them, for the engine to retire."""
        failed = [r for r in requests if not r.status.done]
        for r in failed:
            self._end(r, RequestStatus.FAILED, error)
        return failed

    def fail_all(self, error: ServiceError) -> list[Request]:
        return self.fail([*self.waiting, *self.running.values()], error)

    def in_batch(self) -> list[Request]:
        return [r for r in self.running.values() if r.status is RequestStatus.RUNNING]

    def _end(self, request: Request, status: RequestStatus, error: ServiceError | None = None) -> None:
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
            queue = self._queues[request.client]
            queue.remove(request)
            if not queue:
                del self._queues[request.client]
        else:
            del self.running[request.id]
            self.rows -= request.rows
            self.tokens -= request.budget_tokens
        request.status, request.error = status, error
        if status is RequestStatus.ABORTED:
            self.stats.cancelled += 1

    # -- one iteration -----------------------------------------------------------------------
    def schedule(self, now: float, admit: bool = True) -> SchedulerOutput:
        """Take aborts and expired deadlines, then admit by the policy (unless ``admit`` is false:
        a group is still being encoded)."""
        plan = SchedulerOutput()
        aborts, self._aborts = self._aborts, set()
        for r in [*self.waiting, *self.running.values()]:
            if r.id in aborts:
                self._end(r, RequestStatus.ABORTED)
            elif r.deadline <= now:
                queued = r.status is RequestStatus.WAITING
                where = "while queued" if queued else "during generation"
                self._end(r, RequestStatus.FAILED, DeadlineExceeded(f"deadline exceeded {where}"))
            else:
                continue
            plan.left.append(r)
        if admit:
            plan.admit, plan.wait_s = self._admission(now)
            for r in plan.admit:
                r.status = RequestStatus.ENCODING
                self.running[r.id] = r
                self.rows += r.rows
                self.tokens += r.budget_tokens
        return plan

    def joined(self, requests: Iterable[Request]) -> list[Request]:
        """These encoded requests are in the batch now; returns those that left while they were
        encoding, whose rows go again."""
        left = []
        for r in requests:
            if r.status is RequestStatus.ENCODING:
                r.status = RequestStatus.RUNNING
            else:
                left.append(r)
        return left

    def update(self, events: list[StepEvent], now: float) -> list[Output]:
        """Advance the running requests by one step's events; returns what goes out: every
        final result, and new tokens for the requests that stream them."""
        out: list[Output] = []
        for event in events:
            r = self.running[event.request_id]
            if r.first_token_at is None:
                r.first_token_at = now
                self.stats.ttft_seconds.append(now - r.arrival)
            if event.token is not None:
                self.stats.generated_tokens += 1
                if r.stream_tokens:
                    out.append(event)
            if event.finished is not None:
                if r.params.beam_size > 1:  # beams emit no token events
                    self.stats.generated_tokens += len(event.finished[0].tokens)
                w = SERVICE_TIME_WEIGHT
                self._service_s = (1 - w) * self._service_s + w * (now - r.arrival)
                self._end(r, RequestStatus.FINISHED)
                out.append(event)
        return out

    def take_stats(self) -> EngineStats:
        stats, self.stats = self.stats, EngineStats()
        stats.queue_depth, stats.running_rows = len(self.waiting), self.rows
        return stats

    # -- admission ---------------------------------------------------------------------------
    def _admission(self, now: float) -> tuple[list[Request], float | None]:
        if not self.waiting:
            return [], None
        if self.policy == "continuous":
            if self.rows and now - self._last_admit < self.admit_delay_s:
                group = min(sum(r.rows for r in self.waiting), self.max_rows - self.rows)
                if group * ADMIT_GROUP_FRACTION < self.rows + group:
                    return [], None  # keep decoding; encode a larger group a little later
            admit = self._fill()
            if admit:
                self._last_admit = now
            return admit, None
        if self.rows:  # static and none run a batch to completion before the next
            return [], None
        if self.policy == "none":
            return [self._pop_next()], None
        waited = now - self.waiting[0].arrival
        if sum(r.rows for r in self.waiting) < self.max_rows and waited < self.max_delay_s:
            return [], self.max_delay_s - waited
        return self._fill(), None

    def _fill(self) -> list[Request]:
        """Admission by turns within the budgets; an empty batch always takes at least one request.
        A request that does not fit keeps its client's turn: it goes first once rows are free."""
        admitted: list[Request] = []
        rows, tokens = self.rows, self.tokens
        while self._queues:
            r = next(iter(self._queues.values()))[0]
            fits = rows + r.rows <= self.max_rows and tokens + r.budget_tokens <= self.max_tokens
            if not fits and (rows or admitted):
                break
            admitted.append(self._pop_next())
            rows += r.rows
            tokens += r.budget_tokens
        return admitted

    def _pop_next(self) -> Request:
        """The oldest request of the client whose turn it is; that client goes to the back of the line."""
        client, queue = next(iter(self._queues.items()))
        r = queue.popleft()
        del self._queues[client]
        if queue:
            self._queues[client] = queue
        self.waiting.remove(r)
        return r
