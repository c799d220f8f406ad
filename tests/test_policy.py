"""Unit tests for the sans-IO policy core, :class:`backtest_queue.policy.BacktestQueue`.

Time is plain numbers (seconds). Every queue gets an injected clock so that the token
bucket, which starts full at ``clock()`` on construction, shares the tests' time origin.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

from backtest_queue import BacktestQueueError, DuplicateRequest, QueueFull, UsageError
from backtest_queue.policy import (
    DEFAULT_CONNECTION,
    BacktestQueue,
    FailedRequest,
    QueueStats,
    Throttle,
)


@dataclass(frozen=True)
class Req:
    """The smallest thing the queue accepts: anything with a ``request_id``."""

    request_id: str
    payload: int = 0


def reqs(*ids: str) -> list[Req]:
    return [Req(i) for i in ids]


def make_queue(*, start: float = 0.0, **settings: Any) -> BacktestQueue[Req]:
    return BacktestQueue(clock=lambda: start, **settings)


def filled(*ids: str, connect_at: float | None = 0.0, **settings: Any) -> BacktestQueue[Req]:
    q = make_queue(**settings)
    for r in reqs(*ids):
        q.enqueue(r)
    if connect_at is not None:
        q.on_connected(connect_at)
    return q


def ids(requests: list[Req]) -> list[str]:
    return [r.request_id for r in requests]


def failed_ids(failed: list[FailedRequest[Req]]) -> list[str]:
    return [f.request.request_id for f in failed]


def queue_order(q: BacktestQueue[Req], now: float) -> list[str]:
    """The send queue's order, read by flushing everything (connects a spare connection)."""
    q.on_connected(now, "__probe__")
    saved = q.max_pending
    q.max_pending = None
    try:
        return ids(q.flush(now))
    finally:
        q.max_pending = saved


# -- maybe_flush: the original periodic contract -----------------------------------------


def test_backtest_queue_periodic_flush() -> None:
    q = make_queue(flush_interval=5.0)
    q.on_connected(100.0)
    assert q.last_flush == -math.inf

    # Empty queue: a no-op that leaves last_flush alone, whatever the time.
    assert q.maybe_flush(100.0) == []
    assert q.last_flush == -math.inf

    a, b, c = reqs("a", "b", "c")
    q.enqueue(a)
    q.enqueue(b)
    # The first maybe_flush on a non-empty queue runs.
    assert q.maybe_flush(100.0) == [a, b]
    assert q.last_flush == 100.0
    assert q.stats().last_flush == 100.0
    assert q.pending == 2

    # Before the interval has elapsed: a no-op, last_flush unchanged, nothing sent.
    q.enqueue(c)
    assert q.maybe_flush(104.999) == []
    assert q.last_flush == 100.0
    assert q.queued == 1
    assert q.stats().sent == 2

    # Once the interval has elapsed (exactly): it runs and moves last_flush.
    assert q.maybe_flush(105.0) == [c]
    assert q.last_flush == 105.0

    # Empty again: no-op after the interval too.
    assert q.maybe_flush(200.0) == []
    assert q.last_flush == 105.0


def test_maybe_flush_while_disconnected_runs_but_sends_nothing() -> None:
    """The contract: past the interval it sets last_flush and returns flush() (empty)."""
    q = filled("a", connect_at=None, flush_interval=2.0)
    assert q.maybe_flush(10.0) == []
    assert q.last_flush == 10.0
    q.on_connected(11.0)
    assert q.maybe_flush(11.0) == []  # gated by the interval
    assert q.last_flush == 10.0
    assert ids(q.maybe_flush(12.0)) == ["a"]
    assert q.last_flush == 12.0


def test_maybe_flush_with_zero_interval_runs_every_time() -> None:
    q = filled("a", "b", flush_interval=0.0, max_pending=1)
    assert ids(q.maybe_flush(1.0)) == ["a"]
    q.on_result("a", 1.0)
    assert ids(q.maybe_flush(1.0)) == ["b"]
    assert q.last_flush == 1.0


def test_maybe_flush_that_is_throttled_still_moves_last_flush() -> None:
    q = filled("a", "b", max_pending=1, flush_interval=1.0)
    assert ids(q.maybe_flush(0.0)) == ["a"]
    assert q.maybe_flush(1.0) == []  # pending full
    assert q.last_flush == 1.0


# -- enqueue -----------------------------------------------------------------------------


def test_enqueue_is_fifo() -> None:
    q = filled(*"abcde")
    assert ids(q.flush(0.0)) == list("abcde")


def test_queue_full_raises_and_changes_nothing() -> None:
    q = filled("a", "b", connect_at=None, capacity=2)
    before = q.stats()
    extra = Req("c")
    with pytest.raises(QueueFull) as info:
        q.enqueue(extra)
    assert info.value.capacity == 2
    assert isinstance(info.value, BacktestQueueError)
    assert q.stats() == before
    assert q.state_of("c") is None
    q.on_connected(0.0)
    assert ids(q.flush(0.0)) == ["a", "b"]  # nothing lost, order kept
    # Capacity counts the send queue only: with both pending, there is room again.
    q.enqueue(extra)
    assert q.state_of("c") == "queued"


