"""A document through the server, one line per text: what ``seq2seq translate --file`` runs.

The lines go out in batches (one ``/translate`` request of up to ``batch_size`` texts each),
``concurrency`` requests at a time, and the translations are written in the input's order:
the output only ever holds complete lines, a prefix of the result, flushed after each batch.
So a run that stops (an error, Ctrl-C, a killed process) can be resumed from the lines that
are there (:func:`resume_point`). Empty lines are not sent; they stay empty in the output.
A request that the server turns away (429, 503, no connection) is sent again, by the client's
retry logic with the more patient policy :data:`DOCUMENT_RETRY`: 429 and 503 wait as long as
their ``Retry-After`` says.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from client._client import Client
from client._config import Retry
from client._exceptions import InvalidRequest, Seq2SeqError

# A document is a long job: an overloaded or restarting server is waited for, about a minute
# in all (7 waits of 0.5 s doubling up to 30 s), rather than ending the run (--resume continues one).
DOCUMENT_RETRY = Retry(max_attempts=8, max_backoff=30.0)


@dataclass
class FileSummary:
    """What one run did; ``resumed`` lines were already in the output and were not sent again."""

    lines: int  # in the input
    resumed: int = 0
    translated: int = 0  # non-empty lines sent in this run
    empty: int = 0  # empty (or blank) lines of this run, written as empty lines
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        done = self.lines - self.resumed
        rate = done / self.seconds if self.seconds else 0.0
        text = (
            f"{done} lines in {self.seconds:.2f} s ({rate:.1f} lines/s): {self.translated} translated, "
            f"{self.empty} empty; {self.input_tokens} input and {self.output_tokens} output tokens"
        )
        return text + (f"; {self.resumed} lines were already done" if self.resumed else "")

    def add(self, batch: _Batch) -> None:
        self.translated += batch.translated
        self.empty += len(batch.lines) - batch.translated
        self.input_tokens += batch.input_tokens
        self.output_tokens += batch.output_tokens


class BatchFailed(Exception):
    """A batch failed for good (after the client's retries) at ``first_line``-``last_line`` (1-based,
    inclusive: one line when the server refused it); the ``written`` lines before the batch are in
    the output."""

    def __init__(self, written: int, first_line: int, last_line: int, error: Seq2SeqError) -> None:
        self.where = f"line {first_line}" if first_line == last_line else f"lines {first_line}-{last_line}"
        super().__init__(f"{self.where}: {error}")
        self.written, self.first_line, self.last_line, self.error = written, first_line, last_line, error


def read_lines(source: TextIO) -> list[str]:
    """The lines of ``source`` without their ends, split at newlines only (``wc -l``'s lines,
    plus a last one without a newline)."""
    data = source.read()
    lines = data.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no new one
        lines.pop()
    return lines


def resume_point(path: Path, total: int) -> int:
    """How many lines of a run that stopped are in ``path``: its complete lines stay, an
    incomplete last one (the run was killed while writing it) is cut off."""
    data = path.read_bytes() if path.exists() else b""
    keep = data.rfind(b"\n") + 1
    done = data.count(b"\n", 0, keep)
    if done > total:
        raise ValueError(f"{path} has {done} lines, more than the input's {total}: it is not this input's output")
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    return done


def translate_lines(
    client: Client,
    lines: Sequence[str],
    out: TextIO,
    *,
    start: int = 0,
    batch_size: int = 16,
    concurrency: int = 4,
    on_written: Callable[[int], None] | None = None,
    **translate_args: Any,
) -> FileSummary:
    """Translate ``lines[start:]`` and write one line to ``out`` for each, in order.

    ``translate_args`` go to :meth:`Client.translate` (model, languages, decoding options, and
    ``retry``: :data:`DOCUMENT_RETRY` unless given).
    ``on_written(n)`` is called after each batch of ``n`` lines is written and flushed. A batch
    that fails for good raises :class:`BatchFailed` once the batches before it are written.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    translate_args.setdefault("retry", DOCUMENT_RETRY)
    summary = FileSummary(len(lines), resumed=start)
    started = time.monotonic()
    batches = deque(range(start, len(lines), batch_size))
    pending: deque[tuple[int, Future[_Batch]]] = deque()
    # A few batches beyond the ones in flight, so no worker idles while the oldest is written.
    window = 2 * concurrency
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="translate")
    try:
        while batches or pending:
            while batches and len(pending) < window:
                first = batches.popleft()
                chunk = lines[first : first + batch_size]
                pending.append((first, pool.submit(_translate_batch, client, first, chunk, translate_args)))
            first, future = pending.popleft()
            batch = future.result()
            out.write("".join(f"{line}\n" for line in batch.lines))
            out.flush()
            summary.add(batch)
            if on_written is not None:
                on_written(len(batch.lines))
    finally:  # on an error or Ctrl-C, nothing more is sent; requests in flight are left to finish
        pool.shutdown(wait=False, cancel_futures=True)
    summary.seconds = time.monotonic() - started
    return summary


def _refused_line(client: Client, chunk: Sequence[str], args: dict[str, Any]) -> int | None:
    """The index of the first line of ``chunk`` that the server refuses on its own, if one is."""
    texts = [i for i, line in enumerate(chunk) if line.strip()]
    if len(texts) == 1:
        return texts[0]
    for index in texts:
        try:
            client.translate([chunk[index]], **args)
        except InvalidRequest:
            return index
    return None


@dataclass(frozen=True, slots=True)
class _Batch:
    lines: list[str]  # one output line per input line
    translated: int
    input_tokens: int
    output_tokens: int


def _translate_batch(client: Client, first: int, chunk: Sequence[str], args: dict[str, Any]) -> _Batch:
    """A worker's job: a translation for each line of ``chunk`` (``lines[first:]``) with text, an
    empty line for the others; :class:`BatchFailed` if the server refuses them."""
    texts = [line for line in chunk if line.strip()]
    if not texts:
        return _Batch([""] * len(chunk), 0, 0, 0)
    try:
        result = client.translate(texts, **args)
    except InvalidRequest as exc:  # a line is refused (too long, nothing to translate)? say which
        index = _refused_line(client, chunk, args)
        if index is not None:
            raise BatchFailed(first, first + 1 + index, first + 1 + index, exc) from exc
        raise BatchFailed(first, first + 1, first + len(chunk), exc) from exc  # the batch as a whole: too many texts
    except Seq2SeqError as exc:
        raise BatchFailed(first, first + 1, first + len(chunk), exc) from exc
    # One output line per input line: a newline inside a translation would shift every line after it.
    translations = iter(" ".join(t.text.splitlines()) for t in result.translations)
    usage = result.usage
    return _Batch(
        [next(translations) if line.strip() else "" for line in chunk],
        len(texts),
        usage.input_tokens if usage else 0,
        usage.output_tokens if usage else 0,
    )
