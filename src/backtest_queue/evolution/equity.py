"""The equity curve of one strategy, computed in-process with the service's engine code.

A service's reply carries metrics only, so the curve is recomputed here: the same
backtesting.py run the built-in engine does
(:class:`~backtest_queue.service.engine.BacktestingPyEngine`: same strategy classes,
``exclusive_orders=True``, ``finalize_trades=True``, no spread, no margin), on the same
bars, once per part of the split. One strategy, two short runs: about a second, most of
it importing backtesting.py. The returned metrics let the caller check that the local
run agrees with what the service reported.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cycle import RunSettings
from .search_space import Candidate

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EquitySegment", "equity_segments", "plot_equity"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EquitySegment:
    """The equity curve of one run.

    Attributes:
        label: e.g. ``"in-sample"``.
        equity: account equity per bar, in the dataset's quote currency, indexed by time.
        return_pct: total return of the run, in percent.
        sharpe: its Sharpe ratio, ``None`` when undefined.
    """

    label: str
    equity: pd.Series
    return_pct: float
    sharpe: float | None


def equity_segments(
    candidate: Candidate,
    parts: list[tuple[str, pd.DataFrame]],
    run: RunSettings,
) -> list[EquitySegment]:
    """Run ``candidate`` on each part of the bars and return the equity curves.

    Args:
        candidate: the strategy (a kind of the built-in engine).
        parts: ``(label, bars)`` per run, e.g. the in-sample and out-of-sample bars.
        run: cash and commission (its bar bounds are ignored: ``parts`` are already cut).

    Returns:
        One segment per part, in order.

    Raises:
        ProtocolError: the candidate breaks the engine's parameter rules.
        ImportError: backtesting.py is not installed (the ``service`` extra).
    """
    from ..service.engine import finite_or_none, run_backtesting_py

    strategy = candidate.strategy()
    segments = []
    for label, bars in parts:
        # backtesting.py draws a tqdm bar on stderr; it does not help here.
        with contextlib.redirect_stderr(io.StringIO()):
            stats = run_backtesting_py(strategy, bars, cash=run.cash, commission=run.commission)
        segments.append(
            EquitySegment(
                label=label,
                equity=stats["_equity_curve"]["Equity"],
                return_pct=float(stats["Return [%]"]),
                sharpe=finite_or_none(stats["Sharpe Ratio"]),
            )
        )
    return segments


def plot_equity(path: Path, title: str, segments: list[EquitySegment], cash: float) -> Path:
    """Draw the segments on one time axis (each starts with ``cash``) into a PNG.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = ("tab:blue", "tab:orange", "tab:green")
    for i, segment in enumerate(segments):
        sharpe = "n/a" if segment.sharpe is None else f"{segment.sharpe:.2f}"
        axes.plot(
            segment.equity.index,
            segment.equity.to_numpy(),
            color=colours[i % len(colours)],
            linewidth=1.2,
            label=f"{segment.label}: return {segment.return_pct:+.1f} %, Sharpe {sharpe}",
        )
        if i > 0:
            axes.axvline(segment.equity.index[0], color="grey", linestyle="--", linewidth=0.8)
    axes.axhline(cash, color="black", linewidth=0.5)
    axes.set_title(title, fontsize=10)
    axes.set_ylabel(f"equity (each part starts with {cash:,.0f})")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=110)
    return path
