"""RateLimitedLog: the first lines of a kind per interval, then one summary line."""

from __future__ import annotations

import logging

import pytest

from backtest_queue._ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_lines_logged_then_counted_then_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.ratelog"), burst=3, interval=10.0, clock=clock)
    caplog.set_level(logging.INFO, "t.ratelog")
    logged = [limited.log("bad", logging.INFO, "bad input %d", i) for i in range(1000)]
    assert logged == [True] * 3 + [False] * 997
    assert lines(caplog) == ["bad input 0", "bad input 1", "bad input 2"]
    assert limited.suppressed("bad") == 997
    assert limited.log("other", logging.WARNING, "another kind")  # kinds are separate
    clock.now += 9.9
    assert not limited.log("bad", logging.INFO, "still inside the window")
    clock.now += 0.1  # the window is over: summary first, then the line
    caplog.clear()
    assert limited.log("bad", logging.INFO, "bad input again")
    assert lines(caplog) == [
        "suppressed 998 similar bad line(s) in the last 10 s",
        "bad input again",
    ]
    assert limited.suppressed() == 0
    assert "suppressed=0" in repr(limited)


def test_flush_summarises_every_kind_at_the_highest_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.ratelog2"), burst=1, clock=clock)
    caplog.set_level(logging.DEBUG, "t.ratelog2")
    for level in (logging.INFO, logging.INFO, logging.WARNING, logging.INFO):
        limited.log("k", level, "line")
    caplog.clear()
    clock.now += 2.0
    assert limited.flush() == 3
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "suppressed 3 similar k line(s) in the last 2 s")
    ]
    assert limited.flush() == 0  # nothing left, nothing logged
    assert len(caplog.records) == 1


@pytest.mark.parametrize(("burst", "interval"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_bad_settings_are_refused(burst: int, interval: float) -> None:
    with pytest.raises(ValueError, match=r"^(burst|interval) must be"):
        RateLimitedLog(logging.getLogger("t"), burst=burst, interval=interval)