def test_put_back_requests_are_never_refused_by_capacity() -> None:
    q = filled("a", capacity=1, result_timeout=1.0)
    q.flush(0.0)
    q.enqueue(Req("b"))
    assert q.expire(1.0) == []
    assert q.queued == 2  # over capacity: a came back, b stays
    with pytest.raises(QueueFull):
        q.enqueue(Req("c"))
    assert queue_order(q, 1.0) == ["a", "b"]


def test_enqueue_restored_ignores_capacity_but_not_duplicates() -> None:
    q = filled("a", connect_at=None, capacity=1)
    q.enqueue_restored(Req("b"))
    assert q.queued == 2
    with pytest.raises(DuplicateRequest):
        q.enqueue_restored(Req("a"))
    with pytest.raises(QueueFull):
        q.enqueue(Req("c"))
    q.on_connected(0.0)
    assert ids(q.flush(0.0)) == ["a", "b"]


def test_duplicate_in_a_full_queue_is_a_duplicate() -> None:
    q = filled("a", connect_at=None, capacity=1)
    with pytest.raises(DuplicateRequest):
        q.enqueue(Req("a"))


@pytest.mark.parametrize("where", ["queued", "pending"])
def test_duplicate_request_id_is_rejected(where: str) -> None:
    q = filled("a")
    if where == "pending":
        q.flush(0.0)
    before = q.stats()
    with pytest.raises(DuplicateRequest) as info:
        q.enqueue(Req("a", payload=1))
    assert info.value.request_id == "a"
    assert isinstance(info.value, UsageError)
    assert q.stats() == before
    assert q.state_of("a") == where


def test_a_resolved_request_id_may_be_enqueued_again() -> None:
    """DuplicateRequest is for ids queued or pending (its docstring); a finished id is free."""
    q = filled("a")
    q.flush(0.0)
    assert q.on_result("a", 1.0) == Req("a")
    again = Req("a", payload=2)
    q.enqueue(again)
    assert q.state_of("a") == "queued"
    assert q.flush(1.0) == [again]
    assert q.on_result("a", 2.0) is again


# -- connections and flush ---------------------------------------------------------------


def test_flush_when_disconnected_returns_nothing_and_changes_nothing() -> None:
    q = filled("a", "b", connect_at=None)
    assert not q.connected
    before = q.stats()
    assert q.flush(0.0) == []
    assert q.stats() == before
    q.on_connected(1.0)
    assert q.connected
    assert ids(q.flush(1.0)) == ["a", "b"]
    q.on_disconnected(2.0, requeue=False)
    assert not q.connected


def test_connected_while_any_connection_is_up() -> None:
    q = make_queue()
    q.on_connected(0.0, "x")
    q.on_connected(0.0, "y")
    assert q.stats().connections == 2
    q.on_disconnected(1.0, "x")
    assert q.connected
    q.on_disconnected(1.0, "y")
    assert not q.connected
    assert q.stats().connections == 0
    # Disconnecting a connection that never came up is harmless.
    assert q.on_disconnected(1.0, "never") == []


def test_flush_records_pending_with_deadline() -> None:
    q = filled("a", "b", result_timeout=30.0)
    q.flush(5.0)
    assert q.state_of("a") == "pending"
    assert q.connection_of("a") == DEFAULT_CONNECTION
    assert q.attempts_of("a") == 1
    assert q.next_deadline_at(5.0) == 35.0
    assert q.expire(34.999) == []
    assert q.pending == 2


def test_flush_stops_at_max_pending() -> None:
    q = filled(*"abc", max_pending=2)
    assert ids(q.flush(0.0)) == ["a", "b"]
    assert q.flush(0.0) == []
    assert q.on_result("a", 0.5) == Req("a")
    assert ids(q.flush(0.5)) == ["c"]


def test_flush_spreads_over_the_least_loaded_connection() -> None:
    q = filled(*"abcd", connect_at=None)
    q.on_connected(0.0, "x")
    q.on_connected(0.0, "y")
    q.flush(0.0)
    conns = [q.connection_of(i) for i in "abcd"]
    assert sorted(conns) == ["x", "x", "y", "y"]  # type: ignore[type-var]
    assert conns[0] != conns[1]  # each goes to the less loaded one


def test_flush_follows_the_rate_limit() -> None:
    q = filled(*"abcdef", rate=2.0, burst=3.0)
    assert ids(q.flush(0.0)) == ["a", "b", "c"]  # the burst
    assert q.flush(0.25) == []
    assert ids(q.flush(0.5)) == ["d"]
    assert ids(q.flush(1.5)) == ["e", "f"]


def test_default_burst_is_max_one_and_rate() -> None:
    assert make_queue(rate=0.5).burst == 1.0
    assert make_queue(rate=10.0).burst == 10.0
    assert make_queue().burst is None


