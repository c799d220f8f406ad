"""Property tests for :class:`backtest_queue.ratelimit.TokenBucket` on its own.

Time is plain numbers (seconds); nothing here sleeps.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backtest_queue import UsageError
from backtest_queue.ratelimit import TokenBucket

# The bound is stated for exact arithmetic; the bucket gives away at most 1e-9 of a token
# (its rounding slack), so allow a little more than that.
BOUND_SLACK = 1e-6

rates = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
bursts = st.floats(min_value=1.0, max_value=1e3, allow_nan=False, allow_infinity=False)
# For tests that take every token there is: keep the number of takes (and the O(n^2)
# window check) small.
small_rates = st.floats(min_value=1e-3, max_value=20.0, allow_nan=False, allow_infinity=False)
small_bursts = st.floats(min_value=1.0, max_value=8.0, allow_nan=False, allow_infinity=False)
starts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
# Increments between calls: often 0 (several calls at the same instant), often tiny.
steps = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e-3),
    st.floats(min_value=0.0, max_value=2.0),
)


def assert_window_bound(taken_at: list[float], rate: float, burst: float) -> None:
    """Check ``count <= burst + rate * T`` for every window between two take times.

    The tightest windows start and end at a take, so checking those checks them all.
    ``taken_at`` is sorted; a window ``[s, e]`` holds every take with ``s <= t <= e``.
    """
    for j, end in enumerate(taken_at):
        for start in taken_at[: j + 1]:
            count = j + 1 - bisect_left(taken_at, start)
            allowed = burst + rate * (end - start) + BOUND_SLACK
            assert count <= allowed, (start, end, count, allowed)


def deltas_to_times(start: float, deltas: list[float]) -> list[float]:
    times = []
    t = start
    for d in deltas:
        t += d
        times.append(t)
    return times


# -- the window bound --------------------------------------------------------------------


@given(
    rate=rates,
    burst=bursts,
    start=starts,
    calls=st.lists(st.tuples(steps, st.integers(min_value=1, max_value=5)), max_size=60),
)
def test_window_bound_for_non_decreasing_times(
    rate: float, burst: float, start: float, calls: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    taken_at: list[float] = []
    times = deltas_to_times(start, [d for d, _ in calls])
    for now, (_, tries) in zip(times, calls, strict=True):
        for _ in range(tries):
            if bucket.try_take(now):
                taken_at.append(now)
    assert_window_bound(taken_at, rate, burst)


@given(rate=small_rates, burst=small_bursts, start=starts, deltas=st.lists(steps, max_size=40))
def test_greedy_taker_gets_what_the_exact_bucket_allows(
    rate: float, burst: float, start: float, deltas: list[float]
) -> None:
    """Taking until refused leaves exactly the tokens an exact-arithmetic bucket has.

    This is the other half of the window bound: the bucket must not refuse tokens it has
    (a stricter limiter would pass the bound trivially). Compared with an exact-fraction
    model within 1e-6 of a token.
    """
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    exact = Fraction(burst)
    last = Fraction(start)
    for now in deltas_to_times(start, deltas):
        exact = min(Fraction(burst), exact + (Fraction(now) - last) * Fraction(rate))
        last = Fraction(now)
        taken = 0
        while bucket.try_take(now):
            taken += 1
            assert taken <= burst + 1, "try_take never refuses"
        low = max(0, math.floor(exact - Fraction(BOUND_SLACK)))
        high = math.floor(exact + Fraction(BOUND_SLACK))
        assert low <= taken <= high, (float(exact), taken)
        exact -= taken
        assert bucket.tokens(now) == pytest.approx(float(exact), abs=BOUND_SLACK)


@given(rate=rates, burst=bursts, start=starts, deltas=st.lists(steps, max_size=40))
def test_tokens_stay_between_zero_and_burst(
    rate: float, burst: float, start: float, deltas: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    for now in deltas_to_times(start, deltas):
        assert bucket.tokens(now) <= burst
        bucket.try_take(now)
        assert bucket.tokens(now) >= -1e-9


def test_starts_full_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=10.0)
    assert bucket.tokens(10.0) == 3.0
    assert [bucket.try_take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens(10.25) == pytest.approx(0.5)
    assert not bucket.try_take(10.25)
    assert bucket.try_take(10.5)
    assert not bucket.try_take(10.5)
    # A long pause fills it to burst, never beyond.
    assert bucket.tokens(1000.0) == 3.0


# -- seconds_until_token -----------------------------------------------------------------


def _drain(bucket: TokenBucket, now: float) -> None:
    while bucket.try_take(now):
        pass


@given(rate=rates, burst=bursts, start=starts, after=st.floats(min_value=0.0, max_value=1.0))
def test_seconds_until_token_is_zero_when_a_token_is_there(
    rate: float, burst: float, start: float, after: float
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    assert bucket.seconds_until_token(start) == 0.0
    _drain(bucket, start)
    now = start + after / rate  # `after` tokens' worth of refill
    wait = bucket.seconds_until_token(now)
    assert wait >= 0.0
    if wait == 0.0:
        assert bucket.try_take(now)
    else:
        assert not bucket.try_take(now)


@given(
    rate=rates,
    burst=bursts,
    start=starts,
    after=st.floats(min_value=0.0, max_value=0.999),
)
def test_seconds_until_token_is_not_early(
    rate: float, burst: float, start: float, after: float
) -> None:
    """Slightly before ``now + wait`` no token is available (within float tolerance)."""
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    _drain(bucket, start)
    now = start + after / rate
    wait = bucket.seconds_until_token(now)
    # 1e-6 of a token earlier, plus a few ulps of the clock reading.
    early = 1e-6 / rate + 8 * math.ulp(now + wait)
    if wait <= early:
        return  # too close to call in floating point
    assert not bucket.try_take(now + wait - early)


@given(
    rate=rates,
    burst=bursts,
    start=starts,
    after=st.floats(min_value=0.0, max_value=0.999),
)
def test_seconds_until_token_is_not_late_within_tolerance(
    rate: float, burst: float, start: float, after: float
) -> None:
    """A hair after ``now + wait`` (1e-9 of a token, a few ulps) a token is available."""
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    _drain(bucket, start)
    now = start + after / rate
    wait = bucket.seconds_until_token(now)
    late = 1e-9 / rate + 8 * math.ulp(now + wait)
    assert bucket.try_take(now + wait + late)


@given(
    rate=rates,
    burst=bursts,
    start=starts,
    after=st.floats(min_value=0.0, max_value=0.999),
)
@example(rate=0.5, burst=1.0, start=55039.62724604522, after=0.0830779)
def test_token_is_available_exactly_at_now_plus_wait(
    rate: float, burst: float, start: float, after: float
) -> None:
    """ratelimit.py's own comment promises this: waking at the instant named finds it."""
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    _drain(bucket, start)
    now = start + after / rate
    wait = bucket.seconds_until_token(now)
    assert bucket.try_take(now + wait)


