"""DSR and PBO of a finished search, from return series recomputed in-process on real
bars (a slice of the bundled EURUSD-H1, four strategies: a few seconds)."""

from __future__ import annotations

import math

import pytest

from backtest_queue import Metrics
from backtest_queue.evolution.cycle import Evaluation, RunSettings
from backtest_queue.evolution.robustness import assess, daily_returns, describe
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.split import load_bars

pytest.importorskip("backtesting")
pytestmark = pytest.mark.slow

CANDIDATES = [
    Candidate.make("sma_cross", {"fast": 10, "slow": 40}),
    Candidate.make("ema_cross", {"fast": 5, "slow": 30}, tp=0.01),
    Candidate.make("rsi_reversion", {"period": 14, "lower": 30, "upper": 70}),
    Candidate.make("sma_cross", {"fast": 20, "slow": 60}, sl=0.01),
]


def evaluation(number: int, candidate: Candidate, sharpe: float | None) -> Evaluation:
    metrics = Metrics(strategy_name=candidate.name, sharpe=sharpe, max_drawdown_pct=-3.0,
                      trades=30)  # fmt: skip
    return Evaluation(number=number, generation=0, candidate=candidate, status="ok",
                      metrics=metrics)  # fmt: skip


def test_assess_gives_a_dsr_per_row_and_a_pbo() -> None:
    bars = load_bars("EURUSD-H1").iloc[:1200]
    # Reported Sharpe ratios (as if from the service), and one trial without any.
    in_sample = [evaluation(i, c, s) for i, (c, s) in
                 enumerate(zip(CANDIDATES, (1.2, 0.4, -0.3, 0.9), strict=True))]  # fmt: skip
    in_sample.append(evaluation(9, Candidate.make("sma_cross", {"fast": 2, "slow": 5}), None))
    leaderboard = [CANDIDATES[0], CANDIDATES[3]]
    result = assess(in_sample, leaderboard, bars, RunSettings(), pbo_candidates=4, blocks=8)
    assert result.trials == 4  # the trial without a Sharpe ratio is not counted
    assert result.annual_days == 252  # FX: no weekend bars
    assert set(result.dsr) == set(leaderboard)
    days = len(daily_returns(bars["Close"]))
    for dsr in result.dsr.values():
        assert 0.0 <= dsr.dsr <= 1.0
        assert dsr.trials == 4
        assert dsr.observations == days
        assert dsr.benchmark > 0  # four trials with different Sharpe ratios
    assert result.pbo is not None
    assert result.pbo.strategies == 4
    assert 0.0 <= result.pbo.pbo <= 1.0
    assert len(result.pbo.logits) == math.comb(result.pbo.blocks, result.pbo.blocks // 2)
    assert result.record()["pbo"] == round(result.pbo.pbo, 6)
    assert "PBO" in describe(result)
