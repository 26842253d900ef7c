"""The scheduler without a model: admission policies, and the lifecycle of every request."""

from __future__ import annotations

import pytest

from seq2seq.decoding import DecodeParams, FinishReason
from seq2seq.generation import Hypothesis, StepEvent
from service.engine.request import Request, RequestStatus
from service.engine.scheduler import QueueFull, Scheduler
from service.errors import DeadlineExceeded, InternalError


def req(rid: str, rows: int = 1, tokens: int = 10, timeout: float = 100.0, stream: bool = False) -> Request:
    return Request(rid, [5] * tokens, DecodeParams(beam_size=rows, n_best=1), timeout, stream_tokens=stream)


def ids(requests: list[Request]) -> list[str]:
    return [r.id for r in requests]


def run(s: Scheduler, now: float) -> list[str]:
    """One schedule; the admitted group joins the batch at once."""
    plan = s.schedule(now)
    s.joined(plan.admit)
    return ids(plan.admit)


def finish(rid: str, tokens: tuple[int, ...] = (7,)) -> StepEvent:
    return StepEvent(rid, finished=[Hypothesis(list(tokens), -1.0, -1.0, FinishReason.EOS)])


def test_continuous_admits_within_row_and_token_budgets_every_step() -> None:
    s = Scheduler("continuous", max_rows=4, max_tokens=100, max_queue=10)
    s.add([req("a", rows=2), req("b", rows=2), req("c")], 0)
    assert run(s, 0) == ["a", "b"]  # 4 rows: full
    assert (s.rows, s.tokens) == (4, 40)  # a beam row holds its own copy of the source
    assert run(s, 0) == []
    s.update([finish("a")], 0)
    assert run(s, 0) == ["c"]  # rows freed up: joins the running batch
    s.add([req("d", tokens=80), req("e", tokens=5)], 0)
    assert run(s, 0) == []  # d would pass the token budget; FIFO keeps e behind it


def test_continuous_groups_arrivals_while_a_batch_runs() -> None:
    s = Scheduler("continuous", max_rows=16, max_tokens=1000, max_queue=30, admit_delay_s=0.05)

    def in_flight(n: int, now: float) -> None:
        """Finish running requests until ``n`` rows are left."""
        assert n <= s.rows
        s.update([finish(rid) for rid in list(s.running)[: s.rows - n]], now)

    s.add([req(f"a{i}") for i in range(12)], 1.0)
    assert len(run(s, 1.0)) == 12  # idle engine: no delay at all
    s.add([req("b")], 1.001)
    assert run(s, 1.01) == []  # 1 waiting vs 13 in flight, 10 ms after the last join
    s.add([req(x) for x in "cde"], 1.02)
    assert run(s, 1.02) == ["b", "c", "d", "e"]  # 4 of 16 in flight: a group, encode it
    in_flight(12, 1.03)
    s.add([req("f")], 1.03)
    assert run(s, 1.06) == []
    assert run(s, 1.071) == ["f"]  # admit_delay since the last join: no longer
    in_flight(12, 3.0)
    s.add([req(x) for x in "ghi"], 3.0)
    assert run(s, 3.0) == ["g", "h", "i"]  # the last join was long ago: at once, whatever the group
    s.add([req(x) for x in "vwxyz"], 3.01)
    assert run(s, 3.02) == []  # a long queue, but 1 free row: wait for more to free up
    in_flight(12, 3.03)
    assert run(s, 3.03) == list("vwxy")  # 4 rows free, a quarter of 16: a group
    in_flight(15, 3.04)
    # Overload: z has waited long, but the last join was 10 ms ago and only one row is free.
    assert run(s, 3.04) == []
    assert run(s, 3.081) == ["z"]
    in_flight(0, 4.0)
    s.add([req("k")], 4.0)
    assert run(s, 4.0) == ["k"]  # the batch finished: admit at once


def test_an_empty_batch_always_takes_one_request() -> None:
    s = Scheduler("continuous", max_rows=2, max_tokens=10, max_queue=10)
    s.add([req("big", rows=2, tokens=50)], 0)
    assert run(s, 0) == ["big"]


def test_static_waits_for_delay_or_a_full_batch_and_runs_to_completion() -> None:
    s = Scheduler("static", max_rows=3, max_tokens=1000, max_queue=10, max_delay_s=0.05)
    s.add([req("a")], 1.0)
    plan = s.schedule(1.01)
    assert plan.admit == [] and plan.wait_s == pytest.approx(0.04)
    assert run(s, 1.06) == ["a"]  # delay passed
    s.add([req(x) for x in "bcde"], 2.0)
    assert run(s, 2.0) == []  # a batch is running: no joining
    s.update([finish("a")], 2.0)
    assert run(s, 2.0) == ["b", "c", "d"]  # full batch: no need to wait


def test_none_runs_one_request_at_a_time() -> None:
    s = Scheduler("none", max_rows=8, max_tokens=1000, max_queue=10)
    s.add([req("a"), req("b")], 0)
    assert run(s, 0) == ["a"]
    assert run(s, 0) == []
    s.update([finish("a")], 0)
    assert run(s, 0) == ["b"]