def test_a_clock_going_backwards_mints_no_tokens() -> None:
    q = filled("a", "b", rate=1.0, burst=1.0)
    assert ids(q.flush(10.0)) == ["a"]
    assert q.flush(5.0) == []
    assert q.flush(10.5) == []
    assert ids(q.flush(11.0)) == ["b"]


def test_a_now_earlier_than_one_seen_counts_as_the_latest_seen() -> None:
    """Deadlines and last_flush never go back, so deadline order stays send order."""
    q = filled("a", result_timeout=10.0, flush_interval=0.0)
    q.maybe_flush(10.0)
    q.on_result("a", 10.0)
    q.enqueue(Req("b"))
    assert ids(q.maybe_flush(5.0)) == ["b"]
    assert q.last_flush == 10.0
    assert q.next_deadline_at(5.0) == 20.0
    assert q.expire(15.0) == []
    assert q.state_of("b") == "pending"


# -- throttle ----------------------------------------------------------------------------


def test_throttle_none_when_free() -> None:
    q = make_queue(max_pending=4, rate=None)
    assert q.throttle(0.0) == Throttle(
        reason=None, pending=0, max_pending=4, rate=None, retry_after=0.0
    )


def test_throttle_rate_with_time_to_next_token() -> None:
    q = filled("a", "b", rate=2.0, burst=1.0, max_pending=None)
    q.flush(0.0)
    t = q.throttle(0.0)
    assert (t.reason, t.pending, t.max_pending, t.rate) == ("rate", 1, None, 2.0)
    assert t.retry_after == pytest.approx(0.5)
    assert q.throttle(0.375).retry_after == pytest.approx(0.125)
    assert q.throttle(0.5) == Throttle(None, 1, None, 2.0, 0.0)


def test_throttle_pending_with_time_to_earliest_deadline() -> None:
    q = filled("a", "b", max_pending=2, result_timeout=10.0)
    q.flush(1.0)
    assert q.throttle(4.0) == Throttle("pending", 2, 2, None, pytest.approx(7.0))


def test_throttle_pending_takes_precedence_over_rate() -> None:
    q = filled("a", "b", max_pending=1, rate=1.0, burst=1.0, result_timeout=10.0)
    q.flush(0.0)
    t = q.throttle(0.0)
    assert t.reason == "pending"  # both hold
    assert t.retry_after == pytest.approx(10.0)  # the deadline is later than the token


def test_throttle_pending_retry_after_is_never_before_the_next_token() -> None:
    """When the deadline frees a slot before the next token, the token is the wait.

    Throttle's docstring says "for 'pending' the time to the earliest pending deadline";
    the code returns the later of that and the next token, which is the honest "seconds
    until a send may be allowed".
    """
    q = filled("a", "b", max_pending=1, rate=0.25, burst=1.0, result_timeout=1.0)
    q.flush(0.0)
    t = q.throttle(0.0)
    assert t.reason == "pending"
    assert t.retry_after == pytest.approx(4.0)


