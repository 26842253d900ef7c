"""Scheduler policies, without a model."""

from __future__ import annotations

import pytest

from service.engine.scheduler import QueueFull, Scheduler, WorkItem


def item(rid: str, rows: int = 1, tokens: int = 10, t: float = 0.0, deadline: float = 100.0) -> WorkItem:
    return WorkItem(rid, rows, tokens, deadline, t)


def ids(items: list[WorkItem]) -> list[str]:
    return [i.request_id for i in items]


def test_continuous_admits_within_row_and_token_budgets_every_step() -> None:
    s = Scheduler("continuous", max_rows=4, max_tokens=100, max_queue=10)
    s.add([item("a", rows=2), item("b", rows=2), item("c")])
    assert ids(s.schedule(0, 0, 0).admit) == ["a", "b"]  # 4 rows: full
    assert ids(s.schedule(4, 40, 0).admit) == []
    assert ids(s.schedule(3, 30, 0).admit) == ["c"]  # a row freed up: joins the running batch
    s.add([item("d", tokens=80), item("e", tokens=5)])
    assert ids(s.schedule(1, 30, 0).admit) == []  # d would pass the token budget; FIFO keeps e behind it


def test_continuous_groups_arrivals_while_a_batch_runs() -> None:
    s = Scheduler("continuous", max_rows=16, max_tokens=1000, max_queue=20, admit_delay_s=0.05)
    s.add([item("a", t=1.0)])
    assert ids(s.schedule(0, 0, 1.0).admit) == ["a"]  # idle engine: no delay at all
    s.add([item("b", t=1.001)])
    assert ids(s.schedule(12, 120, 1.01).admit) == []  # 1 waiting vs 13 in flight, 10 ms after the last join
    s.add([item(x, t=1.02) for x in "cde"])
    assert ids(s.schedule(12, 120, 1.02).admit) == ["b", "c", "d", "e"]  # 4 of 16 in flight: a group, encode it
    s.add([item("f", t=1.03)])
    assert ids(s.schedule(12, 120, 1.06).admit) == []
    assert ids(s.schedule(12, 120, 1.071).admit) == ["f"]  # admit_delay since the last join: no longer
    s.add([item("g", t=3.0)])
    assert ids(s.schedule(12, 120, 3.0).admit) == ["g"]  # the last join was long ago: at once
    s.add([item(x, t=3.01) for x in "vwxyz"])
    assert ids(s.schedule(15, 150, 3.02).admit) == []  # a long queue, but 1 free row: wait for more to free up
    assert ids(s.schedule(12, 120, 3.03).admit) == list("vwxy")  # 4 rows free, a quarter of 16: a group
    # Overload: z has waited long, but the last join was 10 ms ago and only one row is free.
    assert ids(s.schedule(15, 150, 3.04).admit) == []
    assert ids(s.schedule(15, 150, 3.081).admit) == ["z"]
    s.add([item("k", t=4.0)])
    assert ids(s.schedule(0, 0, 4.0).admit) == ["k"]  # the batch finished: admit at once


def test_an_empty_batch_always_takes_one_request() -> None:
    s = Scheduler("continuous", max_rows=2, max_tokens=10, max_queue=10)
    s.add([item("big", rows=2, tokens=50)])
    assert ids(s.schedule(0, 0, 0).admit) == ["big"]


def test_static_waits_for_delay_or_a_full_batch_and_runs_to_completion() -> None:
    s = Scheduler("static", max_rows=3, max_tokens=1000, max_queue=10, max_delay_s=0.05)
    s.add([item("a", t=1.0)])
    d = s.schedule(0, 0, 1.01)
    assert d.admit == [] and d.wait_s == pytest.approx(0.04)
    assert ids(s.schedule(0, 0, 1.06).admit) == ["a"]  # delay passed
    s.add([item("b", t=2.0), item("c", t=2.0), item("d", t=2.0), item("e", t=2.0)])
    assert ids(s.schedule(1, 10, 2.0).admit) == []  # a batch is running: no joining
    assert ids(s.schedule(0, 0, 2.0).admit) == ["b", "c", "d"]  # full batch: no need to wait


def test_none_runs_one_request_at_a_time() -> None:
    s = Scheduler("none", max_rows=8, max_tokens=1000, max_queue=10)
    s.add([item("a"), item("b")])
    assert ids(s.schedule(0, 0, 0).admit) == ["a"]
    assert ids(s.schedule(1, 10, 0).admit) == []
    assert ids(s.schedule(0, 0, 0).admit) == ["b"]


def test_queue_limit_is_all_or_nothing_and_abort_and_expiry_remove() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=3)
    s.add([item("a", deadline=1.0), item("b", deadline=5.0)])
    with pytest.raises(QueueFull):
        s.add([item("c"), item("d")])
    assert len(s) == 2
    assert ids(s.expired(2.0)) == ["a"]
    assert ids(s.abort({"b", "zzz"})) == ["b"]
    assert len(s) == 0