# -- a clock going backwards -------------------------------------------------------------


@given(
    rate=small_rates,
    burst=small_bursts,
    start=starts,
    offsets=st.lists(st.floats(min_value=-10.0, max_value=10.0), max_size=60),
)
def test_clock_going_backwards_never_mints_tokens(
    rate: float, burst: float, start: float, offsets: list[float]
) -> None:
    """With arbitrary times, the bound holds measured on the latest time seen so far."""
    bucket = TokenBucket(rate=rate, burst=burst, now=start)
    latest = start
    taken_at: list[float] = []
    for offset in offsets:
        now = start + offset
        before = bucket.tokens(latest)
        if now < latest:
            # Asking about the past changes nothing.
            assert bucket.tokens(now) == before
        latest = max(latest, now)
        while bucket.try_take(now):
            taken_at.append(latest)
    assert_window_bound(taken_at, rate, burst)


def test_backwards_time_after_emptying_gives_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=100.0)
    assert bucket.try_take(100.0)
    assert not bucket.try_take(50.0)
    assert not bucket.try_take(0.0)
    assert bucket.tokens(99.0) == 0.0
    assert bucket.seconds_until_token(10.0) == pytest.approx(1.0)
    # And going back did not reset the refill reference: at 100.5 half a token, not more.
    assert bucket.tokens(100.5) == pytest.approx(0.5)


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "setting"),
    [
        (0.0, 1.0, "rate"),
        (-1.0, 1.0, "rate"),
        (math.nan, 1.0, "rate"),
        (math.inf, 1.0, "rate"),
        (1.0, 0.5, "burst"),
        (1.0, 0.0, "burst"),
        (1.0, math.nan, "burst"),
        (1.0, math.inf, "burst"),
    ],
)
def test_validation_names_the_setting(rate: float, burst: float, setting: str) -> None:
    with pytest.raises(UsageError, match=setting):
        TokenBucket(rate=rate, burst=burst, now=0.0)


def test_fractional_burst_and_rate_are_accepted() -> None:
    bucket = TokenBucket(rate=0.25, burst=1.5, now=0.0)
    assert bucket.rate == 0.25
    assert bucket.burst == 1.5
    assert bucket.try_take(0.0)
    assert not bucket.try_take(0.0)  # 0.5 left
    assert bucket.seconds_until_token(0.0) == pytest.approx(2.0)
    assert "rate=0.25/s" in repr(bucket)
    assert "burst=1.5" in repr(bucket)