def test_throttle_is_frozen() -> None:
    t = make_queue().throttle(0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.reason = "rate"  # type: ignore[misc]


# -- replies -----------------------------------------------------------------------------


def test_on_result_releases_the_slot_and_returns_the_request() -> None:
    a = Req("a", payload=7)
    q = make_queue(max_pending=1)
    q.enqueue(a)
    q.enqueue(Req("b"))
    q.on_connected(0.0)
    q.flush(0.0)
    got = q.on_result("a", 1.0)
    assert got is a
    assert q.pending == 0
    assert q.state_of("a") is None
    assert ids(q.flush(1.0)) == ["b"]
    assert q.stats().results == 1


def test_on_result_with_attempts_also_says_how_many_attempts_it_took() -> None:
    q = filled("a", "b", result_timeout=10.0)
    q.flush(0.0)
    q.expire(10.0)  # both back in the queue, one attempt used
    q.flush(10.0)
    assert q.on_result_with_attempts("a", 11.0) == (Req("a"), 2)
    assert q.on_result_with_attempts("a", 11.0) is None  # a duplicate, counted
    assert q.on_result_with_attempts("nope", 11.0) is None
    assert q.on_result("b", 11.0) == Req("b")
    s = q.stats()
    assert (s.results, s.duplicate_results, s.unknown_results, s.pending) == (2, 1, 1, 0)


def test_on_error_releases_the_slot_and_counts_a_failure() -> None:
    q = filled("a")
    q.flush(0.0)
    assert q.on_error("a", 1.0) == Req("a")
    s = q.stats()
    assert (s.pending, s.errors, s.failed, s.results) == (0, 1, 1, 0)


def test_unknown_and_duplicate_replies_are_counted_never_raise() -> None:
    q = filled("a", "b")
    q.flush(0.0)
    assert q.on_result("nope", 1.0) is None
    assert q.on_error("nope-either", 1.0) is None
    assert q.on_result("a", 1.0) == Req("a")
    assert q.on_result("a", 1.0) is None
    assert q.on_error("a", 1.0) is None
    assert q.on_error("b", 1.0) == Req("b")
    assert q.on_result("b", 1.0) is None
    s = q.stats()
    assert (s.unknown_results, s.duplicate_results) == (2, 3)
    assert (s.results, s.errors, s.failed, s.pending) == (1, 1, 1, 0)


# -- expire ------------------------------------------------------------------------------


def test_expire_requeues_to_the_front_in_order() -> None:
    q = filled("a", "b", result_timeout=10.0, max_pending=2)
    q.flush(0.0)  # a, b pending until 10
    for r in reqs("c", "d"):
        q.enqueue(r)
    assert q.expire(9.999) == []
    assert q.expire(10.0) == []  # "at or before now"
    assert (q.queued, q.pending) == (4, 0)
    assert (q.attempts_of("a"), q.attempts_of("b")) == (1, 1)
    assert q.stats().retries == 2
    assert ids(q.flush(10.0)) == ["a", "b"]
    assert q.attempts_of("a") == 2


def test_expire_oldest_first_across_flushes() -> None:
    q = filled("a", "b", "c", result_timeout=10.0, max_pending=None)
    q.flush(0.0)
    q.on_result("b", 1.0)
    q.enqueue(Req("d"))
    q.flush(2.0)  # d, deadline 12
    q.enqueue(Req("e"))
    assert q.expire(20.0) == []
    assert queue_order(q, 20.0) == ["a", "c", "d", "e"]


def test_expire_fails_after_max_attempts_with_reason_timeout() -> None:
    q = filled("a", "b", result_timeout=5.0, max_attempts=2, retry_backoff=1.0)
    q.flush(0.0)
    assert q.expire(5.0) == []
    q.flush(6.0)
    assert q.on_result("b", 7.0) == Req("b")
    failed = q.expire(11.0)
    assert failed == [FailedRequest(Req("a"), "timeout", 2)]
    assert q.state_of("a") is None
    s = q.stats()
    assert (s.failed, s.retries, s.results, s.queued, s.pending) == (1, 2, 1, 0, 0)
    assert q.on_result("a", 12.0) is None
    assert q.stats().duplicate_results == 1


def test_retry_backoff_lengthens_each_attempts_deadline() -> None:
    q = filled("a", result_timeout=5.0, retry_backoff=2.0, max_attempts=3)
    q.flush(0.0)
    assert q.next_deadline_at(0.0) == 5.0
    q.expire(5.0)
    q.flush(5.0)  # attempt 2: waits 10
    assert q.next_deadline_at(5.0) == 15.0
    assert q.expire(14.999) == []
    assert q.expire(15.0) == []
    q.flush(15.0)  # attempt 3: waits 20
    assert q.next_deadline_at(15.0) == 35.0
    assert q.expire(34.999) == []
    assert q.expire(35.0) == [FailedRequest(Req("a"), "timeout", 3)]


def test_send_failed_does_not_lengthen_the_next_deadline() -> None:
    q = filled("a", result_timeout=5.0, retry_backoff=2.0)
    q.flush(0.0)
    q.send_failed(["a"], 1.0)
    q.flush(2.0)  # still attempt 1
    assert q.next_deadline_at(2.0) == 7.0


def test_expire_puts_back_in_deadline_order() -> None:
    """With backoff, a retry sent earlier can be due after a first attempt sent later."""
    q = filled("a", result_timeout=5.0, retry_backoff=2.0, max_pending=None)
    q.flush(0.0)
    q.expire(5.0)
    q.flush(5.0)  # a, attempt 2, due at 15
    q.enqueue(Req("b"))
    q.flush(6.0)  # b, attempt 1, due at 11
    q.enqueue(Req("c"))
    assert q.expire(20.0) == []
    assert queue_order(q, 20.0) == ["b", "a", "c"]


def test_max_attempts_one_fails_at_first_deadline() -> None:
    q = filled("a", result_timeout=1.0, max_attempts=1)
    q.flush(0.0)
    assert q.expire(1.0) == [FailedRequest(Req("a"), "timeout", 1)]


def test_late_result_for_a_requeued_request_resolves_it() -> None:
    q = filled("a", "b", result_timeout=5.0)
    q.flush(0.0)
    q.expire(5.0)  # both back in the queue
    assert q.state_of("a") == "queued"
    assert q.on_result("a", 5.5) == Req("a")
    assert q.state_of("a") is None
    assert q.queued == 1
    assert ids(q.flush(6.0)) == ["b"]  # a is not sent again
    s = q.stats()
    assert (s.results, s.retries, s.sent) == (1, 2, 3)
    assert s.enqueued == s.queued + s.pending + s.results + s.failed


def test_late_error_for_a_requeued_request_decides_nothing() -> None:
    """Issue 10 section 4: the error answers the attempt that timed out, not the next."""
    q = filled("a", result_timeout=5.0)
    q.flush(0.0)
    q.expire(5.0)
    assert q.on_error("a", 5.5) is None
    assert q.on_error("a", 5.5, connection=DEFAULT_CONNECTION) is None
    assert ids(q.flush(6.0)) == ["a"]  # re-sent: the late error failed nothing
    s = q.stats()
    assert (s.failed, s.errors, s.late_replies, s.pending) == (0, 0, 2, 1)
    assert s.enqueued == s.queued + s.pending + s.results + s.failed


# -- each reply decides only the attempt it answers (issue 10 section 4) -----------------


def _moved_from_x_to_y(**settings: Any) -> BacktestQueue[Req]:
    """``a`` was handed to ``x``, missed its deadline, and is now pending on ``y``."""
    q = filled("a", connect_at=None, result_timeout=5.0, **settings)
    q.on_connected(0.0, "x")
    assert ids(q.flush(0.0)) == ["a"]
    q.on_connected(1.0, "y")
    q.expire(5.0)
    q.on_disconnected(5.0, "x", requeue=False)  # so the re-send goes to y
    assert ids(q.flush(5.0)) == ["a"]
    assert q.connection_of("a") == "y"
    return q


@pytest.mark.parametrize("reply", ["error", "unavailable"])
def test_a_late_reply_from_another_connection_decides_nothing(reply: str) -> None:
    q = _moved_from_x_to_y(max_attempts=2)
    if reply == "error":
        assert q.on_error("a", 6.0, connection="x") is None
    else:
        assert q.retry("a", 6.0, connection="x") is None  # would be its last attempt
    assert (q.state_of("a"), q.connection_of("a"), q.attempts_of("a")) == ("pending", "y", 2)
    s = q.stats()
    assert (s.late_replies, s.errors, s.failed, s.retries) == (1, 0, 0, 1)
    # The current attempt's own reply still decides it.
    assert q.on_result("a", 7.0, connection="y") == Req("a")
    s = q.stats()
    assert (s.results, s.late_results) == (1, 0)
    assert s.enqueued == s.queued + s.pending + s.results + s.failed


@pytest.mark.parametrize("connection", ["y", None])
def test_a_reply_to_the_current_attempt_decides_it(connection: str | None) -> None:
    q = _moved_from_x_to_y(max_attempts=2)
    assert q.retry("a", 6.0, connection=connection) == FailedRequest(Req("a"), "unavailable", 2)
    q2 = _moved_from_x_to_y()
    assert q2.on_error("a", 6.0, connection=connection) == Req("a")
    assert q2.stats().late_replies == 0


def test_a_late_result_from_another_connection_wins_and_is_counted() -> None:
    q = _moved_from_x_to_y()
    assert q.on_result("a", 6.0, connection="x") == Req("a")
    assert q.state_of("a") is None
    assert q.pending == 0
    assert q.on_result("a", 7.0, connection="y") is None  # the second one: a duplicate
    s = q.stats()
    assert (s.results, s.late_results, s.duplicate_results) == (1, 1, 1)


def test_a_late_result_resolves_a_request_queued_for_a_re_send() -> None:
    q = filled("a", result_timeout=5.0)
    q.flush(0.0)
    q.expire(5.0)
    assert q.on_result("a", 5.5, connection=DEFAULT_CONNECTION) == Req("a")
    assert (q.queued, q.flush(6.0)) == (0, [])
    s = q.stats()
    assert (s.results, s.late_results, s.retries) == (1, 1, 1)


def test_two_attempts_on_the_same_connection_cannot_be_told_apart() -> None:
    """The documented limit: no attempt field on the wire, so a late error from the first
    attempt on a connection decides the second attempt on that same connection."""
    q = filled("a", result_timeout=5.0)
    q.flush(0.0)
    q.expire(5.0)
    q.flush(5.0)  # attempt 2, same connection
    assert q.on_error("a", 6.0, connection=DEFAULT_CONNECTION) == Req("a")
    assert q.stats().late_replies == 0


# -- retry (the service said "unavailable") ----------------------------------------------


def test_retry_puts_a_pending_request_back_at_the_front_counting_the_attempt() -> None:
    q = filled(
        "a", "b", "c", max_pending=2, max_attempts=2, result_timeout=5.0, flush_interval=100.0
    )
    q.maybe_flush(0.0)  # a b
    assert q.retry("b", 1.0) is None
    assert (q.state_of("b"), q.attempts_of("b")) == ("queued", 1)
    assert q.stats().retries == 1
    assert ids(q.flush(1.0)) == ["b"]  # front, before c
    assert q.next_deadline_at(1.0) == 5.0  # a's; b's second attempt waits 10
    assert q.retry("b", 2.0) == FailedRequest(Req("b"), "unavailable", 2)
    assert q.state_of("b") is None
    s = q.stats()
    assert (s.failed, s.pending, s.queued) == (1, 1, 1)
    assert s.enqueued == s.queued + s.pending + s.results + s.failed


def test_retry_of_ids_not_pending() -> None:
    q = filled("a", "b")
    q.flush(0.0)
    q.on_result("a", 0.0)
    q.enqueue(Req("c"))
    assert q.retry("nope", 1.0) is None
    assert q.retry("a", 1.0) is None
    assert q.retry("c", 1.0) is None  # queued: a late reply, ignored
    s = q.stats()
    assert (s.unknown_results, s.duplicate_results, s.retries, s.late_replies) == (1, 1, 0, 1)
    assert (q.state_of("b"), q.state_of("c")) == ("pending", "queued")


# -- disconnects -------------------------------------------------------------------------


def _two_connections() -> BacktestQueue[Req]:
    q = filled(*"abcd", connect_at=None, max_attempts=2)
    q.on_connected(0.0, "x")
    q.on_connected(0.0, "y")
    q.flush(0.0)
    q.enqueue(Req("e"))
    return q


def test_on_disconnected_requeues_only_that_connections_pending() -> None:
    q = _two_connections()
    on_x = [i for i in "abcd" if q.connection_of(i) == "x"]
    on_y = [i for i in "abcd" if q.connection_of(i) == "y"]
    assert q.on_disconnected(1.0, "x") == []
    assert q.connected
    for i in on_x:
        assert q.state_of(i) == "queued"
        assert q.attempts_of(i) == 1
    for i in on_y:
        assert q.connection_of(i) == "y"
    assert (q.queued, q.pending) == (3, 2)
    assert q.stats().retries == 2
    # Front of the queue, in send order; they go to the connection still up.
    assert ids(q.flush(1.0)) == [*on_x, "e"]
    assert {q.connection_of(i) for i in on_x} == {"y"}


def test_on_disconnected_fails_after_max_attempts_with_reason_disconnected() -> None:
    q = _two_connections()
    q.on_disconnected(1.0, "x")
    q.flush(2.0)  # everything on y now: on_x at attempt 2
    on_y_first = [i for i in "abcd" if q.attempts_of(i) == 1]
    on_x_first = [i for i in "abcd" if q.attempts_of(i) == 2]
    failed = q.on_disconnected(3.0, "y")
    assert failed == [FailedRequest(Req(i), "disconnected", 2) for i in on_x_first]
    assert not q.connected
    # The rest (attempt 1) come back, in front of e.
    q.on_connected(4.0, "x")
    assert ids(q.flush(4.0)) == [*on_y_first, "e"]


def test_on_disconnected_without_requeue_leaves_them_to_their_deadlines() -> None:
    q = filled("a", "b", result_timeout=5.0)
    q.flush(0.0)
    assert q.on_disconnected(1.0, requeue=False) == []
    assert (q.pending, q.queued) == (2, 0)
    assert q.connection_of("a") == DEFAULT_CONNECTION
    assert q.expire(5.0) == []
    assert q.queued == 2


# -- send_failed -------------------------------------------------------------------------


def test_send_failed_puts_back_to_the_front_without_counting_an_attempt() -> None:
    q = filled("a", "b", "c", max_attempts=1, result_timeout=5.0)
    q.flush(0.0)
    q.enqueue(Req("d"))
    q.send_failed(["c", "b", "nope", "d"], 0.5)  # unknown and queued ids are ignored
    s = q.stats()
    assert (s.pending, s.queued, s.sent, s.send_failures) == (1, 3, 1, 2)
    assert q.attempts_of("b") == 0
    assert ids(q.flush(1.0)) == ["c", "b", "d"]  # given order, at the front
    # With max_attempts=1, one real attempt is still allowed: it fails at its deadline.
    assert failed_ids(q.expire(5.0)) == ["a"]
    failed = q.expire(6.0)
    assert failed_ids(failed) == ["c", "b", "d"]
    assert [f.attempts for f in failed] == [1, 1, 1]
    assert q.stats().sent == 4


def test_send_failed_ignores_an_id_given_twice() -> None:
    q = filled("a", "b")
    q.flush(0.0)
    q.send_failed(["a", "a"], 0.0)
    assert (q.queued, q.pending) == (1, 1)
    assert q.state_of("a") == "queued"


def test_send_failed_from_a_later_flush_keeps_deadlines_straight() -> None:
    q = filled("a", "b", result_timeout=5.0, max_attempts=1)
    q.flush(0.0)
    q.send_failed(["b"], 1.0)
    q.flush(2.0)  # b again, deadline 7
    assert failed_ids(q.expire(5.0)) == ["a"]
    assert q.state_of("b") == "pending"
    assert failed_ids(q.expire(7.0)) == ["b"]


@pytest.mark.parametrize(
    ("put_back", "retry_backoff"),
    [("send_failed", 2.0), ("send_failed", 1.0), ("disconnect", 1.0), ("retry", 1.0)],
)
def test_resend_at_the_same_instant_then_expire(put_back: str, retry_backoff: float) -> None:
    q = filled("a", result_timeout=10.0, retry_backoff=retry_backoff)
    assert ids(q.flush(0.0)) == ["a"]
    if put_back == "send_failed":
        q.send_failed(["a"], 0.0)
    elif put_back == "retry":
        assert q.retry("a", 0.0) is None
    else:
        q.on_disconnected(0.0)
        q.on_connected(0.0)
    assert ids(q.flush(0.0)) == ["a"]
    assert q.expire(10.0 * retry_backoff) == []
    assert q.state_of("a") == "queued"


# -- drain -------------------------------------------------------------------------------


def test_drain_returns_queued_fifo_then_pending_and_counts_them_failed() -> None:
    q = filled("a", "b", max_pending=2)
    q.flush(0.0)
    for r in reqs("c", "d"):
        q.enqueue(r)
    out = ids(q.drain())
    assert out[:2] == ["c", "d"]
    assert sorted(out[2:]) == ["a", "b"]
    s = q.stats()
    assert (s.queued, s.pending, s.failed) == (0, 0, 4)
    assert q.next_deadline_at(0.0) == math.inf
    assert q.expire(1e9) == []
    assert q.on_result("a", 1.0) is None
    assert q.stats().duplicate_results == 1
    assert q.drain() == []


def test_drain_skips_requests_already_resolved_while_requeued() -> None:
    q = filled("a", "b", result_timeout=1.0)
    q.flush(0.0)
    q.expire(1.0)
    q.on_result("a", 1.0)
    assert ids(q.drain()) == ["b"]
    assert q.stats().failed == 1


# -- next_deadline_at --------------------------------------------------------------------


def test_next_deadline_at_nothing_to_do_is_inf() -> None:
    q = make_queue()
    assert q.next_deadline_at(0.0) == math.inf
    q.on_connected(0.0)
    assert q.next_deadline_at(0.0) == math.inf


def test_next_deadline_at_queued_before_any_maybe_flush_is_due_now() -> None:
    q = filled("a", connect_at=None)
    assert q.next_deadline_at(3.0) <= 3.0


def test_next_deadline_at_is_the_next_interval_tick() -> None:
    q = filled("a", "b", connect_at=None, flush_interval=2.0)
    q.maybe_flush(1.0)  # disconnected: nothing sent, but the tick moved
    assert q.next_deadline_at(1.5) == 3.0


def test_next_deadline_at_is_the_earliest_pending_deadline() -> None:
    q = filled("a", result_timeout=10.0)
    q.flush(1.0)
    q.enqueue(Req("b"))
    q.flush(2.0)
    assert q.next_deadline_at(3.0) == 11.0
    q.on_result("a", 4.0)
    assert q.next_deadline_at(4.0) == 12.0


def test_next_deadline_at_is_the_next_token_when_only_the_rate_holds_back() -> None:
    q = filled("a", "b", rate=4.0, burst=1.0, flush_interval=100.0, result_timeout=60.0)
    assert ids(q.maybe_flush(0.0)) == ["a"]
    assert q.next_deadline_at(0.0) == pytest.approx(0.25)
    # Disconnected: no token wake-up (nothing could be sent), only the tick.
    q.on_disconnected(0.0, requeue=False)
    assert q.next_deadline_at(0.0) == 60.0


def test_next_deadline_at_ignores_the_token_when_pending_is_full() -> None:
    q = filled("a", "b", rate=4.0, burst=1.0, max_pending=1, flush_interval=100.0)
    q.maybe_flush(0.0)
    assert q.next_deadline_at(0.0) == 60.0


def test_calling_in_at_next_deadline_at_makes_progress_under_rate_limit() -> None:
    start = 55039.62724604522  # a plausible time.monotonic() reading (15 h of uptime)
    q = filled("a", "b", start=start, connect_at=start, rate=0.5, burst=1.0)
    q.flush_interval = 1000.0
    assert ids(q.maybe_flush(start)) == ["a"]
    now = start + 0.16611573
    at = q.next_deadline_at(now)
    assert at == pytest.approx(start + 2.0)  # the next token, not the tick
    sent = q.flush(at)
    assert ids(sent) == ["b"] or q.next_deadline_at(at) > at


# -- stats and repr ----------------------------------------------------------------------


def test_repr() -> None:
    q = make_queue(max_pending=8)
    assert repr(q) == "<BacktestQueue queued=0 pending=0/8 disconnected>"
    for r in reqs(*"abcde"):
        q.enqueue(r)
    q.on_connected(0.0)
    q.flush(0.0)
    q.on_result("a", 0.0)
    q.on_result("b", 0.0)
    q.on_result("c", 0.0)
    for r in reqs("f", "g", "h"):
        q.enqueue(r)
    assert repr(q) == "<BacktestQueue queued=3 pending=2/8 connected>"
    assert repr(make_queue(max_pending=None)) == (
        "<BacktestQueue queued=0 pending=0/inf disconnected>"
    )


def test_stats_snapshot() -> None:
    q = filled("a", "b", "c", "d", max_pending=3, capacity=10, result_timeout=5.0)
    q.maybe_flush(0.0)  # a b c
    q.send_failed(["c"], 0.5)
    q.on_result("a", 1.0)
    q.on_error("b", 1.0)
    q.on_result("zzz", 1.0)
    q.on_result("a", 1.0)
    q.flush(2.0)  # c d
    q.expire(7.0)  # c d back
    s = q.stats()
    assert s == QueueStats(
        queued=2,
        pending=0,
        max_pending=3,
        capacity=10,
        connected=True,
        connections=1,
        enqueued=4,
        sent=4,
        send_failures=1,
        results=1,
        errors=1,
        retries=2,
        failed=1,
        unknown_results=1,
        duplicate_results=1,
        late_replies=0,
        late_results=0,
        flushes=2,
        last_flush=0.0,
    )
    assert s.enqueued == s.queued + s.pending + s.results + s.failed
    assert q.statistics() == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.queued = 0  # type: ignore[misc]


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"capacity": 0}, "capacity"),
        ({"max_pending": 0}, "max_pending"),
        ({"flush_interval": -1.0}, "flush_interval"),
        ({"flush_interval": math.nan}, "flush_interval"),
        ({"flush_interval": math.inf}, "flush_interval"),
        ({"result_timeout": 0.0}, "result_timeout"),
        ({"result_timeout": -1.0}, "result_timeout"),
        ({"result_timeout": math.nan}, "result_timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_backoff": 0.5}, "retry_backoff"),
        ({"retry_backoff": math.nan}, "retry_backoff"),
        ({"retry_backoff": math.inf}, "retry_backoff"),
        ({"burst": 2.0}, "burst"),
        ({"rate": 0.0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": 1.0, "burst": 0.5}, "burst"),
    ],
)
def test_constructor_validation_names_the_setting(settings: dict[str, Any], setting: str) -> None:
    with pytest.raises(UsageError, match=setting):
        make_queue(**settings)


