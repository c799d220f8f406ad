"""Seconds of a test's story on trio's virtual clock or asyncio's real one.

Modules marked ``@pytest.mark.virtual_time`` (the test kit's marker: trio under
``MockClock(autojump_threshold=0)``, asyncio on the real clock) write their timings in
story seconds and scale them with :func:`story_time`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtest_queue import BacktestRequest, Strategy


@dataclass(frozen=True)
class Time:
    """Seconds of the test's story, scaled to the clock in use, and how exact it is."""

    scale: float
    slack: float

    def __call__(self, seconds: float) -> float:
        return seconds * self.scale


def story_time(anyio_backend: object, *, asyncio_slack: float) -> Time:
    """Exact virtual seconds on trio; on asyncio's real clock a shorter story (x0.05)
    with ``asyncio_slack`` seconds of tolerance."""
    if anyio_backend == "asyncio":
        return Time(scale=0.05, slack=asyncio_slack)
    return Time(scale=1.0, slack=1e-9)


def request(i: int) -> BacktestRequest:
    """The i-th of a run of distinct valid requests (``req-<i>``)."""
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")
