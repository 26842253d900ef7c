"""Helpers for the deployment tests: real Docker, nginx and service processes, on loopback only.

These tests need system tools that `.ci/install-system.sh` installs (docker.io with a running daemon,
debootstrap, nginx, docker-compose) and a trained `model_store/translate-de-en`. Where one is missing
they skip, except under CI=true, where that is a failure: CI must run them, not skip them quietly.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import MODEL_STORE, ServiceError, ServiceProcess
from tests.server_process import ROOT as REPO

MODEL = "translate-de-en"
TRANSLATE_BODY = {"text": "Ein Mann fährt Fahrrad.", "source_lang": "de", "target_lang": "en"}
SHUTDOWN_GRACE_S = 15


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where every deployment test is expected to run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: run .ci/install-system.sh first)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (.ci/install-system.sh installs it)")
    return path


def require_model(name: str = MODEL) -> None:
    if not (MODEL_STORE / name).is_dir():
        unavailable(f"{MODEL_STORE / name} does not exist yet (train it: python -m training.recipes train {name})")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def http_status(url: str) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def request_count(base_url: str, route: str, status: int) -> float:
    """`seq2seq_requests_total{route, status}` as one replica reports it on /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "seq2seq_requests_total"
                and sample.labels.get("route") == route
                and sample.labels.get("status") == str(status)
            ):
                return sample.value
    return 0.0


# -- load ------------------------------------------------------------------------------------------

OutcomeKind = Literal["ok", "refused", "rejected", "cut", "bad"]


@dataclass(frozen=True)
class Outcome:
    """How one request ended.

    ok: 200 with a complete, non-empty translation. refused: the connection was refused, so the
    request was never accepted. rejected: a complete 503 error reply (the server is draining and
    did not run it). cut: the connection broke (reset, closed early) or timed out before a complete
    reply. bad: a complete reply that is none of the above.

    Each request carries its own X-Request-ID, so a `cut` one can be looked up in the server's
    access log: one the server never logged never reached the application (it was still in the
    kernel's accept queue when the listening socket closed), which a client cannot tell from a
    refusal by its error alone.
    """

    kind: OutcomeKind
    detail: str
    request_id: str
    ended: float  # time.monotonic()


def translate_once(client: httpx.Client, url: str) -> Outcome:
    request_id = uuid.uuid4().hex
    try:
        response = client.post(url, json=TRANSLATE_BODY, headers={"X-Request-ID": request_id})
        body = response.json()
    except httpx.ConnectError as exc:
        return Outcome("refused", repr(exc), request_id, time.monotonic())
    except (httpx.TransportError, ValueError) as exc:
        return Outcome("cut", repr(exc), request_id, time.monotonic())
    ended = time.monotonic()
    if response.status_code == 200 and body["translations"][0]["text"]:
        return Outcome("ok", body["translations"][0]["text"], request_id, ended)
    if response.status_code == 503 and "error" in body:
        return Outcome("rejected", body["error"].get("message", ""), request_id, ended)
    return Outcome("bad", f"{response.status_code}: {response.text[:200]}", request_id, ended)


@dataclass
class LoadLoop:
    """`clients` threads POSTing /translate, each over a fresh connection, until stopped.

    Fresh connections make "refused" unambiguous: a request is either accepted on its own
    connection or never was. With `stop_at_first_failure`, a client ends at its first request that
    does not succeed, as a client that sees a server going away would; the loop is bounded either way.
    """

    url: str
    clients: int = 8
    stop_at_first_failure: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LoadLoop:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _client(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=60, limits=limits) as client:
            while not self._stop.is_set():
                outcome = translate_once(client, self.url)
                with self._lock:
                    self.outcomes.append(outcome)
                if self.stop_at_first_failure and outcome.kind != "ok":
                    return

    def count(self, kind: OutcomeKind, after: float = 0.0) -> int:
        with self._lock:
            return sum(o.kind == kind and o.ended > after for o in self.outcomes)

    def wait_for_ok(self, n: int, timeout_s: float = 120) -> None:
        wait_until(lambda: self.count("ok") >= n, timeout_s, f"{n} successful requests", interval_s=0.1)

    def join(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "load clients did not finish"

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def not_ok(self, *kinds: OutcomeKind) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.kind in kinds]


# -- service replicas on loopback --------------------------------------------------------------------


class Replica(ServiceProcess):
    """`python -m service` (or gated_service.py) on a free loopback port; see tests.server_process."""

    def answers(self, path: str, status: int) -> bool:
        """Whether GET `path` answers `status`; fails at once if the process has exited."""
        self.check_running()
        return http_status(self.url + path) == status

    def wait_ready(self, timeout: float = 180, interval: float = 0.5) -> None:
        super().wait_ready(timeout, interval)

    def terminate(self, timeout: float = SHUTDOWN_GRACE_S + 10, *, kill_is_error: bool = True) -> int:
        """SIGTERM, then wait; SIGKILL only if the graceful shutdown hangs, which fails the test.

        Returns the exit code.
        """
        return super().terminate(timeout, kill_is_error=kill_is_error)


ReplicaFactory = Callable[..., Replica]


@pytest.fixture
def spawn_replica(tmp_path: Path) -> Iterator[ReplicaFactory]:
    """Start `python -m service` replicas (default: serving translate-de-en); all are stopped at the end.

    `load_gate=path` starts one whose model loading waits until `path` exists (see gated_service.py).
    """
    started: list[Replica] = []

    def spawn(load_gate: Path | None = None, models: str = MODEL) -> Replica:
        for name in models.split(","):
            require_model(name)
        flags = ["--host", "127.0.0.1", "--models", models, "--device", "cpu"]
        flags += ["--shutdown-grace-s", str(SHUTDOWN_GRACE_S)]
        replica = Replica(
            tmp_path / f"replica-{len(started)}.log",
            *flags,
            module="tests.deploy.gated_service" if load_gate else "service",
            module_args=[str(load_gate)] if load_gate else [],
            env={"PYTHONPATH": str(REPO)},
        )
        started.append(replica)
        return replica

    yield spawn
    hung = []
    for replica in started:  # stop every one, even after one that had to be killed
        try:
            replica.terminate()
        except ServiceError as exc:
            hung.append(str(exc))
    assert not hung, "\n\n".join(hung)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
