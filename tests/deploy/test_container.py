"""The Docker image: build it, run it, let its own HEALTHCHECK report healthy, serve, stop gracefully.

Builds from the local debootstrap base (deploy/make-base-image.sh, kept between runs because it
takes minutes) with the machine's local torch wheel, since neither an image registry nor
download.pytorch.org is reachable here. The container uses the host network and listens on loopback.
SEQ2SEQ_TEST_IMAGE=<tag> tests an image built beforehand instead (and leaves it in place).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.deploy.conftest import (
    MODEL,
    REPO,
    SHUTDOWN_GRACE_S,
    TRANSLATE_BODY,
    LoadLoop,
    require_model,
    require_tool,
    unavailable,
    unique_name,
    wait_until,
)
from tests.server_process import free_port

pytestmark = pytest.mark.slow

BASE_IMAGE = "seq2seq-base:bookworm"
WHEEL_DIR = REPO / "deploy" / "wheels"
BUILDER_LABEL = "seq2seq-serve.stage=builder"  # set in the Dockerfile's builder stage
STOP_TIMEOUT_S = 20  # docker stop -t: SIGKILL after this; the service must be gone well before


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def ensure_base_image() -> None:
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    if os.geteuid() != 0:
        unavailable(f"{BASE_IMAGE} is missing and building it (debootstrap) needs root")
    require_tool("debootstrap")
    subprocess.run([str(REPO / "deploy" / "make-base-image.sh"), BASE_IMAGE], check=True, timeout=1200)


def stage_torch_wheel() -> list[str]:
    """Put the machine's local torch wheel (the one in the test venv) into deploy/wheels/.

    Returns the files this added, for removal after the build. `--no-index` keeps pip to local
    wheels (its find-links): never a multi-GB download from the index.
    """
    version = importlib.metadata.version("torch")
    before = set(WHEEL_DIR.glob("torch-*.whl"))
    if before:
        return []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-index", "--no-deps", f"torch=={version}", "-d", str(WHEEL_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"no local wheel of torch {version} to build the image with; put one in {WHEEL_DIR}")
    return [str(p) for p in set(WHEEL_DIR.glob("torch-*.whl")) - before]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    require_tool("docker")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        unavailable("no Docker engine answers (.ci/install-system.sh starts one)")
    require_model()
    prebuilt = os.environ.get("SEQ2SEQ_TEST_IMAGE")
    if prebuilt:
        yield prebuilt
        return
    ensure_base_image()
    tag = f"{unique_name('seq2seq-serve-test')}:latest"
    staged = stage_torch_wheel()
    try:
        # The classic builder: this machine's docker CLI has no buildx; the Dockerfile needs neither.
        build = subprocess.run(
            ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, str(REPO)],
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    finally:
        for path in staged:
            os.unlink(path)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    yield tag
    docker("rmi", "--force", tag, check=False)
    # The builder stage's images (the classic builder keeps them, untagged, as its cache).
    docker("image", "prune", "--force", "--filter", f"label={BUILDER_LABEL}", check=False)


@dataclass
class Container:
    name: str
    url: str

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def healthy(self) -> bool:
        state, health = self.inspect("{{.State.Status}} {{.State.Health.Status}}").split()
        assert state == "running", self.logs()
        return health == "healthy"

    def logs(self, tail: int | None = 40) -> str:
        result = docker("logs", "--tail", str(tail) if tail else "all", self.name, check=False)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    name, port = unique_name("seq2seq-test"), free_port()
    env = {
        "SEQ2SEQ_HOST": "127.0.0.1",  # host network: stay on loopback
        "SEQ2SEQ_PORT": str(port),  # the HEALTHCHECK reads it too
        "SEQ2SEQ_MODELS": MODEL,
        "SEQ2SEQ_THREADS": "1",
        "SEQ2SEQ_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    }
    env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
    docker("run", "--detach", "--name", name, "--network", "host", *env_flags, image, timeout_s=600)
    running = Container(name, f"http://127.0.0.1:{port}")
    try:
        # Start period 120 s, checks every 10 s: "healthy" comes from the image's own HEALTHCHECK.
        wait_until(running.healthy, 300, "docker to report the container healthy", interval_s=2)
        yield running
    finally:
        docker("rm", "--force", name, check=False)


def test_image_reports_healthy_and_translates(container: Container) -> None:
    assert container.healthy()

    response = httpx.post(f"{container.url}/translate", json=TRANSLATE_BODY, timeout=60)

    assert response.status_code == 200, response.text
    assert response.json()["translations"][0]["text"]
    assert response.headers["x-request-id"]


def test_service_runs_as_pid_1_and_not_as_root(container: Container) -> None:
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uids, status
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(arg.endswith("seq2seq-serve") for arg in cmdline), cmdline  # PID 1 gets SIGTERM itself


def test_docker_stop_under_load_finishes_accepted_requests(container: Container) -> None:
    """Every request the service accepted ends as a complete 200 (or a 503 before it ran); exit code 0.

    Requests that were refused, or cut while still in the kernel's accept queue (never in the
    service's access log), were not accepted: the clients stop at the first of those, as clients
    of a server going away would. In front of replicas, nginx retries all of them elsewhere.
    """
    with LoadLoop(f"{container.url}/translate", clients=8, stop_at_first_failure=True) as load:
        load.wait_for_ok(16)
        stop_sent = time.monotonic()
        docker("stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout_s=STOP_TIMEOUT_S + 30)
        stop_took = time.monotonic() - stop_sent
        load.join()

    logs = container.logs(tail=None)
    exit_code, oom_killed = container.inspect("{{.State.ExitCode}} {{.State.OOMKilled}}").split()
    assert exit_code == "0" and oom_killed == "false", logs[-3000:]
    assert stop_took < STOP_TIMEOUT_S, f"docker stop took {stop_took:.1f}s: SIGKILL, not a graceful exit"
    accepted = set(re.findall(r'"request_id": "(\w+)"', logs))
    lost = [o for o in load.not_ok("cut", "bad") if o.kind == "bad" or o.request_id in accepted]
    assert lost == [], logs[-3000:]
    # Requests in flight when SIGTERM came were finished, not dropped.
    assert load.count("ok", after=stop_sent) >= 1
