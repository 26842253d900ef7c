"""``seq2seq``: translate, chat and list models from the command line.

::

    seq2seq translate "Zwei Hunde spielen im Schnee." --to en [--from de] [--beam-size 5 --n-best 3] [--json]
    seq2seq chat                    # conversation: one message per line on stdin, replies streamed
    seq2seq chat "Hello there"      # a single turn
    seq2seq models [--json]

``--url`` (default: ``$SEQ2SEQ_URL``, else http://127.0.0.1:8000) and ``--timeout`` go before
or after the command. Exit status: 0 success, 1 the request failed (``error (code): message``
on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from client._client import Client
from client._config import DEFAULT_BASE_URL, DEFAULT_TIMEOUT
from client._exceptions import APIError, Seq2SeqError
from client._models import ChatTurn, DecodingOptions, ModelInfo, TranslateResult

# Turns of earlier conversation sent with each message. The server accepts up to 100 and the
# bundled chat models use none of them (they answer single questions), so a short window keeps
# long sessions from growing into 422s while serving models that do read context.
HISTORY_TURNS = 20


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--url`` and ``--timeout``; with ``suppress``, an option left out sets nothing (see build_parser)."""
    url = argparse.SUPPRESS if suppress else os.environ.get("SEQ2SEQ_URL", DEFAULT_BASE_URL)
    timeout = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=url, help=f"server URL (env SEQ2SEQ_URL; default {DEFAULT_BASE_URL})")
    parser.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help="HTTP timeout in seconds (default 60)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq",
        description="Client of a seq2seq-serve server.",
        epilog="exit status: 0 ok, 1 request failed, 2 usage error",
    )
    _add_global_options(parser, suppress=False)
    # Every command accepts the global options too, so they may come before or after it; there
    # they default to SUPPRESS, so that leaving them out keeps what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    translate = commands.add_parser("translate", parents=[common], help="translate one or more texts")
    translate.add_argument("texts", nargs="+", metavar="TEXT", help="texts to translate, in one batch")
    translate.add_argument("--to", dest="target_lang", help="target language (required unless --model is given)")
    translate.add_argument("--from", dest="source_lang", help="source language")
    translate.add_argument("--model", help="model name (default: the server's default for the language pair)")
    translate.add_argument("--beam-size", type=int, help="beam search width (default: greedy)")
    translate.add_argument("--n-best", type=int, help="alternatives to show per text (implies --beam-size >= N)")
    translate.add_argument("--json", action="store_true", help="print the whole result as JSON")
    translate.set_defaults(run=_translate)

    chat = commands.add_parser("chat", parents=[common], help="chat: one MESSAGE, or one per line on stdin")
    chat.add_argument("message", nargs="?", help="send only this message (default: read lines from stdin)")
    chat.add_argument("--language", help="reply language (default: any chat model)")
    chat.add_argument("--model", help="chat model name")
    chat.set_defaults(run=_chat)

    models = commands.add_parser("models", parents=[common], help="list the server's models")
    models.add_argument("--json", action="store_true", help="print the full model descriptions as JSON")
    models.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "translate" and args.target_lang is None and args.model is None:
        parser.error("translate: give the target language with --to (or a --model)")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    try:
        with Client(args.url, timeout=timeout) as client:
            return args.run(client, args)
    except Seq2SeqError as exc:
        _print_error(exc)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``seq2seq models --json | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _print_error(exc: Seq2SeqError) -> None:
    print(f"error ({exc.code}): {exc.message}", file=sys.stderr)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- translate ------------------------------------------------------------------------------------
def _translate(client: Client, args: argparse.Namespace) -> int:
    options: DecodingOptions = {}
    if args.beam_size is not None:
        options["beam_size"] = args.beam_size
    if args.n_best is not None:
        options["n_best"] = args.n_best
        # The server rejects n_best > beam_size; asking for N alternatives means searching N beams.
        options["beam_size"] = max(args.beam_size or 1, args.n_best)
    result = client.translate(
        args.texts, model=args.model, source_lang=args.source_lang, target_lang=args.target_lang, **options
    )
    if args.json:
        _print_json(dataclasses.asdict(result))
    else:
        print(_format_translations(result))
    return 0


def _format_translations(result: TranslateResult) -> str:
    """One line per text; with alternatives, a numbered block per text with scores."""
    blocks = []
    for translation in result.translations:
        if translation.alternatives is None:
            blocks.append(translation.text)
        else:
            lines = [f"{i}. {alt.text}  ({alt.score:.2f})" for i, alt in enumerate(translation.alternatives, 1)]
            blocks.append("\n".join(lines))
    separator = "\n\n" if any(t.alternatives for t in result.translations) else "\n"
    return separator.join(blocks)


# -- chat -----------------------------------------------------------------------------------------
def _chat(client: Client, args: argparse.Namespace) -> int:
    """Each message's reply is streamed as it is generated. A failed turn is reported and the
    conversation goes on (exit status 1 at the end); an unreachable server ends it."""
    history: list[ChatTurn] = []
    failed = False
    for message in [args.message] if args.message is not None else _user_lines():
        try:
            reply = _stream_reply(client, message, history, args)
        except APIError as exc:
            _print_error(exc)
            failed = True
            continue
        history += [ChatTurn("user", message), ChatTurn("assistant", reply)]
        del history[:-HISTORY_TURNS]
    return 1 if failed else 0


def _user_lines() -> Iterator[str]:
    """Non-blank lines from stdin until EOF, with a prompt when a person is typing."""
    prompt = "> " if sys.stdin.isatty() else ""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return
        if line.strip():
            yield line.strip()


def _stream_reply(client: Client, message: str, history: list[ChatTurn], args: argparse.Namespace) -> str:
    printed = False
    with client.chat_stream(message, history=history, model=args.model, language=args.language) as stream:
        try:
            for text in stream.text_deltas():
                print(text, end="", flush=True)
                printed = True
        except Seq2SeqError:
            if printed:  # end the half-printed reply's line before the error is reported
                print(flush=True)
            raise
    print(flush=True)
    assert stream.result is not None  # text_deltas() ends only after the final result (or raises)
    return stream.result.reply


# -- models ---------------------------------------------------------------------------------------
def _models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        _print_json([dataclasses.asdict(m) for m in models])
    else:
        print(_format_table(models))
    return 0


def _format_table(models: list[ModelInfo]) -> str:
    header = ("NAME", "VERSION", "TASK", "LANGUAGES", "STATUS", "DEFAULT FOR", "PARAMETERS")
    rows = [
        (
            m.name,
            m.version,
            m.task,
            f"{m.source_lang or '?'}->{m.target_lang or '?'}",
            m.status,
            ", ".join(m.default_for) or "-",
            f"{m.parameters:,}" if m.parameters is not None else "-",
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


if __name__ == "__main__":
    sys.exit(main())
