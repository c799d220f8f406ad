"""Overfitting measured on a finished search: DSR per leaderboard row, PBO of the run.

The service's results carry metrics, not return series, so the daily returns these
statistics need are recomputed here for the top candidates, in-process, with the same
backtesting.py run the service and the demo's equity curve use
(:func:`~.equity.equity_segments`), on the in-sample bars. Daily, because the Sharpe
ratios the search ranked by are backtesting.py's, computed from daily equity returns:
returns are the equity's last value per calendar day, days without bars left out.

* **DSR** (:func:`~.overfitting.deflated_sharpe_ratio`) of each leaderboard row: its
  Sharpe ratio, skewness and kurtosis from its daily in-sample returns; the number of
  trials is the number of distinct candidates the search evaluated with a defined
  Sharpe ratio (a conservative count: similar candidates are not independent trials),
  and their variance is that of their reported Sharpe ratios (with walk-forward
  windows: the mean of each trial's window Sharpe ratios), de-annualised by the
  trading days per year backtesting.py used (365 when weekends have bars, else 252).
* **PBO** (:func:`~.overfitting.probability_of_backtest_overfitting`) over the daily
  in-sample returns of the ``candidates`` best distinct candidates (by in-sample
  Sharpe ratio): how often the best of them on half of the days is no better than
  their median on the other half. Only those candidates, not every trial: their
  return series cost a backtest each.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .cycle import Evaluation, RunSettings
from .overfitting import (
    DeflatedSharpe,
    Overfitting,
    deflated_sharpe_ratio,
    moments,
    probability_of_backtest_overfitting,
)
from .report import best_candidates
from .search_space import Candidate

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Assessment", "assess", "daily_returns", "describe"]

log = logging.getLogger("backtest_queue.evolution")


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    """How much of a search's result is selection luck.

    Attributes:
        dsr: the Deflated Sharpe Ratio per leaderboard candidate (missing: too few
            returns, or constant ones).
        pbo: the Probability of Backtest Overfitting of the ``pbo_candidates`` best, or
            ``None`` when fewer than two had return series.
        trials: the number of trials the DSR corrects for.
        annual_days: the trading days per year used to de-annualise Sharpe ratios.
    """

    dsr: dict[Candidate, DeflatedSharpe] = field(default_factory=dict)
    pbo: Overfitting | None = None
    trials: int = 0
    annual_days: int = 252

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (DSR per candidate name)."""
        return {
            "trials": self.trials,
            "annual_days": self.annual_days,
            "dsr": {c.name: round(d.dsr, 6) for c, d in self.dsr.items()},
            "pbo": None if self.pbo is None else round(self.pbo.pbo, 6),
            "pbo_strategies": None if self.pbo is None else self.pbo.strategies,
            "pbo_blocks": None if self.pbo is None else self.pbo.blocks,
            "pbo_days": None if self.pbo is None else self.pbo.observations,
        }


def daily_returns(equity: pd.Series) -> pd.Series:
    """Daily returns of an equity curve, as backtesting.py computes them for its
    Sharpe ratio: last equity per calendar day, days without bars dropped."""
    return equity.resample("D").last().dropna().pct_change().dropna()


def _plain_sharpe(evaluation: Evaluation) -> float:
    """A trial's Sharpe ratio: with walk-forward windows the mean of the windows' (its
    score is not a Sharpe ratio), else the reported one."""
    if evaluation.folds:
        return statistics.fmean(m.sharpe or 0.0 for m in evaluation.folds)
    return evaluation.sharpe or 0.0


def _annual_days(index: pd.Index[Any]) -> int:
    """backtesting.py's choice: 365 when weekends have enough bars, else 252."""
    weekend = float(index.day_of_week.to_series().between(5, 6).mean())  # type: ignore[attr-defined]
    return 365 if weekend > 2 / 7 * 0.6 else 252


def assess(
    in_sample: Sequence[Evaluation],
    leaderboard: Sequence[Candidate],
    bars: pd.DataFrame,
    run: RunSettings,
    *,
    min_trades: int = 0,
    pbo_candidates: int = 16,
    blocks: int = 8,
) -> Assessment:
    """Compute DSR and PBO for a finished search (see the module docstring).

    Args:
        in_sample: every in-sample evaluation of the search.
        leaderboard: the candidates to give a DSR, best first.
        bars: the in-sample bars (already cut).
        run: cash and commission of the search.
        min_trades: the leaderboard's rule, to pick the PBO candidates.
        pbo_candidates: how many of the best candidates PBO is computed over.
        blocks: CSCV's S (even); fewer when there are too few days.

    Returns:
        The assessment; parts that cannot be computed are left out (and logged).
    """
    import numpy as np

    from .equity import equity_segments

    annual_days = _annual_days(bars.index)
    sharpes = {e.candidate: _plain_sharpe(e) for e in in_sample if e.sharpe is not None}
    trials = len(sharpes)
    variance = statistics.pvariance(sharpes.values()) / annual_days if trials > 1 else 0.0
    best = [e.candidate for e in best_candidates(in_sample, pbo_candidates, min_trades=min_trades)]
    wanted = list(dict.fromkeys([*leaderboard, *best]))
    returns: dict[Candidate, pd.Series] = {}
    for candidate in wanted:
        (segment,) = equity_segments(candidate, [("in-sample", bars)], run)
        returns[candidate] = daily_returns(segment.equity)
    dsr = {}
    for candidate in leaderboard:
        try:
            sharpe, skewness, kurtosis = moments(returns[candidate].to_numpy())
            dsr[candidate] = deflated_sharpe_ratio(
                sharpe=sharpe, observations=len(returns[candidate]), skewness=skewness,
                kurtosis=kurtosis, trials=max(trials, 1), trial_variance=variance,
            )  # fmt: skip
        except UsageError as exc:
            log.info("no DSR for %s: %s", candidate.name, exc)
    pbo = None
    columns = [returns[c] for c in best]
    if len(columns) >= 2:
        matrix = np.column_stack([c.to_numpy() for c in columns])
        s = min(blocks, 2 * (matrix.shape[0] // 4))  # at least 2 days per block
        if s >= 2:
            pbo = probability_of_backtest_overfitting(matrix, blocks=s)
    if pbo is None:
        log.info("no PBO: fewer than two candidates with daily returns")
    return Assessment(dsr=dsr, pbo=pbo, trials=trials, annual_days=annual_days)


def describe(assessment: Assessment) -> str:
    """One line for people about the run's overfitting."""
    if assessment.pbo is None:
        pbo = "PBO n/a"
    else:
        p = assessment.pbo
        pbo = (
            f"PBO {p.pbo:.2f} (CSCV over the {p.strategies} best, {p.observations} "
            f"in-sample days in {p.blocks} blocks)"
        )
    significant = sum(d.dsr >= 0.95 for d in assessment.dsr.values())
    return (
        f"overfitting: {pbo}; {significant} of {len(assessment.dsr)} ranked strategies "
        f"have a Deflated Sharpe Ratio >= 0.95 after {assessment.trials} trials"
    )
