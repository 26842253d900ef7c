"""``seq2seq``: translate, chat and list models from the command line.

::

    seq2seq translate "Zwei Hunde spielen im Schnee." --to en [--from de] [--beam-size 5 --n-best 3] [--json]
    seq2seq translate --file in.txt --out out.txt --to en [--resume]   # a document, line by line ('-': stdin/stdout)
    seq2seq chat                    # conversation: one message per line on stdin, replies streamed
    seq2seq chat "Hello there"      # a single turn
    seq2seq models [--json]

``--url`` (default: ``$SEQ2SEQ_URL``, else http://127.0.0.1:8000), ``--timeout`` and
``--api-key`` (default: ``$SEQ2SEQ_API_KEY``) go before or after the command. Exit status: 0 success, 1 the request failed (``error (code): message``
on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client._client import Client
from client._config import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_TIMEOUT
from client._exceptions import APIError, Seq2SeqError
from client._models import ChatTurn, DecodingOptions, ModelInfo, TranslateResult
from client.files import BatchFailed, read_lines, resume_point, translate_lines

# Turns of earlier conversation sent with each message. The server accepts up to 100 and the
# bundled chat models use none of them (they answer single questions), so a short window keeps
# long sessions from growing into 422s while serving models that do read context.
HISTORY_TURNS = 20


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--url``, ``--timeout`` and ``--api-key``; with ``suppress``, an option left out sets nothing (see build_parser)."""
    url = argparse.SUPPRESS if suppress else os.environ.get("SEQ2SEQ_URL", DEFAULT_BASE_URL)
    timeout = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=url, help=f"server URL (env SEQ2SEQ_URL; default {DEFAULT_BASE_URL})")
    parser.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help="HTTP timeout in seconds (default 60)"
    )
    parser.add_argument(
        "--api-key",
        default=argparse.SUPPRESS if suppress else None,  # None: the client reads the environment
        metavar="KEY",
        help=f"API key for a server that asks for one (default: env {API_KEY_ENV}, which keeps it out of ps)",
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
    translate.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate, in one batch")
    translate.add_argument("--to", dest="target_lang", help="target language (required unless --model is given)")
    translate.add_argument("--from", dest="source_lang", help="source language")
    translate.add_argument("--model", help="model name (default: the server's default for the language pair)")
    translate.add_argument("--beam-size", type=int, help="beam search width (default: greedy)")
    translate.add_argument("--n-best", type=int, help="alternatives to show per text (implies --beam-size >= N)")
    translate.add_argument("--json", action="store_true", help="print the whole result as JSON")
    document = translate.add_argument_group("documents (instead of TEXT): one line is one text")
    document.add_argument("--file", metavar="PATH", help="translate this file line by line ('-': stdin)")
    document.add_argument("--out", metavar="PATH", help="write the translations here (default, '-': stdout)")
    document.add_argument(
        "--resume", action="store_true", help="keep the lines already in --out and translate only the rest"
    )
    document.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests at a time (default 4)")
    document.add_argument("--batch-size", type=int, default=16, metavar="N", help="lines per request (default 16)")
    translate.set_defaults(run=_translate)

    chat = commands.add_parser("chat", parents=[common], help="chat: one MESSAGE, or one per line on stdin")
    chat.add_argument("message", nargs="?", help="send only this message (default: read lines from stdin)")
    chat.add_argument("--language", help="reply language (default: any chat model)")
    chat.add_argument("--model", help="chat model name")
    chat.add_argument("--beam-size", type=int, help="beam search width (default: greedy, streamed token by token)")
    chat.add_argument(
        "--mmi-weight",
        type=float,
        help="rerank the beams with the model's backward model by this weight (default: the model's)",
    )
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
    if args.command == "translate":
        _check_document_args(parser, args)
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    try:
        with Client(args.url, timeout=timeout, api_key=args.api_key) as client:
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
def _check_document_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.file is None:
        if not args.texts:
            parser.error("translate: give TEXT arguments or a --file")
        if args.out is not None or args.resume:
            parser.error("translate: --out and --resume go with --file")
        return
    if args.texts:
        parser.error("translate: give TEXT arguments or a --file, not both")
    if args.json or args.n_best is not None:
        parser.error("translate: --file writes one translation per line; --json and --n-best are for TEXT arguments")
    if args.resume and args.out in (None, "-"):
        parser.error("translate: --resume continues an --out file")
    if args.concurrency < 1 or args.batch_size < 1:
        parser.error("translate: --concurrency and --batch-size must be at least 1")


def _translate(client: Client, args: argparse.Namespace) -> int:
    if args.file is not None:
        return _translate_file(client, args)
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


def _translate_file(client: Client, args: argparse.Namespace) -> int:
    """``--file``: the document's lines through :func:`client.files.translate_lines`, with a progress
    bar (on a terminal) and a summary on stderr."""
    to_stdout = args.out in (None, "-")
    try:  # a missing or unreadable file, a file that is not UTF-8, an --out that is not this input's
        if args.file == "-":
            lines = read_lines(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"))
        else:
            with open(args.file, encoding="utf-8") as source:
                lines = read_lines(source)
        start = resume_point(Path(args.out), len(lines)) if args.resume else 0
        output = (
            contextlib.nullcontext(sys.stdout)
            if to_stdout
            else open(args.out, "a" if args.resume else "w", encoding="utf-8")
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    options: DecodingOptions = {} if args.beam_size is None else {"beam_size": args.beam_size}
    languages = {"model": args.model, "source_lang": args.source_lang, "target_lang": args.target_lang}
    bar = tqdm(total=len(lines), initial=start, unit="line", file=sys.stderr, disable=None, dynamic_ncols=True)
    with output as out, bar:
        try:
            summary = translate_lines(
                client,
                lines,
                out,
                start=start,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                on_written=bar.update,
                **languages,
                **options,
            )
        except BatchFailed as exc:
            tqdm.write(f"error ({exc.error.code}): {exc.where}: {exc.error.message}", file=sys.stderr)
            if not to_stdout:
                tqdm.write(f"{args.out} holds the first {exc.written} lines: --resume continues", file=sys.stderr)
            return 1
    print(summary, file=sys.stderr)
    return 0


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
    options: DecodingOptions = {}
    if args.beam_size is not None:
        options["beam_size"] = args.beam_size
    if args.mmi_weight is not None:
        options["mmi_weight"] = args.mmi_weight
    with client.chat_stream(message, history=history, model=args.model, language=args.language, **options) as stream:
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
