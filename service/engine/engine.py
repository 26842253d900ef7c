"""The engine of one model: a worker thread that owns the model and runs the decode loop.

Requests enter only through :meth:`Engine.submit` and leave only through their stream
(token events, then one final or error event) or :meth:`Engine.abort`. The asyncio side
never touches tensors; the worker never touches the event loop except through streams.

With ``overlap_encode``, requests admitted while a batch is decoding are encoded on a
second thread (the encoder) and join the batch at the first step after their encoding
is done, so the running rows keep stepping instead of waiting for the new sources' LSTM
pass (the "prefill stalls decode" problem of LLM servers). Encoding was a quarter of a
saturated engine's time on one core; on a machine with a core to spare it now runs beside
the decoder steps. An idle engine still encodes on the worker itself: there is nothing
to overlap with, and a hand-off would only add latency.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Metric

from seq2seq.generation import GenerationRequest, StepEvent
from seq2seq.state import DecoderState
from service.engine.runner import ModelRunner
from service.engine.scheduler import Decision, Policy, QueueFull, Scheduler, WorkItem
from service.engine.streams import ErrorEvent, Event, FinalEvent, Publish, Stream, TokenEvent, publish
from service.errors import DeadlineExceeded, EngineUnavailable, InternalError, Overloaded, ServiceError
from service.metrics import Metrics

log = logging.getLogger("service.engine")


@dataclass
class _Job:
    request: GenerationRequest
    stream: Stream
    submitted: float
    first_token_seen: bool = False


@dataclass
class _Encoding:
    """A group of admitted requests being encoded on the encoder thread."""

    items: list[WorkItem]
    future: Future[DecoderState]


class EngineDead(BaseException):
    """Raised inside the worker to simulate or signal an unrecoverable failure (kills the loop)."""


class Engine:
    def __init__(
        self,
        name: str,
        runner: ModelRunner,
        metrics: Metrics,
        policy: Policy = "continuous",
        max_rows: int = 128,
        max_tokens: int = 8192,
        max_queue: int = 256,
        max_delay_s: float = 0.01,
        admit_delay_s: float = 0.0,
        overlap_encode: bool = False,
        publish: Publish = publish,
    ) -> None:
        self.name = name
        self.runner = runner
        self.info = runner.info
        self.metrics = metrics
        self._publish = publish
        self.scheduler = Scheduler(policy, max_rows, max_tokens, max_queue, max_delay_s, admit_delay_s)
        self._cv = threading.Condition()
        self._running: dict[str, WorkItem] = {}  # admitted: in the batch, or being encoded
        self._encoder = ThreadPoolExecutor(1, f"encoder-{name}") if overlap_encode else None
        self._encoding: _Encoding | None = None
        self._aborts: set[str] = set()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.dead: BaseException | None = None
        self._avg_service_s = 0.5  # EWMA of request time, for Retry-After

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead is None

    def wait(self) -> None:
        """Block until the worker exits: stopped, or dead (then :attr:`dead` says why)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting; let queued and running requests finish for up to ``grace_s``; fail the rest."""
        with self._cv:
            self._accepting = False
            deadline = time.monotonic() + grace_s
            while (self.scheduler.waiting or self._running) and self.alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(timeout=min(left, 0.05))
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=True)
        self._fail_all(EngineUnavailable(f"model {self.name} is shutting down"))

    # -- requests ----------------------------------------------------------------------------
    def submit(self, requests: list[GenerationRequest], streams: list[Stream], timeout_s: float) -> None:
        """Queue ``requests`` (all or none); their events arrive on ``streams``."""
        now = time.monotonic()
        items = [
            WorkItem(r.id, r.params.rows, len(r.src_ids), now + timeout_s, now, _Job(r, s, now))
            for r, s in zip(requests, streams, strict=True)
        ]
        with self._cv:
            if not self._accepting or not self.alive:
                raise EngineUnavailable(f"model {self.name} is not accepting requests")
            try:
                self.scheduler.add(items)
            except QueueFull as exc:
                self.metrics.rejected.labels(self.name, "queue_full").inc(len(items))
                retry = math.ceil(self._avg_service_s * (len(self.scheduler) + 1) / self.scheduler.max_rows)
                raise Overloaded(f"model {self.name} is overloaded: {exc}; retry later", retry_after_s=retry) from exc
            self.metrics.queue_depth.labels(self.name).set(len(self.scheduler))
            self._cv.notify_all()

    def abort(self, request_ids: set[str]) -> None:
        """Cancel these requests wherever they are; their rows leave the batch within one step."""
        with self._cv:
            self._aborts |= request_ids
            self._cv.notify_all()

    async def metric_families(self) -> list[Metric]:
        return []  # its metrics are in the app's own registry

    @property
    def queue_depth(self) -> int:
        return len(self.scheduler)

    @property
    def active_rows(self) -> int:
        return len(self.runner)

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._iterate():
                pass
        except BaseException as exc:  # noqa: BLE001 - the loop must report whatever killed it
            self.dead = exc
            log.exception("engine %s died", self.name)
            self._fail_all(EngineUnavailable(f"the worker of model {self.name} died: {exc!r}"))

    def _iterate(self) -> bool:
        """One engine iteration; returns False when the engine should stop."""
        # 1. wait for work, then take aborts, expired and admitted requests under the lock
        with self._cv:
            while not (self.scheduler.waiting or self._running or self._aborts or self._stop):
                self._cv.wait()
            if self._stop:
                return False
            now = time.monotonic()
            aborts, self._aborts = self._aborts, set()
            cancelled = self.scheduler.abort(aborts)
            expired = self.scheduler.expired(now)
            # One group encodes at a time; arrivals meanwhile wait to form the next, larger group.
            decision = (
                self.scheduler.schedule(self._running_rows(), self._running_tokens(), now)
                if self._encoding is None
                else Decision([])
            )
            for item in decision.admit:
                self._running[item.request_id] = item
            self.metrics.queue_depth.labels(self.name).set(len(self.scheduler))
        # 2. leave: cancelled, queued past their deadline, running past their deadline
        self.metrics.cancelled.labels(self.name).inc(len(cancelled))
        for item in expired:
            self._finish(item, ErrorEvent(DeadlineExceeded("deadline exceeded while queued")))
        self._drop_running(aborts, now)
        # 3. join: encode admitted requests into the running batch (beside it, when it is running)
        self._join_encoded()
        if decision.admit:
            if self._encoder is not None and len(self.runner):
                requests = [item.payload.request for item in decision.admit]
                self._encoding = _Encoding(decision.admit, self._encoder.submit(self._encode, requests))
            else:
                self._admit(decision.admit)
        # 4. one decoder step for every row, then hand out tokens and results
        if len(self.runner):
            self._step()
        self.metrics.active_rows.labels(self.name).set(len(self.runner))
        if not len(self.runner) and decision.wait_s:
            with self._cv:
                self._cv.wait(timeout=decision.wait_s)
        return True

    def _running_rows(self) -> int:
        return sum(item.rows for item in self._running.values())

    def _running_tokens(self) -> int:
        return sum(item.src_tokens * item.rows for item in self._running.values())

    def _drop_running(self, aborts: set[str], now: float) -> None:
        late = {rid for rid, item in self._running.items() if item.deadline <= now}
        gone = (aborts & self._running.keys()) | late
        if not gone:
            return
        self.runner.remove(gone)
        for rid in gone:
            item = self._running.pop(rid)
            if rid in late and rid not in aborts:
                self._finish(item, ErrorEvent(DeadlineExceeded("deadline exceeded during generation")))
            else:
                self.metrics.cancelled.labels(self.name).inc()
                item.payload.stream.closed = True
        with self._cv:
            self._cv.notify_all()

    def _admit(self, items: list[WorkItem]) -> None:
        requests = [item.payload.request for item in items]
        try:
            self.runner.join(requests, self._encode(requests))
        except Exception as exc:
            self._encoding_failed(items, exc)

    def _encode(self, requests: list[GenerationRequest]) -> DecoderState:
        t0 = time.monotonic()
        state = self.runner.encode(requests)
        self.metrics.time_per_encode.labels(self.name).observe(time.monotonic() - t0)
        return state

    def _join_encoded(self) -> None:
        """Join the group from the encoder thread once it is encoded; wait for it only when
        nothing else is left to decode."""
        encoding = self._encoding
        if encoding is None or (len(self.runner) and not encoding.future.done()):
            return
        self._encoding = None
        requests = [item.payload.request for item in encoding.items]
        try:
            self.runner.join(requests, encoding.future.result())
        except Exception as exc:
            self._encoding_failed(encoding.items, exc)
            return
        gone = {r.id for r in requests} - self._running.keys()  # cancelled or expired while encoding
        if gone:
            self.runner.remove(gone)

    def _encoding_failed(self, items: list[WorkItem], exc: Exception) -> None:
        log.error("engine %s: encoding failed", self.name, exc_info=exc)
        self.metrics.engine_errors.labels(self.name).inc()
        self.runner.remove({item.request_id for item in items})
        for item in items:
            if self._running.pop(item.request_id, None) is not None:
                self._finish(item, ErrorEvent(InternalError(f"encoding failed: {exc}")))

    def _step(self) -> None:
        rows = len(self.runner)
        t0, cpu0 = time.monotonic(), time.thread_time()
        try:
            events = self.runner.step()
        except Exception as exc:
            # Fail only the requests of this batch; the worker keeps serving.
            log.exception("engine %s: decoder step failed", self.name)
            self.metrics.engine_errors.labels(self.name).inc()
            for rid in self.runner.reset():
                item = self._running.pop(rid, None)
                if item is not None:
                    self._finish(item, ErrorEvent(InternalError(f"inference failed: {exc}")))
            return
        now = time.monotonic()
        self.metrics.batch_size.labels(self.name).observe(rows)
        self.metrics.time_per_step.labels(self.name).observe(now - t0)
        self.metrics.step_cpu.labels(self.name).inc(time.thread_time() - cpu0)
        self._dispatch(events, now)

    def _dispatch(self, events: list[StepEvent], now: float) -> None:
        tokens = 0
        out: list[tuple[Stream, Event]] = []
        for event in events:
            item = self._running.get(event.request_id)
            if item is None:
                continue
            job: _Job = item.payload
            if event.token is not None:
                tokens += 1
                if not job.first_token_seen:
                    job.first_token_seen = True
                    self.metrics.ttft.labels(self.name).observe(now - job.submitted)
                out.append((job.stream, TokenEvent(event.token)))
            if event.finished is not None:
                del self._running[event.request_id]
                if job.request.params.beam_size > 1:
                    tokens += len(event.finished[0].tokens)
                if not job.first_token_seen:
                    self.metrics.ttft.labels(self.name).observe(now - job.submitted)
                self._avg_service_s = 0.9 * self._avg_service_s + 0.1 * (now - job.submitted)
                out.append((job.stream, FinalEvent(event.finished)))
        self._publish(out)
        self.metrics.generated_tokens.labels(self.name).inc(tokens)
        if not self._running:
            with self._cv:
                self._cv.notify_all()

    def _finish(self, item: WorkItem, event: FinalEvent | ErrorEvent) -> None:
        self._publish([(item.payload.stream, event)])

    def _fail_all(self, error: ServiceError) -> None:
        with self._cv:
            items = [*self.scheduler.waiting, *self._running.values()]
            self.scheduler.waiting.clear()
            self._running.clear()
        for item in items:
            if not item.payload.stream.closed:
                self._finish(item, ErrorEvent(error))