def test_a_request_walks_waiting_encoding_running_finished() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=10)
    r = req("a", stream=True)
    s.add([r], 10.0)
    assert r.status is RequestStatus.WAITING and r.deadline == 110.0
    plan = s.schedule(10.0)
    assert plan.admit == [r] and r.status is RequestStatus.ENCODING and s.in_batch() == []
    s.joined(plan.admit)
    assert r.status is RequestStatus.RUNNING and s.in_batch() == [r]
    token = StepEvent("a", token=9)
    assert s.update([token], 10.5) == [token]
    out = s.update([StepEvent("a", token=4), finish("a", (9, 4))], 11.0)
    assert [o.token for o in out] == [4, None] and r.status is RequestStatus.FINISHED
    assert not s.has_work and (s.rows, s.tokens) == (0, 0)
    stats = s.take_stats()
    assert stats.ttft_seconds == [0.5] and stats.generated_tokens == 2
    assert (stats.queue_depth, stats.running_rows) == (0, 0)
    assert s.take_stats().empty  # taken: the next message starts afresh


def test_results_go_out_but_tokens_only_to_requests_that_stream_them() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=10)
    s.add([req("plain"), req("streamed", stream=True), req("beam", rows=3)], 0)
    run(s, 0)
    events = [StepEvent("plain", token=5), StepEvent("streamed", token=6), finish("beam", (1, 2, 3))]
    out = s.update(events, 1.0)
    assert out == events[1:]
    stats = s.take_stats()
    assert stats.generated_tokens == 5  # the beam's result counts its tokens
    assert sorted(stats.ttft_seconds) == [1.0, 1.0, 1.0]


def test_queue_limit_is_all_or_nothing() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=3)
    s.add([req("a"), req("b")], 0)
    with pytest.raises(QueueFull):
        s.add([req("c"), req("d")], 0)
    assert ids(list(s.waiting)) == ["a", "b"]
    assert s.take_stats().rejected == 2
    assert s.retry_after_s() >= 1


def test_aborts_and_deadlines_leave_wherever_the_request_is() -> None:
    s = Scheduler("continuous", max_rows=1, max_tokens=1000, max_queue=10)
    running, queued, late, gone = req("running", timeout=5), req("queued"), req("late", timeout=1), req("gone")
    s.add([running, queued, late, gone], 0)
    run(s, 0)
    s.abort({"gone", "unknown"})
    plan = s.schedule(2.0)
    assert ids(plan.left) == ["late", "gone"] and plan.admit == []  # one row: still taken
    assert gone.status is RequestStatus.ABORTED and gone.error is None
    assert late.status is RequestStatus.FAILED and isinstance(late.error, DeadlineExceeded)
    assert "while queued" in late.error.message
    plan = s.schedule(6.0)
    assert ids(plan.left) == ["running"] and ids(plan.admit) == ["queued"]  # its row is free again
    assert running.error is not None and "during generation" in running.error.message
    s.abort({"queued"})
    assert ids(s.schedule(7.0).left) == ["queued"]  # aborted while encoding
    assert (s.rows, s.tokens) == (0, 0) and not s.has_work
    assert s.take_stats().cancelled == 2


def test_joined_returns_the_requests_that_left_while_encoding() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=10)
    s.add([req("a"), req("b"), req("c")], 0)
    group = s.schedule(0).admit
    s.abort({"b"})
    assert ids(s.schedule(1).left) == ["b"]  # aborted while its group was encoding
    assert ids(s.joined(group)) == ["b"]  # its rows go again as soon as they joined
    assert [r.status for r in group] == [RequestStatus.RUNNING, RequestStatus.ABORTED, RequestStatus.RUNNING]
    assert ids(s.in_batch()) == ["a", "c"]


def test_fail_ends_live_requests_once() -> None:
    s = Scheduler("continuous", max_rows=8, max_tokens=1000, max_queue=10)
    s.add([req("a"), req("b")], 0)
    plan = s.schedule(0)
    s.joined(plan.admit[:1])  # b is still encoding
    error = InternalError("boom")
    assert ids(s.fail(s.in_batch(), error)) == ["a"]
    assert s.fail(plan.admit, error) == [plan.admit[1]]  # a has ended already
    assert all(r.status is RequestStatus.FAILED and r.error is error for r in plan.admit)
    s.add([req("c")], 0)
    assert ids(s.fail_all(error)) == ["c"] and not s.has_work


def test_admission_takes_turns_between_clients() -> None:
    """A client that floods the queue gets one request in per turn, not every free row."""

    def client_req(rid: str, client: str) -> Request:
        r = req(rid)
        r.client = client
        return r

    s = Scheduler("continuous", max_rows=4, max_tokens=1000, max_queue=30)
    s.add([client_req(f"f{i}", "flood") for i in range(20)], 0)
    s.add([client_req("b0", "b"), client_req("b1", "b")], 0)
    s.add([client_req("c0", "c")], 0)
    assert run(s, 0) == ["f0", "b0", "c0", "f1"]  # arrival order would have been f0..f3
    s.update([finish(rid) for rid in ["f0", "b0", "c0", "f1"]], 0)
    assert run(s, 0) == ["b1", "f2", "f3", "f4"]  # b's turn came before flood's; c has nothing left
    s.add([client_req("c1", "c")], 0)  # a client that comes back joins the end of the line
    s.abort(["f5"])  # a request that leaves the queue leaves its client's turn too
    s.update([finish(rid) for rid in ["b1", "f2"]], 0)
    assert run(s, 0) == ["f6", "c1"]
    assert len(s.waiting) == 13 and s.rows == 4


def test_a_request_that_does_not_fit_keeps_its_clients_turn() -> None:
    s = Scheduler("continuous", max_rows=4, max_tokens=1000, max_queue=30)
    a, big, small = req("a", rows=3), req("big", rows=2), req("small")
    big.client, small.client = "x", "y"
    s.add([a, big, small], 0)
    assert run(s, 0) == ["a"]  # big (x's turn) does not fit in the one free row; small waits behind it
    s.update([finish("a")], 0)
    assert run(s, 0) == ["big", "small"]
