"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

An engine process keeps the engine's metrics in a :class:`Metrics` of its own; ``/metrics``
merges them into the HTTP process's families with :func:`exposition`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process:  # process_resident_memory_bytes, cpu seconds, ... (of the HTTP process only)
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "seq2seq_requests", "HTTP requests by route and status", ["route", "status"], registry=r
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


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(registry: CollectorRegistry, extra: Iterable[Metric] = ()) -> bytes:
    """The text format of ``registry`` with the samples of ``extra`` families merged in by name
    (the engine processes' samples carry their own ``model`` label, so they never collide)."""
    families = {family.name: family for family in registry.collect()}
    for family in extra:
        if family.name in families:
            families[family.name].samples.extend(family.samples)
        else:
            families[family.name] = family
    return generate_latest(_Families(families.values()))  # type: ignore[arg-type]
