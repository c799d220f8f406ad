"""Walk-forward windows: score each candidate on K windows of the in-sample bars.

One in-sample Sharpe ratio rewards a strategy that made its money in one lucky stretch.
With ``--walk-forward K`` every candidate is backtested on K consecutive windows of the
in-sample bars instead, and scored by a statistic that asks for consistency:

``rolling``
    K disjoint windows of equal length, one after the other.
``anchored``
    K windows that all start at the first in-sample bar and end where each rolling
    window ends (expanding; the last one is the whole in-sample part).

**The score** (what the optimizer maximises and the leaderboard ranks by, in place of
the one in-sample Sharpe ratio) is the *mean minus one standard deviation* of the
window Sharpe ratios (a window without trades counts as 0: flat equity). It is high
only for strategies that are good on average *and* in every window; the median, the
other usual choice, ignores how badly a strategy does in the windows it loses. The
out-of-sample part (the last 30 %) stays untouched, for the final check.

Drawdown is the worst window's; trades and bars are the sum over rolling windows and
the last (largest) anchored window's, so ``--min-trades`` keeps meaning "over the
in-sample bars". Sortino ratio, win rate and profit factor are not combined (``None``);
each window's full result is kept in :attr:`Evaluation.folds`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from ..errors import UsageError
from ..protocol import Metrics

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MODES", "WalkForwardMode", "combiner", "robust_sharpe", "windows"]

MODES: Final = ("rolling", "anchored")
WalkForwardMode = Literal["rolling", "anchored"]


def windows(
    timestamps: Sequence[datetime] | pd.Index[Any], folds: int, mode: WalkForwardMode
) -> list[tuple[str, str]]:
    """The ``folds`` windows of the bars as inclusive ISO-8601 ``(start, end)`` bounds.

    Args:
        timestamps: the in-sample bars' timestamps, increasing.
        folds: K, >= 2.
        mode: ``"rolling"`` or ``"anchored"`` (see the module docstring).

    Returns:
        K windows in time order; window i ends at bar ``round((i + 1) * n / K) - 1``.

    Raises:
        UsageError: K < 2, an unknown mode, or fewer than 2 bars per window.
    """
    count = len(timestamps)
    if folds < 2 or mode not in MODES:
        raise UsageError(
            f"walk-forward needs K >= 2 windows and a mode in {MODES}, got {folds}, {mode!r}"
        )
    if count < 2 * folds:
        raise UsageError(f"{count} in-sample bars are too few for {folds} walk-forward windows")
    ends = [round((i + 1) * count / folds) for i in range(folds)]
    starts = [0] * folds if mode == "anchored" else [0, *ends[:-1]]
    return [
        (timestamps[a].isoformat(), timestamps[b - 1].isoformat())
        for a, b in zip(starts, ends, strict=True)
    ]


def robust_sharpe(sharpes: Sequence[float | None]) -> float:
    """Mean minus one (sample) standard deviation of window Sharpe ratios; ``None``
    (no trades in the window) counts as 0."""
    values = [0.0 if s is None else s for s in sharpes]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values) - spread


def combiner(mode: WalkForwardMode) -> Callable[[Sequence[Metrics]], Metrics]:
    """The function that combines one candidate's window results (see the module
    docstring) for :func:`~.cycle.run_evolution`'s ``combine``."""

    def combine(folds: Sequence[Metrics]) -> Metrics:
        if mode == "rolling":
            trades = sum(m.trades for m in folds)
            bars = sum(m.bars for m in folds)
            growth = math.prod(1 + (m.return_pct or 0.0) / 100 for m in folds)
            return_pct: float | None = (growth - 1) * 100
        else:
            trades = max(m.trades for m in folds)
            bars = max(m.bars for m in folds)
            return_pct = folds[-1].return_pct
        drawdowns = [m.max_drawdown_pct for m in folds if m.max_drawdown_pct is not None]
        defined = trades > 0 and any(m.sharpe is not None for m in folds)
        return Metrics(
            strategy_name=folds[0].strategy_name,
            sharpe=robust_sharpe([m.sharpe for m in folds]) if defined else None,
            return_pct=return_pct,
            max_drawdown_pct=min(drawdowns) if drawdowns else None,
            trades=trades,
            bars=bars,
            elapsed_ms=sum(m.elapsed_ms for m in folds),
        )

    return combine
