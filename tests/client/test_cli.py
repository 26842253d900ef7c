"""The ``seq2seq`` command line, run as a real process (``python -m client.cli``) against the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def seq2seq(
    *args: str, url: str | None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``url=None`` leaves ``--url`` out."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *(["--url", url] if url else []), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_translate(server_url: str) -> None:
    done = seq2seq(
        "translate", "Zwei Hunde spielen im Schnee.", "Ein Kind lacht.", "--to", "en", "--from", "de", url=server_url
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.strip() for line in lines)


@pytest.mark.parametrize(
    ("text", "model"),
    [("Zwei Hunde spielen im Schnee.", "translate-de-en"), ("Deux chiens jouent.", "translate-fr-en")],
)
def test_translate_without_from_reaches_the_model_of_the_texts_language(server_url: str, text: str, model: str) -> None:
    """The README's own example: ``seq2seq translate "..." --to en``, with German and French loaded."""
    done = seq2seq("translate", text, "--to", "en", "--json", url=server_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == model


def test_translate_n_best_as_json(server_url: str) -> None:
    # --n-best 3 alone: the CLI raises the beam to 3 so the server accepts it.
    done = seq2seq("translate", "Ein Kind lacht.", "--to", "en", "--n-best", "3", "--json", url=server_url)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "translate-de-en"
    assert len(result["translations"][0]["alternatives"]) == 3


def test_models_table(server_url: str) -> None:
    done = seq2seq("models", url=server_url)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "VERSION", "TASK"]
    assert sorted(row.split()[0] for row in rows) == ["chat-en", "translate-de-en", "translate-fr-en"]


def test_chat_reads_lines_and_streams_replies(server_url: str) -> None:
    done = seq2seq("chat", "--language", "en", url=server_url, stdin="Hello, how are you?\n\nWhat is your name?\n")
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 2 and all(replies)  # blank input lines are skipped


def test_chat_single_message(server_url: str) -> None:
    done = seq2seq("chat", "Hello", url=server_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_api_error_exits_1_with_the_code(server_url: str) -> None:
    done = seq2seq("translate", "Ein Kind lacht.", "--model", "no-such-model", url=server_url)
    assert done.returncode == 1
    assert done.stderr.startswith("error (model_not_found): model 'no-such-model' not found")
    assert done.stdout == ""


def test_chat_goes_on_after_a_failed_turn(server_url: str) -> None:
    done = seq2seq("chat", "--language", "de", url=server_url, stdin="Hallo\n")
    assert done.returncode == 1
    assert "error (model_not_found)" in done.stderr


def test_url_from_the_environment_and_options_after_the_command(server_url: str) -> None:
    assert seq2seq("models", url=None, env={"SEQ2SEQ_URL": server_url}).returncode == 0
    # After the command, --url overrides the environment (where nothing listens on port 9).
    done = seq2seq(
        "models", "--url", server_url, "--timeout", "10", url=None, env={"SEQ2SEQ_URL": "http://127.0.0.1:9"}
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [["translate", "Ein Kind lacht."], ["translate", "x", "--beam-size", "many"], ["frobnicate"], []],
    ids=["translate-without-target", "non-numeric-option", "unknown-command", "no-command"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = seq2seq(*args, url="http://127.0.0.1:9")  # never contacted
    assert done.returncode == 2
    assert "usage: seq2seq" in done.stderr


def test_a_reader_that_stops_early_ends_the_cli_quietly(server_url: str) -> None:
    """``seq2seq models --json | head``: no BrokenPipeError traceback, the shell's 141."""
    cli = [sys.executable, "-m", "client.cli", "--url", server_url, "models", "--json"]
    with subprocess.Popen(cli, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the output comes (``head`` after its lines)
        stderr = proc.stderr.read().decode()
        assert proc.wait(30) == 141 and "Traceback" not in stderr, stderr


def test_chat_with_beams_and_mmi_reaches_the_server(server_url: str) -> None:
    """The options go through: the README's beam-5 reply, and the server's 422 for a model that
    ships no backward model (mmi_reranking is false in /models)."""
    done = seq2seq("chat", "Hello", "--language", "en", "--beam-size", "5", url=server_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello"  # the README's chat-en table, beam 5
    listed = json.loads(seq2seq("models", "--json", url=server_url).stdout)
    chat_en = next(m for m in listed if m["name"] == "chat-en")
    assert chat_en["mmi_reranking"] is False and chat_en["decoding"]["beam_size"] == 5
    done = seq2seq("chat", "Hello", "--language", "en", "--beam-size", "5", "--mmi-weight", "0.5", url=server_url)
    assert done.returncode == 1
    assert "mmi_weight needs a model that ships a backward model" in done.stderr
