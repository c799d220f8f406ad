"""A token bucket for the rate limit (sans-IO: time comes in as ``now``)."""

from __future__ import annotations

import math

from .settings import check_number

__all__ = ["TokenBucket"]

# A token counts as whole from 1 - _EPSILON, so float rounding in refills never leaves a
# token a hair short; next_token_at() names an instant at which one is there. The window
# bound loses 1e-9 of a token.
_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst`` tokens.

    Over any window of length ``T`` seconds, at most ``burst + rate * T`` tokens can be
    taken. That bound is the classic leaky-bucket-as-meter guarantee (Turner, 1986; the
    "token bucket filter" of RFC 2697 without its colours). The bucket starts full.

    Time is taken from the caller as ``now`` (seconds, monotonic). A ``now`` earlier than
    one already seen is treated as the latest one seen, so a stray clock never mints tokens.

    Args:
        rate: tokens added per second; > 0.
        burst: bucket size in tokens; >= 1.
        now: the time the bucket starts full at, in seconds (``-inf``: at the first time
            it is given).

    Raises:
        UsageError: ``rate`` is not a finite number > 0, ``burst`` is not a finite
            number >= 1, or ``now`` is not a number or is NaN (``bool`` and ``str`` are
            refused everywhere).
    """

    __slots__ = ("_tokens", "_updated_at", "burst", "rate")

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        check_number("rate", rate, unit="requests per second", minimum=0.0, exclusive=True)
        check_number("burst", burst, unit="requests", minimum=1.0)
        check_number("now", now, unit="seconds", minimum=-math.inf, allow_inf=True)
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._updated_at = now

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate:g}/s burst={self.burst:g} tokens={self._tokens:.3g}>"

    def _refill(self, now: float) -> None:
        if now > self._updated_at:
            self._tokens = min(self.burst, self._tokens + (now - self._updated_at) * self.rate)
            self._updated_at = now

    def tokens(self, now: float) -> float:
        """Return the tokens available at ``now`` (a fraction while refilling)."""
        self._refill(now)
        return self._tokens

    def try_take(self, now: float) -> bool:
        """Take one token if one is available at ``now``; return whether it was taken."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        """Return the earliest time, in seconds, at which one whole token is available.

        It is ``now`` (or the latest time seen, if ``now`` is earlier) when a token is
        there already. Otherwise it is the first float at which :meth:`try_take` succeeds,
        computed with the very arithmetic :meth:`try_take` uses: a caller that sleeps until
        this instant (an absolute deadline, not ``now`` plus a duration, which can round
        below it) always finds the token.
        """
        self._refill(now)
        base = max(now, self._updated_at)
        if self._tokens >= 1.0 - _EPSILON:
            return base
        at = base + (1.0 - self._tokens) / self.rate
        # Floating point: make sure the token is really there at the instant named, by
        # the refill formula of _refill(at): tokens + (at - updated_at) * rate.
        while self._tokens + (at - base) * self.rate < 1.0 - _EPSILON:
            at = math.nextafter(at, math.inf)
        return at

    def seconds_until_token(self, now: float) -> float:
        """Return the seconds from ``now`` until one whole token is available (0.0 if now).

        For people and logs; to wait for the token, sleep until :meth:`next_token_at`
        (``now + seconds_until_token(now)`` can round to an instant a hair too early).
        """
        return self.next_token_at(now) - max(now, self._updated_at)
