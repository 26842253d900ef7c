"""Schemathesis against the real server's own OpenAPI document: every operation, positive and
negative data, every check (no server error, status codes, content types and response bodies as
documented, valid data accepted and invalid data rejected). The default suite runs a short form;
``-m slow`` runs more examples per operation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import ROOT, ServiceProcess

TINY_VOCAB = 60  # tests.tiny_models: every model's vocabulary


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # More input tokens than a text has characters, so every text the schema allows fits.
    args = ("--max-input-tokens", "2100", "--max-queue", "512")
    with ServiceProcess(tmp_path_factory.mktemp("fuzz") / "server.log", *args, store=tiny_store) as s:
        s.wait_ready(60)
        yield s


def schemathesis_run(server: ServiceProcess, examples: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.service.fuzz_hooks", "FUZZ_VOCAB_SIZE": str(TINY_VOCAB)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json"]
    argv += ["--checks", "all", "--mode", "all", "--max-examples", str(examples), "--seed", "1", "--no-color"]
    argv += ["--report", "junit", "--report-dir", str(tmp_path)]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_the_api_keeps_its_schema_under_fuzzing(server: ServiceProcess, tmp_path: Path) -> None:
    result = schemathesis_run(server, 30, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 11" in result.stdout  # every operation
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_the_api_keeps_its_schema_under_long_fuzzing(server: ServiceProcess, tmp_path: Path) -> None:
    result = schemathesis_run(server, 500, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
