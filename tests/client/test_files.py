"""``seq2seq translate --file``: a 1,000-line document through a real server on the tiny models.

The reference for the output's order is the same lines translated by the client in batches
of another size: greedy float32 decoding gives a text the same translation in any batch.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import Client, Usage
from tests.client.test_cli import ROOT, seq2seq
from tests.server_process import ServiceProcess
from tests.tiny_models import WORDS, make_tiny_store

SUMMARY = re.compile(
    r"^(?P<done>\d+) lines in (?P<seconds>[\d.]+) s \((?P<rate>[\d.]+) lines/s\): (?P<translated>\d+) translated, "
    r"(?P<empty>\d+) empty; (?P<input>\d+) input and (?P<output>\d+) output tokens"
    r"(?:; (?P<resumed>\d+) lines were already done)?$",
    re.M,
)
# At most 16 rows decode at once and 32 texts wait: three requests of 32 lines at a time overflow the queue.
SERVER_ARGS = ("--models", "translate-de-en", "--max-batch-rows", "16", "--max-queue", "32", "--max-texts", "32")
WITHIN_QUEUE = ("--batch-size", "8", "--concurrency", "4")  # never more than 32 lines at the server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    store = make_tiny_store(tmp_path_factory.mktemp("store") / "model_store")
    with ServiceProcess(tmp_path_factory.mktemp("server") / "server.log", *SERVER_ARGS, store=store) as s:
        s.wait_ready(60)
        yield s


def document() -> list[str]:
    """1,000 distinct German lines of the tiny vocabulary, every 37th one empty or blank."""
    words = WORDS["de"]
    lines = []
    for i in range(1000):
        a, b, c = words[i % len(words)], words[i // len(words) % len(words)], words[i // len(words) ** 2]
        lines.append(f"{a.capitalize()} {b} {c} {' '.join(words[: i % 5])}.")
    for i in range(0, 1000, 37):
        lines[i] = "" if i % 2 else "   "
    return lines


@pytest.fixture(scope="module")
def translated(server: ServiceProcess) -> tuple[list[str], Usage]:
    """What each line of :func:`document` translates to, by the client in batches of 25, and the tokens."""
    lines = document()
    texts = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    input_tokens = output_tokens = 0
    with Client(server.url) as client:
        for start in range(0, len(texts), 25):
            chunk = texts[start : start + 25]
            result = client.translate([lines[i] for i in chunk], source_lang="de", target_lang="en")
            for i, translation in zip(chunk, result.translations, strict=True):
                out[i] = translation.text
            assert result.usage is not None
            input_tokens += result.usage.input_tokens
            output_tokens += result.usage.output_tokens
    assert all(out[i] for i in texts)
    return out, Usage(input_tokens, output_tokens)


@pytest.fixture(scope="module")
def reference(translated: tuple[list[str], Usage]) -> list[str]:
    return translated[0]


def write_document(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def summary(stderr: str) -> dict[str, str | None]:
    match = SUMMARY.search(stderr)
    assert match is not None, stderr
    return match.groupdict()


def rejected(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r'^seq2seq_rejected_total\{model="translate-de-en",reason="queue_full"\} ([0-9.]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_document_is_translated_line_by_line_in_order(
    server: ServiceProcess, translated: tuple[list[str], Usage], tmp_path: Path
) -> None:
    reference, usage = translated
    lines = document()
    source, out = write_document(tmp_path / "in.txt", lines), tmp_path / "out.txt"
    args = (*WITHIN_QUEUE, "--from", "de", "--to", "en")
    done = seq2seq("translate", "--file", str(source), "--out", str(out), *args, url=server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert out.read_text(encoding="utf-8").split("\n") == [*reference, ""]  # every line ends with a newline

    numbers = summary(done.stderr)
    empty = sum(1 for line in lines if not line.strip())
    assert numbers["done"] == "1000" and numbers["resumed"] is None
    assert (numbers["translated"], numbers["empty"]) == (str(1000 - empty), str(empty))
    assert (numbers["input"], numbers["output"]) == (str(usage.input_tokens), str(usage.output_tokens))
    seconds, rate = float(numbers["seconds"] or 0), float(numbers["rate"] or 0)
    assert seconds > 0 and rate == pytest.approx(1000 / seconds, rel=0.01, abs=0.1)


def test_stdin_to_stdout(server: ServiceProcess, reference: list[str]) -> None:
    lines = document()[:100]
    stdin = "".join(f"{line}\n" for line in lines)
    done = seq2seq("translate", "--file", "-", "--to", "en", *WITHIN_QUEUE, url=server.url, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [*reference[:100], ""]
    assert summary(done.stderr)["done"] == "100"


def test_a_killed_run_leaves_a_prefix_and_resume_finishes_it(
    server: ServiceProcess, reference: list[str], tmp_path: Path
) -> None:
    source, out = write_document(tmp_path / "in.txt", document()), tmp_path / "out.txt"
    argv = [sys.executable, "-m", "client.cli", "--url", server.url, "translate", "--file", str(source)]
    argv += ["--out", str(out), "--to", "en", "--batch-size", "2", "--concurrency", "1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while (not out.exists() or out.read_bytes().count(b"\n") < 100) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    *complete, partial = out.read_text(encoding="utf-8").split("\n")
    assert 100 <= len(complete) < 1000  # killed on the way
    assert complete == reference[: len(complete)]  # complete lines, in order; at most a partial one after them
    assert reference[len(complete)].startswith(partial)

    done = seq2seq(
        "translate", "--file", str(source), "--out", str(out), "--to", "en", "--resume", *WITHIN_QUEUE, url=server.url
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").split("\n") == [*reference, ""]
    numbers = summary(done.stderr)
    assert numbers["resumed"] == str(len(complete))
    assert numbers["done"] == str(1000 - len(complete))


def test_resume_cuts_a_partial_last_line(server: ServiceProcess, reference: list[str], tmp_path: Path) -> None:
    lines = document()
    source, out = write_document(tmp_path / "in.txt", lines), tmp_path / "out.txt"
    half = reference[400][: len(reference[400]) // 2]
    out.write_text("".join(f"{line}\n" for line in reference[:400]) + half, encoding="utf-8")
    done = seq2seq(
        "translate", "--file", str(source), "--out", str(out), "--to", "en", "--resume", *WITHIN_QUEUE, url=server.url
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").split("\n") == [*reference, ""]
    numbers = summary(done.stderr)
    assert (numbers["resumed"], numbers["done"]) == ("400", "600")
    assert numbers["translated"] == str(sum(1 for line in lines[400:] if line.strip()))


def test_an_output_longer_than_the_input_is_not_resumed(server: ServiceProcess, tmp_path: Path) -> None:
    source, out = write_document(tmp_path / "in.txt", ["Ein Mann."]), tmp_path / "out.txt"
    out.write_text("a\nb\n", encoding="utf-8")
    done = seq2seq(
        "translate", "--file", str(source), "--out", str(out), "--to", "en", "--resume", *WITHIN_QUEUE, url=server.url
    )
    assert done.returncode == 1
    assert "more than the input's 1" in done.stderr
    assert out.read_text(encoding="utf-8") == "a\nb\n"


def test_requests_turned_away_with_429_are_retried(
    server: ServiceProcess, reference: list[str], tmp_path: Path
) -> None:
    before = rejected(server.url)
    source, out = write_document(tmp_path / "in.txt", document()[:300]), tmp_path / "out.txt"
    args = ("--batch-size", "32", "--concurrency", "3", "--to", "en")
    done = seq2seq("translate", "--file", str(source), "--out", str(out), *args, url=server.url)
    assert done.returncode == 0, done.stderr
    assert rejected(server.url) > before  # the server did refuse some, and the run still completed
    assert out.read_text(encoding="utf-8").split("\n") == [*reference[:300], ""]


def test_a_refused_line_is_named(server: ServiceProcess, reference: list[str], tmp_path: Path) -> None:
    lines = document()[:40]
    lines[20] = "ein " * 600  # longer than the server's 2,000 characters
    source, out = write_document(tmp_path / "in.txt", lines), tmp_path / "out.txt"
    args = ("--batch-size", "8", "--concurrency", "1", "--to", "en")
    done = seq2seq("translate", "--file", str(source), "--out", str(out), *args, url=server.url)
    assert done.returncode == 1
    assert "error (invalid_request): line 21: " in done.stderr
    assert f"{out} holds the first 16 lines: --resume continues" in done.stderr
    assert out.read_text(encoding="utf-8").split("\n") == [*reference[:16], ""]


@pytest.mark.parametrize(
    "args",
    [
        ["translate", "--file", "x.txt", "Ein Text", "--to", "en"],
        ["translate", "--file", "x.txt", "--json", "--to", "en"],
        ["translate", "--file", "x.txt", "--resume", "--to", "en"],
        ["translate", "Ein Text", "--out", "y.txt", "--to", "en"],
        ["translate", "--to", "en"],
        ["translate", "--file", "x.txt", "--concurrency", "0", "--to", "en"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    assert seq2seq(*args, url=None).returncode == 2


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    done = seq2seq("translate", "--file", str(tmp_path / "none.txt"), "--to", "en", url=None)
    assert done.returncode == 1
    assert "No such file" in done.stderr and "Traceback" not in done.stderr
