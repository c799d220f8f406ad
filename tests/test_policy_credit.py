"""Per-connection credit in the policy core (issue 13, section 2), case by case.

The hypothesis state machine (``tests/test_policy_stateful.py``, ``TestCredited``) checks
the rules over arbitrary sequences; these are the named situations, readable on failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from backtest_queue import UsageError
from backtest_queue.policy import BacktestQueue


@dataclass(frozen=True)
class Req:
    request_id: str


def queue_of(n: int, **settings: Any) -> BacktestQueue[Req]:
    q: BacktestQueue[Req] = BacktestQueue(clock=lambda: 0.0, **settings)
    for i in range(n):
        q.enqueue(Req(f"r{i}"))
    return q


def placed(q: BacktestQueue[Req], out: list[Req]) -> list[str | None]:
    return [q.connection_of(r.request_id) for r in out]


def test_no_credit_is_todays_behaviour() -> None:
    """Without credits the least loaded connection gets each request; max_pending caps."""
    q = queue_of(10, max_pending=6)
    q.on_connected(0.0, "a")
    q.on_connected(0.0, "b")
    out = q.flush(0.0)
    assert len(out) == 6
    assert (q.pending_on("a"), q.pending_on("b")) == (3, 3)
    assert q.credit_of("a") is None


def test_each_connection_is_kept_within_its_credit() -> None:
    q = queue_of(20, max_pending=64)
    q.set_credit("one", 2)
    q.set_credit("three", 6)
    q.on_connected(0.0, "one")
    q.on_connected(0.0, "three")
    out = q.flush(0.0)
    assert len(out) == 8  # 2 + 6: the credits, not max_pending, hold the rest back
    assert (q.pending_on("one"), q.pending_on("three")) == (2, 6)
    assert q.throttle(0.0).reason == "pending"
    # The first requests go where the most credit is free (three: 6 free, then 5, ...).
    assert placed(q, out)[:4] == ["three", "three", "three", "three"]
    assert q.flush(0.0) == []  # all full: the rest stays queued
    assert q.queued == 12
    # A result frees one slot on "one": the next request goes there, and only one.
    q.on_result(out[placed(q, out).index("one")].request_id, 1.0)
    again = q.flush(1.0)
    assert placed(q, again) == ["one"]


def test_the_global_cap_still_applies() -> None:
    q = queue_of(20, max_pending=3)
    q.set_credit("a", 10)
    q.on_connected(0.0, "a")
    assert len(q.flush(0.0)) == 3


def test_a_credit_lowered_below_in_flight_takes_nothing_back() -> None:
    q = queue_of(10)
    q.set_credit("a", 4)
    q.on_connected(0.0, "a")
    out = q.flush(0.0)
    assert len(out) == 4
    q.set_credit("a", 1)
    assert q.pending_on("a") == 4  # still pending there, not re-routed
    assert all(q.state_of(r.request_id) == "pending" for r in out)
    assert q.flush(0.0) == []
    for r in out[:3]:  # down to 1 in flight: still at the credit
        q.on_result(r.request_id, 1.0)
        assert q.flush(1.0) == []
    q.on_result(out[3].request_id, 1.0)
    assert len(q.flush(1.0)) == 1  # below the credit again: one more


def test_a_full_connection_gets_nothing_while_another_has_room() -> None:
    q = queue_of(10)
    q.set_credit("slow", 1)
    q.on_connected(0.0, "slow")
    q.on_connected(0.0, "fast")  # no credit: unlimited free credit
    out = q.flush(0.0, limit=5)
    assert placed(q, out) == ["fast"] * 5  # unlimited beats a credit of 1


def test_credit_is_kept_across_a_reconnect_until_set_again() -> None:
    q = queue_of(10)
    q.set_credit("a", 2)
    q.on_connected(0.0, "a")
    q.flush(0.0)
    q.on_disconnected(1.0, "a")  # both re-queued
    assert q.pending_on("a") == 0
    assert q.credit_of("a") == 2
    q.on_connected(2.0, "a")
    assert len(q.flush(2.0)) == 2
    q.set_credit("a", None)
    assert len(q.flush(2.0)) == 8


def test_no_token_is_spent_when_no_connection_has_credit() -> None:
    """A flush stopped by credit keeps its token, and the shell is not woken for one."""
    q = queue_of(5, rate=1.0, burst=3.0, flush_interval=100.0, result_timeout=60.0)
    q.set_credit("a", 1)
    q.on_connected(0.0, "a")
    assert len(q.maybe_flush(0.0)) == 1
    assert q.flush(0.0) == []
    # Tokens are there, but no connection can take one: the shell wakes at the
    # pending deadline (60 s), not at once for a token it cannot use.
    assert q.next_deadline_at(0.0) == 60.0
    q.set_credit("a", 3)
    assert len(q.flush(0.0)) == 2  # the two tokens left were not spent meanwhile


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2", math.inf])
def test_a_bad_credit_is_refused_and_changes_nothing(bad: object) -> None:
    q = queue_of(0)
    q.set_credit("a", 3)
    with pytest.raises(UsageError, match="credit"):
        q.set_credit("a", bad)  # type: ignore[arg-type]
    assert q.credit_of("a") == 3
