"""The load balancer: deploy/nginx.conf run by the real nginx in front of real service replicas.

The nginx.conf under test is the repository's file, copied unchanged; only the two per-deployment
includes (seq2seq/upstream.conf, seq2seq/listen.conf) point at loopback ports instead of compose's
`api` service. Also checks that docker-compose.yml is valid for Debian's docker-compose.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import (
    REPO,
    SHUTDOWN_GRACE_S,
    TRANSLATE_BODY,
    LoadLoop,
    Replica,
    ReplicaFactory,
    http_status,
    request_count,
    require_tool,
    wait_until,
)
from tests.server_process import free_port

pytestmark = pytest.mark.slow

# What compose's upstream.conf sets too: one failure takes a replica out for 5 s.
SERVER_PARAMS = "max_fails=1 fail_timeout=5s"


@dataclass
class Balancer:
    url: str
    process: subprocess.Popen[bytes]
    prefix: Path

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.prefix.glob("*.log"))
        )


BalancerFactory = Callable[[list[Replica]], Balancer]


@pytest.fixture
def start_balancer(tmp_path: Path) -> Iterator[BalancerFactory]:
    nginx = require_tool("nginx")
    started: list[Balancer] = []

    def start(replicas: list[Replica]) -> Balancer:
        prefix = tmp_path / "nginx"
        (prefix / "seq2seq").mkdir(parents=True)
        shutil.copyfile(REPO / "deploy" / "nginx.conf", prefix / "nginx.conf")
        servers = "".join(f"server 127.0.0.1:{r.port} {SERVER_PARAMS};\n" for r in replicas)
        (prefix / "seq2seq" / "upstream.conf").write_text(servers)
        port = free_port()
        (prefix / "seq2seq" / "listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
        command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
        command += ["-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
        with (prefix / "access.log").open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        balancer = Balancer(f"http://127.0.0.1:{port}", process, prefix)
        started.append(balancer)
        wait_until(lambda: http_status(f"{balancer.url}/health/live") == 200, 20, "nginx to answer")
        return balancer

    yield start
    for balancer in started:
        balancer.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
        try:
            balancer.process.wait(10)
        except subprocess.TimeoutExpired:
            balancer.process.kill()
            balancer.process.wait()


def translate_many(url: str, n: int, clients: int = 6) -> list[httpx.Response]:
    def one(i: int) -> httpx.Response:
        return httpx.post(f"{url}/translate", json=TRANSLATE_BODY, headers={"X-Request-ID": f"lb-{i}"}, timeout=60)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def translations_served(replica: Replica) -> float:
    return request_count(replica.url, "/translate", 200)


def start_ready(spawn_replica: ReplicaFactory, n: int) -> list[Replica]:
    replicas = [spawn_replica() for _ in range(n)]
    for replica in replicas:
        replica.wait_ready()
    return replicas


def test_compose_file_is_valid() -> None:
    compose = require_tool("docker-compose")
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [compose, "-f", str(REPO / "docker-compose.yml"), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_traffic_reaches_every_replica(spawn_replica: ReplicaFactory, start_balancer: BalancerFactory) -> None:
    replicas = start_ready(spawn_replica, 3)
    balancer = start_balancer(replicas)
    before = [translations_served(r) for r in replicas]

    responses = translate_many(balancer.url, 30)

    assert [r.status_code for r in responses] == [200] * 30, balancer.logs()
    assert all(r.json()["translations"][0]["text"] for r in responses)
    # The client's request id reaches the replica and comes back unchanged.
    assert [r.headers["x-request-id"] for r in responses] == [f"lb-{i}" for i in range(30)]
    served = [translations_served(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == 30, served  # each request ran exactly once
    assert all(s > 0 for s in served), f"a replica got no traffic: {served}"


def test_stopping_a_replica_under_load_loses_no_request(
    spawn_replica: ReplicaFactory, start_balancer: BalancerFactory
) -> None:
    replicas = start_ready(spawn_replica, 3)
    balancer = start_balancer(replicas)
    victim, survivors = replicas[0], replicas[1:]

    with LoadLoop(f"{balancer.url}/translate", clients=8) as load:
        load.wait_for_ok(24)
        stopped_at = time.monotonic()
        exit_code = victim.terminate(SHUTDOWN_GRACE_S + 10)
        # Traffic goes on through the survivors.
        load.wait_for_ok(load.count("ok") + 24)

    assert exit_code == 0, victim.log_tail()
    assert load.not_ok("refused", "rejected", "cut", "bad") == [], balancer.logs()
    assert load.count("ok", after=stopped_at) >= 24
    assert all(translations_served(r) > 0 for r in survivors)


def test_replica_that_is_not_ready_gets_no_traffic(
    spawn_replica: ReplicaFactory, start_balancer: BalancerFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "finish-loading"
    loading = spawn_replica(load_gate=gate)
    ready = start_ready(spawn_replica, 2)
    wait_until(lambda: loading.answers("/health/live", 200), 120, "the loading replica to listen")
    assert loading.answers("/health/ready", 503)
    balancer = start_balancer([loading, *ready])

    responses = translate_many(balancer.url, 40)

    assert [r.status_code for r in responses] == [200] * 40, balancer.logs()
    assert translations_served(loading) == 0
    # nginx did try it (its first pick is round-robin), got 503 and retried elsewhere.
    assert request_count(loading.url, "/translate", 503) >= 1

    # Once it is ready it takes traffic again: after fail_timeout, the next probe succeeds.
    gate.touch()
    loading.wait_ready()

    def served_by_loading() -> bool:
        translate_many(balancer.url, 6)
        return translations_served(loading) > 0

    wait_until(served_by_loading, 30, "the replica that finished loading to get traffic")


def test_chat_streams_through_the_balancer(spawn_replica: ReplicaFactory, start_balancer: BalancerFactory) -> None:
    replica = spawn_replica(models="chat-en")
    replica.wait_ready()
    balancer = start_balancer([replica])
    body = {"message": "Hello, how are you?", "language": "en", "stream": True}

    with httpx.stream("POST", f"{balancer.url}/chat", json=body, headers={"X-Request-ID": "sse-1"}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "sse-1"
        events = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]

    assert events.count("token") >= 1
    assert events[-1] == "done", events
