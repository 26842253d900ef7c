"""The server wrapper: /metrics parsing, and a start-up that fails loudly with the server's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import REPO
from bench.server import ServerError, ServerProcess, free_port, parse_metrics

METRICS = """\
# HELP seq2seq_queue_depth requests waiting for admission
# TYPE seq2seq_queue_depth gauge
seq2seq_queue_depth{model="translate-de-en"} 3.0
seq2seq_queue_depth{model="chat-en"} 7.0
# HELP seq2seq_batch_size rows per decoder step
# TYPE seq2seq_batch_size histogram
seq2seq_batch_size_bucket{le="1.0",model="translate-de-en"} 2.0
seq2seq_batch_size_count{model="translate-de-en"} 4.0
seq2seq_batch_size_sum{model="translate-de-en"} 40.0
# HELP seq2seq_requests_total HTTP requests by route and status
# TYPE seq2seq_requests_total counter
seq2seq_requests_total{route="/translate",status="200"} 9.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.5e+08
"""


def test_parse_metrics_keeps_one_models_samples_and_unlabelled_ones() -> None:
    m = parse_metrics(METRICS, "translate-de-en")
    assert m["seq2seq_queue_depth"] == 3.0
    assert (m["seq2seq_batch_size_count"], m["seq2seq_batch_size_sum"]) == (4.0, 40.0)
    assert m["process_resident_memory_bytes"] == 1.5e8
    assert "seq2seq_batch_size_bucket" not in m  # per-bucket samples carry an `le` label
    assert "seq2seq_requests_total" not in m  # per-route, not per-model
    assert parse_metrics(METRICS, "chat-en")["seq2seq_queue_depth"] == 7.0


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536


async def test_a_server_that_exits_raises_with_its_log(tmp_path: Path) -> None:
    server = ServerProcess(["--model-store", str(tmp_path / "missing")], tmp_path / "server.log", REPO)
    with pytest.raises(ServerError, match="model store .* is not a directory"):
        async with server:
            pass
    assert server.proc is not None and server.proc.poll() is not None