def test_constructor_settings_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        BacktestQueue(10)  # type: ignore[misc]


def test_defaults() -> None:
    q: BacktestQueue[Req] = BacktestQueue()
    assert (q.capacity, q.max_pending, q.rate, q.burst) == (5000, 64, None, None)
    assert (q.flush_interval, q.result_timeout, q.max_attempts) == (1.0, 60.0, 3)
    assert q.retry_backoff == 2.0


# -- the injected clock ------------------------------------------------------------------


def test_the_injected_clock_is_read_when_now_is_none() -> None:
    clock = [100.0]
    q: BacktestQueue[Req] = BacktestQueue(
        clock=lambda: clock[0], flush_interval=5.0, result_timeout=10.0, rate=1.0, burst=1.0
    )
    q.enqueue(Req("a"))
    q.enqueue(Req("b"))
    q.on_connected()
    assert ids(q.maybe_flush()) == ["a"]
    assert q.last_flush == 100.0
    assert q.next_deadline_at() == pytest.approx(101.0)  # next token
    assert q.throttle().retry_after == pytest.approx(1.0)
    clock[0] = 101.0
    assert q.maybe_flush() == []  # interval not elapsed on the injected clock
    assert ids(q.flush()) == ["b"]
    clock[0] = 110.0
    assert q.expire() == []  # a's deadline is 110
    assert q.state_of("a") == "queued"
    assert q.state_of("b") == "pending"
    clock[0] = 111.0
    q.on_disconnected()
    assert not q.connected
    assert q.state_of("b") == "queued"


