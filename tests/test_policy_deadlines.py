"""Every deadline the policy core hands out is one at which its own check passes.

Issue 16: under trio's ``MockClock(autojump_threshold=0)`` time only moves when every task
sleeps. The flusher sleeps until :meth:`BacktestQueue.next_deadline_at`; if at that
instant the check that acts on the deadline fails by a rounding error (``now -
last_flush < flush_interval``, ``now + seconds_until_token`` a hair early), it wakes
again at once, forever, and virtual time never moves. These tests play the flusher with
plain numbers over arbitrary float settings and clock readings and prove it never wakes
twice at one instant without progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backtest_queue.policy import BacktestQueue
from backtest_queue.ratelimit import TokenBucket


@dataclass(frozen=True)
class Req:
    request_id: str


# Clock readings: zero, plausible monotonic readings (days of uptime) and large ones.
clocks = st.one_of(
    st.just(0.0),
    st.sampled_from([55039.62724604522, 1.4, 2.0999999999999996, 1e6 + 0.1]),
    st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False),
)
# Intervals: the issue's, thirds and tenths, and values near the clock's resolution.
intervals = st.one_of(
    st.sampled_from([0.0, 0.1, 0.2, 0.3, 1 / 3, 0.7, 1.1, 5e-324, 1e-300, 1e-12]),
    st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False),
)
timeouts = st.one_of(
    st.sampled_from([0.1, 0.7, 1 / 3, 1e-12, 5e-324]),
    st.floats(min_value=5e-324, max_value=1e3, allow_nan=False, allow_infinity=False),
)
rates = st.none() | st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
max_wakes = 300


@dataclass
class Flusher:
    """The dispatcher's flusher, without I/O: sleep to the deadline, then act on it."""

    q: BacktestQueue[Req]
    now: float
    wakes: int = 0
    sent_total: int = 0

    def wake(self) -> tuple[bool, list[Req]]:
        """Sleep until the next deadline and do what the flusher does there.

        Returns:
            Whether it made progress (sent or expired something), and what it sent.
        """
        at = self.q.next_deadline_at(self.now)
        assert at == at, "never NaN"
        self.now = max(self.now, at)  # sleeping to a past deadline returns at once
        self.wakes += 1
        before = self.q.stats()
        failed = self.q.expire(self.now)
        sent = self.q.maybe_flush(self.now) or self.q.flush(self.now)
        after = self.q.stats()
        self.sent_total += len(sent)
        progress = bool(failed or sent) or after.retries != before.retries
        return progress, sent


def play(flusher: Flusher, answer: list[bool]) -> None:
    """Wake the flusher until nothing is left to do or ``max_wakes``; at every wake that
    made no progress, the next deadline must be strictly later than now."""
    q = flusher.q
    at_instant = 0
    limit = 2 + 2 * (q.queued + q.pending) * q.max_attempts
    for i in range(max_wakes):
        if q.next_deadline_at(flusher.now) == math.inf:
            return
        before = flusher.now
        progress, sent = flusher.wake()
        at_instant = at_instant + 1 if flusher.now == before else 1
        assert at_instant <= limit, f"{at_instant} wakes at t={flusher.now!r}"
        if not progress:
            nxt = q.next_deadline_at(flusher.now)
            assert nxt > flusher.now, (
                f"woke at {flusher.now!r} for nothing and would wake again at {nxt!r}"
            )
        if sent and answer[i % len(answer)]:
            q.on_result(sent[0].request_id, flusher.now)


@settings(max_examples=400, deadline=None)
@given(
    start=clocks,
    flush_interval=intervals,
    result_timeout=timeouts,
    retry_backoff=st.sampled_from([1.0, 1.5, 2.0]) | st.floats(1.0, 1e3),
    max_attempts=st.integers(1, 4),
    rate=rates,
    burst=st.sampled_from([1.0, 1.5, 3.0]),
    max_pending=st.none() | st.integers(1, 3),
    requests=st.integers(0, 6),
    connected=st.booleans(),
    answer=st.lists(st.booleans(), min_size=1, max_size=5),
)
@example(  # the issue's script: max_pending=1, two requests, a silent service
    start=0.0, flush_interval=0.7, result_timeout=60.0, retry_backoff=2.0, max_attempts=3,
    rate=None, burst=1.0, max_pending=1, requests=2, connected=True, answer=[False],
)  # fmt: skip
@example(
    start=0.0, flush_interval=0.1, result_timeout=60.0, retry_backoff=2.0, max_attempts=3,
    rate=None, burst=1.0, max_pending=1, requests=2, connected=False, answer=[False],
)  # fmt: skip
@example(  # a token rate whose period does not add up in binary
    start=55039.62724604522, flush_interval=1000.0, result_timeout=60.0, retry_backoff=2.0,
    max_attempts=3, rate=3.0, burst=1.0, max_pending=None, requests=6, connected=True,
    answer=[True],
)  # fmt: skip
@example(  # a zero interval: maybe_flush flushes every time, but is no tick at "now"
    start=1.0, flush_interval=0.0, result_timeout=1.0, retry_backoff=1.0, max_attempts=1,
    rate=None, burst=1.0, max_pending=1, requests=3, connected=False, answer=[False],
)  # fmt: skip
def test_a_flusher_sleeping_to_each_deadline_never_wakes_twice_for_nothing(
    start: float,
    flush_interval: float,
    result_timeout: float,
    retry_backoff: float,
    max_attempts: int,
    rate: float | None,
    burst: float,
    max_pending: int | None,
    requests: int,
    connected: bool,
    answer: list[bool],
) -> None:
    q: BacktestQueue[Req] = BacktestQueue(
        clock=lambda: start,
        flush_interval=flush_interval,
        result_timeout=result_timeout,
        retry_backoff=retry_backoff,
        max_attempts=max_attempts,
        rate=rate,
        burst=None if rate is None else max(burst, 1.0),
        max_pending=max_pending,
    )
    for i in range(requests):
        q.enqueue(Req(f"r{i}"))
    if connected:
        q.on_connected(start)
    play(Flusher(q, start), answer)


