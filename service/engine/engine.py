"""The engine of one model: a worker thread that runs the decode loop over one batch.

Requests enter only through :meth:`Engine.submit` and leave only as outputs to the
engine's sink (tokens, then one result or error each), or through :meth:`Engine.abort`.
The scheduler owns every live request; the engine owns the decoder batch and applies the
scheduler's plan to it, one iteration at a time (:meth:`Engine.step`).

With ``overlap_encode``, requests admitted while a batch is decoding are encoded on a
second thread (the encoder) and join the batch at the first step after their encoding
is done, so the running rows keep stepping instead of waiting for the new sources' LSTM
pass (the "prefill stalls decode" problem of LLM servers). An idle engine encodes on the
worker itself: there is nothing to overlap with, and a hand-off would only add latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from seq2seq.device_model import DeviceModel
from seq2seq.state import DecoderState
from service.engine.messages import Abort, Command, Died, Outputs, Stop, Submit
from service.engine.request import Output, Request, RequestFailed, Timings
from service.engine.scheduler import Policy, QueueFull, Scheduler
from service.errors import EngineUnavailable, InternalError, Overloaded, ServiceError

log = logging.getLogger("service.engine")

Sink = Callable[[Outputs | Died], None]  # where an engine's reports go; called from its threads
STATS_INTERVAL_S = 0.25  # statistics of steps without outputs wait at most this long for a message


@dataclass
class _Encoding:
    """A group of admitted requests being encoded on the encoder thread."""

    requests: list[Request]
    future: Future[DecoderState]


class EngineDead(BaseException):
    """Raised inside the worker to signal an unrecoverable failure: it ends the loop."""


class Engine:
    def __init__(
        self,
        name: str,
        model: DeviceModel,
        sink: Sink,
        policy: Policy = "continuous",
        max_rows: int = 128,
        max_tokens: int = 8192,
        max_queue: int = 256,
        max_delay_s: float = 0.01,
        admit_delay_s: float = 0.0,
        overlap_encode: bool = False,
    ) -> None:
        self.name = name
        self.model = model
        self.batch = model.new_batch()  # its decode_step is the hook for how a step runs
        self.scheduler = Scheduler(policy, max_rows, max_tokens, max_queue, max_delay_s, admit_delay_s)
        self.overlap_encode = overlap_encode
        self.dead: BaseException | None = None
        self._sink = sink
        self._cv = threading.Condition()  # guards the scheduler: submit and abort come from other threads
        self._encoder = ThreadPoolExecutor(1, f"encoder-{name}") if overlap_encode else None
        self._encoding: _Encoding | None = None
        self._accepting = True
        self._stop = False
        self._last_emit = 0.0
        self._timings: dict[str, Timings] = {}  # of requests finished since the last message
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead is None

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting; let queued and running requests finish for up to ``grace_s``; fail the rest."""
        with self._cv:
            self._accepting = False
            deadline = time.monotonic() + grace_s
            while self.scheduler.has_work and self.alive and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(timeout=min(left, 0.05))
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=True)
        self._fail_all(EngineUnavailable(f"model {self.name} is shutting down"))

    # -- requests (any thread) ---------------------------------------------------------------
    def handle(self, command: Command) -> None:
        match command:
            case Submit(requests):
                self.submit(requests)
            case Abort(request_ids):
                self.abort(request_ids)
            case Stop(grace_s):
                self.stop(grace_s)

    def submit(self, requests: list[Request]) -> None:
        """Queue ``requests``, all or none; refused ones get an error output each (429 when the queue is full)."""
        error: ServiceError | None = None
        with self._cv:
            if not self._accepting or not self.alive:
                error = EngineUnavailable(f"model {self.name} is not accepting requests")
            else:
                try:
                    self.scheduler.add(requests, time.monotonic())
                except QueueFull as exc:
                    retry = self.scheduler.retry_after_s()
                    error = Overloaded(f"model {self.name} is overloaded: {exc}; retry later", retry_after_s=retry)
            self._cv.notify_all()
        if error is not None:
            self._emit([RequestFailed(r.id, error) for r in requests], force=True)

    def abort(self, request_ids: set[str] | frozenset[str]) -> None:
        """Cancel these requests wherever they are; their rows leave the batch within one step."""
        with self._cv:
            self.scheduler.abort(request_ids)
            self._cv.notify_all()

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self.step():
                pass
        except BaseException as exc:  # noqa: BLE001 - the loop must report whatever killed it
            self.dead = exc
            log.exception("engine %s died", self.name)
            self._fail_all(EngineUnavailable(f"the worker of model {self.name} died: {exc!r}"))
            self._sink(Died(repr(exc)))

    def step(self) -> bool:
        """One iteration, as vLLM's ``EngineCore.step``; returns False once the engine is stopped.

        1. schedule: the scheduler takes aborts and deadlines and picks a group to admit;
        2. apply the plan: the rows of requests that left go, an encoded group joins, the
           admitted group is encoded (beside the running batch, with an encoder thread);
        3. run one decoder step for every row of the batch;
        4. the scheduler turns the step's events into outputs, which go out with the stats.
        """
        with self._cv:
            while not (self.scheduler.has_work or self._stop):
                self._cv.wait()
            if self._stop:
                return False
            plan = self.scheduler.schedule(time.monotonic(), admit=self._encoding is None)
        outputs = self._retire(plan.left)
        if plan.admit:
            outputs += self._encode(plan.admit)
        outputs += self._join_encoded()
        if len(self.batch):
            outputs += self._decode()
        self._emit(outputs)
        if not len(self.batch) and plan.wait_s:
            with self._cv:
                self._cv.wait(timeout=plan.wait_s)
        return True

    def _retire(self, requests: list[Request]) -> list[Output]:
        """The one way out of the batch for requests that did not finish: aborted or failed."""
        if not requests:
            return []
        self.batch.remove({r.id for r in requests})
        return [RequestFailed(r.id, r.error) for r in requests if r.error is not None]

    def _encode(self, group: list[Request]) -> list[Output]:
        """Encode an admitted group: on the encoder thread beside a running batch, else here and now."""
        if self._encoder is not None and len(self.batch):
            self._encoding = _Encoding(group, self._encoder.submit(self._timed_encode, group))
            return []
        return self._join(group, self._timed_encode)

    def _join_encoded(self) -> list[Output]:
        """Join the group from the encoder thread once it is encoded; wait for it only when
        nothing else is left to decode."""
        encoding = self._encoding
        if encoding is None or (len(self.batch) and not encoding.future.done()):
            return []
        self._encoding = None
        return self._join(encoding.requests, lambda _: encoding.future.result())

    def _join(self, group: list[Request], encode: Callable[[list[Request]], DecoderState]) -> list[Output]:
        """Add the rows of ``group``, as ``encode`` gives them, to the batch; those of requests
        that left meanwhile go again at once. A failed encoding fails the group alone."""
        try:
            state = encode(group)
        except Exception as exc:
            log.error("engine %s: encoding failed", self.name, exc_info=exc)
            with self._cv:
                self.scheduler.stats.errors += 1
                failed = self.scheduler.fail(group, InternalError(f"encoding failed: {exc}"))
            return self._retire(failed)
        self.batch.join(group, state)
        with self._cv:
            left = self.scheduler.joined(group)
        if left:
            self.batch.remove({r.id for r in left})
        return []

    def _timed_encode(self, group: list[Request]) -> DecoderState:
        t0 = time.monotonic()
        state = self.batch.encode(group)
        t1 = time.monotonic()
        for r in group:
            r.encode_start, r.encode_end = t0, t1
        with self._cv:
            self.scheduler.stats.encode_seconds.append(t1 - t0)
        return state

    def _decode(self) -> list[Output]:
        """One decoder step. An exception that some requests' rows cause on their own fails those
        requests alone, and the others step on at the next iteration; any other fails the batch.
        Either way the worker serves on."""
        rows = len(self.batch)
        before = self.batch.state
        t0, cpu0 = time.monotonic(), time.thread_time()
        try:
            events = self.batch.step()
        except Exception as exc:
            log.exception("engine %s: decoder step failed", self.name)
            culprits = set(self.batch.culprits()) if self.batch.state is before else set()
            with self._cv:
                self.scheduler.stats.errors += 1
                in_batch = self.scheduler.in_batch()
                failing = [r for r in in_batch if r.id in culprits] or in_batch
                failed = self.scheduler.fail(failing, InternalError(f"inference failed: {exc}"))
            return self._retire(failed)
        now = time.monotonic()
        with self._cv:
            stats = self.scheduler.stats
            stats.step_rows.append(rows)
            stats.step_seconds.append(now - t0)
            stats.step_cpu_seconds += time.thread_time() - cpu0
            running = self.scheduler.running
            self._timings.update(
                (e.request_id, running[e.request_id].timings(now)) for e in events if e.finished is not None
            )
            return self.scheduler.update(events, now)

    def _emit(self, outputs: list[Output], force: bool = False) -> None:
        """Send one iteration's outputs with the statistics since the last message. Iterations
        without outputs send their statistics only now and then, and when the engine goes idle."""
        with self._cv:
            now = time.monotonic()
            if not (outputs or force):
                stats = self.scheduler.stats
                due = now - self._last_emit >= STATS_INTERVAL_S or not self.scheduler.has_work
                if stats.empty or not due:
                    return
            self._last_emit = now
            message = Outputs(outputs, self.scheduler.take_stats(), self._timings)
            self._timings = {}
        self._sink(message)

    def _fail_all(self, error: ServiceError) -> None:
        with self._cv:
            failed = self.scheduler.fail_all(error)
            self._cv.notify_all()
        self._emit([RequestFailed(r.id, error) for r in failed], force=True)