def test_an_explicit_now_does_not_read_the_clock() -> None:
    reads = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    q: BacktestQueue[Req] = BacktestQueue(clock=clock)
    reads.clear()
    q.enqueue(Req("a"))
    q.on_connected(1.0)
    q.maybe_flush(1.0)
    q.throttle(1.0)
    q.next_deadline_at(1.0)
    q.on_result("a", 2.0)
    q.expire(3.0)
    q.send_failed([], 3.0)
    q.on_disconnected(4.0)
    assert reads == []


# -- no I/O ------------------------------------------------------------------------------


IO_MODULES = ("anyio", "trio", "zmq", "zmq_anyio", "asyncio")


@pytest.mark.parametrize(
    "statement",
    [
        "import backtest_queue.policy",
        "import backtest_queue.ratelimit",
        "from backtest_queue import BacktestQueue, FailedRequest, QueueStats, Throttle",
    ],
)
def test_policy_imports_no_async_or_zmq_library(statement: str) -> None:
    """In a fresh interpreter: the sans-IO core loads neither anyio/trio nor zmq."""
    code = textwrap.dedent(
        f"""
        import sys
        {statement}
        print(",".join(sorted(m for m in {IO_MODULES!r} if m in sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""


def test_the_check_above_can_see_an_io_import() -> None:
    """The fresh-interpreter probe does detect anyio when something imports it."""
    code = f"import sys, anyio; print([m for m in {IO_MODULES!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "anyio" in out.stdout


def test_package_reexports_the_policy_types() -> None:
    import backtest_queue
    from backtest_queue import policy

    assert backtest_queue.BacktestQueue is policy.BacktestQueue
    assert backtest_queue.FailedRequest is policy.FailedRequest
    assert backtest_queue.QueueStats is policy.QueueStats
    assert backtest_queue.Throttle is policy.Throttle
