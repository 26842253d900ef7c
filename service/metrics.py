"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Only the HTTP process keeps metrics: engines, in its threads or in processes of their own,
report what they did on every message (:class:`~service.engine.messages.EngineStats`), and
:meth:`Metrics.record_engine` adds it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

if TYPE_CHECKING:
    from service.engine.messages import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, ... (HTTP process)
        r = self.registry
        self.requests = Counter(
            "seq2seq_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "seq2seq_errors",
            "error replies by route and the code of their body (overloaded, rate_limited, invalid_request, ...)",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "seq2seq_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("seq2seq_queue_depth", "requests waiting for admission", ["model"], registry=r)
        self.active_rows = Gauge("seq2seq_active_rows", "decoder rows in the running batch", ["model"], registry=r)
        self.batch_size = Histogram(
            "seq2seq_batch_size", "rows per decoder step", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.generated_tokens = Counter("seq2seq_generated_tokens", "tokens generated", ["model"], registry=r)
        self.ttft = Histogram(
            "seq2seq_time_to_first_token_seconds",
            "submit to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_step = Histogram(
            "seq2seq_decode_step_seconds",
            "wall time of one decoder step",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Against the steps' wall time (seq2seq_decode_step_seconds_sum): the rest of a step is
        # the worker waiting for the GIL, held by the engine's other threads and, with in-process
        # engines, by the HTTP event loop between its ops.
        self.step_cpu = Counter(
            "seq2seq_decode_step_cpu_seconds", "CPU time of the worker thread in decoder steps", ["model"], registry=r
        )
        self.time_per_encode = Histogram(
            "seq2seq_encode_seconds",
            "wall time of encoding one admitted group of requests",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter("seq2seq_rejected", "requests refused", ["model", "reason"], registry=r)
        self.cancelled = Counter(
            "seq2seq_cancelled", "requests cancelled while queued or running", ["model"], registry=r
        )
        self.engine_errors = Counter("seq2seq_engine_errors", "batches failed by an exception", ["model"], registry=r)
        self.engine_restarts = Counter(
            "seq2seq_engine_restarts", "engines restarted after their worker or process died", ["model"], registry=r
        )
        # By API key name (service/auth.py), when keys are on.
        self.key_requests = Counter(
            "seq2seq_api_key_requests", "HTTP requests by API key name and status", ["key", "status"], registry=r
        )
        self.key_generated_tokens = Counter(
            "seq2seq_api_key_generated_tokens", "tokens generated for each API key", ["key"], registry=r
        )
        self.rate_limited = Counter(
            "seq2seq_rate_limited", "requests refused by their API key's rate limit", ["key"], registry=r
        )

        self.model_loads = Counter(
            "seq2seq_model_loads",
            "model versions loaded at run time (admin API, reloads), by outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.model_unloads = Counter("seq2seq_model_unloads", "models unloaded at run time", ["model"], registry=r)
        self.model_swap = Histogram(
            "seq2seq_model_swap_seconds",
            "a run-time load: from the request until the new version serves (loading and warm-up included)",
            ["model"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )

    def record_engine(self, model: str, stats: EngineStats) -> None:
        """Add what an engine reported (:class:`~service.engine.messages.EngineStats`) to the metrics."""
        self.queue_depth.labels(model).set(stats.queue_depth)
        self.active_rows.labels(model).set(stats.running_rows)
        batch_size, step_time = self.batch_size.labels(model), self.time_per_step.labels(model)
        for rows, seconds in zip(stats.step_rows, stats.step_seconds, strict=True):
            batch_size.observe(rows)
            step_time.observe(seconds)
        self.step_cpu.labels(model).inc(stats.step_cpu_seconds)
        encode = self.time_per_encode.labels(model)
        for seconds in stats.encode_seconds:
            encode.observe(seconds)
        ttft = self.ttft.labels(model)
        for seconds in stats.ttft_seconds:
            ttft.observe(seconds)
        self.generated_tokens.labels(model).inc(stats.generated_tokens)
        if stats.rejected:
            self.rejected.labels(model, "queue_full").inc(stats.rejected)
        self.cancelled.labels(model).inc(stats.cancelled)
        self.engine_errors.labels(model).inc(stats.errors)