def test_the_issues_script_reaches_three_seconds_in_a_few_wakes() -> None:
    """max_pending=1, flush_interval=0.7, two requests, silent: 2.1 - 1.4 < 0.7 in floats."""
    q: BacktestQueue[Req] = BacktestQueue(clock=lambda: 0.0, max_pending=1, flush_interval=0.7)
    q.enqueue(Req("a"))
    q.enqueue(Req("b"))
    q.on_connected(0.0)
    flusher = Flusher(q, 0.0)
    while flusher.now < 3.0:
        flusher.wake()
        assert flusher.wakes < 20, f"stuck at t={flusher.now!r}"
    assert q.last_flush == flusher.now == pytest.approx(3.5)  # ticks 0, 0.7, ..., 3.5
    assert flusher.wakes == 6
    assert (q.pending, q.queued) == (1, 1)


def test_a_tick_below_the_clocks_resolution_still_moves_time() -> None:
    """At t = 1e9 an interval of 1e-12 is lost in rounding: the tick is the next float."""
    t = 1e9
    q: BacktestQueue[Req] = BacktestQueue(clock=lambda: t, flush_interval=1e-12)
    q.enqueue(Req("a"))
    assert q.maybe_flush(t) == []  # disconnected: the tick runs, sends nothing
    assert q.next_deadline_at(t) == math.nextafter(t, math.inf)
    assert q.maybe_flush(t) == []
    assert q.last_flush == t  # not due again at the same instant


def test_a_zero_interval_flushes_every_call_but_names_no_tick_at_now() -> None:
    q: BacktestQueue[Req] = BacktestQueue(clock=lambda: 0.0, flush_interval=0.0, max_pending=1)
    for rid in "abc":
        q.enqueue(Req(rid))
    assert q.next_deadline_at(5.0) == -math.inf  # never ran: due now
    q.on_connected(5.0)
    assert [r.request_id for r in q.maybe_flush(5.0)] == ["a"]
    assert q.next_deadline_at(5.0) == 65.0  # a's reply deadline, not "now" again
    q.on_result("a", 6.0)
    assert [r.request_id for r in q.maybe_flush(6.0)] == ["b"]  # every call may flush


def test_a_backoff_beyond_any_float_means_no_deadline_not_a_crash() -> None:
    q: BacktestQueue[Req] = BacktestQueue(
        clock=lambda: 0.0, result_timeout=1.0, retry_backoff=1e300, max_attempts=3
    )
    q.enqueue(Req("a"))
    q.on_connected(0.0)
    q.flush(0.0)
    q.expire(1.0)
    q.flush(1.0)  # attempt 2: 1e300 s
    q.expire(2e300)
    assert [r.request_id for r in q.flush(2e300)] == ["a"]  # attempt 3: 1e600 s overflows
    assert q.next_deadline_at(2e300) == math.inf


# -- the token bucket names instants, not durations --------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    rate=st.floats(min_value=1e-3, max_value=1e4),
    burst=st.floats(min_value=1.0, max_value=50.0),
    start=clocks,
    after=st.floats(min_value=0.0, max_value=2.0),
)
@example(rate=3.0, burst=1.0, start=55039.62724604522, after=0.0)
@example(rate=1 / 0.7, burst=1.0, start=1.4, after=0.1)
def test_next_token_at_is_an_instant_at_which_a_token_is_there(
    rate: float, burst: float, start: float, after: float
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    assert bucket.next_token_at(start) == start  # full: now
    while bucket.try_take(start):
        pass
    now = start + after / rate
    at = bucket.next_token_at(now)
    assert at >= now
    if at == now:
        assert bucket.try_take(now)
    else:
        assert bucket.seconds_until_token(now) == pytest.approx(at - now, rel=1e-9, abs=1e-9)
        assert bucket.try_take(at)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=1e-3, max_value=1e4),
    burst=st.floats(min_value=1.0, max_value=5.0),
    start=clocks,
    steps=st.lists(st.sampled_from(["take", "peek"]), min_size=1, max_size=30),
)
def test_a_taker_sleeping_to_each_token_gets_one_every_time(
    rate: float, burst: float, start: float, steps: list[str]
) -> None:
    """Sleep to next_token_at, take; a peek (tokens()) between must not spoil the instant."""
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    now = start
    for step in steps:
        at = bucket.next_token_at(now)
        if step == "peek":
            bucket.tokens(now + (at - now) / 2)
        now = at
        assert bucket.try_take(now), (now, bucket)
