"""Walk-forward windows: their bounds, the robust score, and the cycle running each
candidate once per window (fake service, real sockets, both backends)."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from itertools import pairwise

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_queue import Metrics, Strategy
from backtest_queue.dispatcher import open_dispatcher
from backtest_queue.errors import UsageError
from backtest_queue.evolution.cycle import RunSettings, run_evolution
from backtest_queue.evolution.proposer import ListProposer
from backtest_queue.evolution.search import SearchConfig, run_search
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.split import SampleSplit
from backtest_queue.evolution.walkforward import (
    WalkForwardMode,
    combiner,
    robust_sharpe,
    windows,
)

from evolution_helpers import fake_metrics, fake_service
from stubs import free_tcp_endpoint

STAMPS = [datetime(2020, 1, 1) + timedelta(hours=h) for h in range(10)]


def hour(h: int) -> str:
    return STAMPS[h].isoformat()


def test_rolling_and_anchored_windows() -> None:
    """10 bars, K = 3: windows end at bars round(10/3) - 1 = 2, round(20/3) - 1 = 6, 9."""
    assert windows(STAMPS, 3, "rolling") == [(hour(0), hour(2)), (hour(3), hour(6)),
                                             (hour(7), hour(9))]  # fmt: skip
    assert windows(STAMPS, 3, "anchored") == [(hour(0), hour(2)), (hour(0), hour(6)),
                                              (hour(0), hour(9))]  # fmt: skip
    with pytest.raises(UsageError, match="K >= 2"):
        windows(STAMPS, 1, "rolling")
    with pytest.raises(UsageError, match="too few"):
        windows(STAMPS, 6, "rolling")


def test_the_score_asks_for_consistency() -> None:
    steady = robust_sharpe([1.0, 1.0, 1.0])
    lucky = robust_sharpe([3.0, 0.0, 0.0])  # the same mean, made in one window
    assert steady == 1.0
    assert lucky == pytest.approx(1.0 - statistics.stdev([3.0, 0.0, 0.0]))
    assert robust_sharpe([None, 2.0]) == pytest.approx(1.0 - statistics.stdev([0.0, 2.0]))
    folds = [
        Metrics(strategy_name="s", sharpe=1.0, return_pct=10.0, max_drawdown_pct=-2.0,
                trades=10, bars=100),
        Metrics(strategy_name="s", sharpe=None, return_pct=0.0, max_drawdown_pct=None,
                trades=0, bars=100),
        Metrics(strategy_name="s", sharpe=2.0, return_pct=-5.0, max_drawdown_pct=-4.0,
                trades=5, bars=100),
    ]  # fmt: skip
    rolling = combiner("rolling")(folds)
    assert rolling.sharpe == pytest.approx(1.0 - statistics.stdev([1.0, 0.0, 2.0]))
    assert (rolling.trades, rolling.bars, rolling.max_drawdown_pct) == (15, 300, -4.0)
    assert rolling.return_pct == pytest.approx((1.10 * 0.95 - 1) * 100)
    anchored = combiner("anchored")(folds)
    assert (anchored.trades, anchored.bars, anchored.return_pct) == (10, 100, -5.0)
    nothing = combiner("rolling")([folds[1], folds[1]])
    assert nothing.sharpe is None


def sma(fast: int, slow: int) -> Candidate:
    return Candidate.make("sma_cross", {"fast": fast, "slow": slow})


RUNS = [RunSettings(start=a, end=b) for a, b in windows(STAMPS, 3, "rolling")]


@pytest.mark.anyio
async def test_each_candidate_runs_once_per_window() -> None:
    """Three windows: every new candidate is three requests; its evaluation keeps the
    three results and is scored by their combination; a repeat is a clone of all three,
    and a candidate the service refuses fails."""
    a, b, bad = sma(10, 60), sma(8, 40), sma(3, 40)
    endpoint = free_tcp_endpoint()

    def refuse(s: Strategy) -> bool:
        return s.params == {"fast": 3, "slow": 40}

    async with (
        fake_service(endpoint, fail=refuse) as fake,
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(20):
            evaluations = await run_evolution(
                dispatcher, ListProposer([a, b, bad, a]), generations=2, population=2,
                run=RUNS, combine=combiner("rolling"),
            )  # fmt: skip
    assert [e.status for e in evaluations] == ["ok", "ok", "failed", "clone"]
    assert sorted((r.strategy.name, r.start) for r in fake.requests) == sorted(
        (c.name, run.start) for c in (a, b, bad) for run in RUNS
    )
    first = evaluations[0]
    assert len(first.folds) == 3
    one = fake_metrics(RUNS[0].request_for(a))  # the fake ignores the bar range
    assert first.folds == (one, one, one)
    assert first.metrics is not None
    assert first.metrics.sharpe == pytest.approx(one.sharpe)  # no spread: mean - 0
    assert first.metrics.trades == 3 * one.trades
    assert evaluations[3].metrics == first.metrics
    assert evaluations[2].reason == "service_error"
    with pytest.raises(UsageError, match="combine"):
        await run_evolution(dispatcher, ListProposer([a]), generations=1, population=1,
                            run=RUNS)  # fmt: skip


@pytest.mark.anyio
async def test_search_with_walk_forward_ranks_by_the_score() -> None:
    split = SampleSplit(data_id="EURUSD-H1", bars=14, in_sample_bars=10,
                        in_sample=(hour(0), hour(9)),
                        out_of_sample=("2020-01-01T10:00:00", "2020-01-01T13:00:00"))  # fmt: skip
    config = SearchConfig(generations=2, population=2, min_trades=20, top=3, walk_forward=3)
    endpoint = free_tcp_endpoint()
    candidates = [sma(10, 60), sma(8, 40), sma(12, 60), sma(30, 90)]
    async with (
        fake_service(endpoint) as fake,
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(20):
            with pytest.raises(UsageError, match="windows"):
                await run_search(dispatcher, config, split, proposer=ListProposer(candidates))
            report = await run_search(
                dispatcher, config, split, proposer=ListProposer(candidates),
                windows=windows(STAMPS, 3, "rolling"),
            )  # fmt: skip
    assert len(fake.requests) == 4 * 3 + 3  # three windows each, then 3 out-of-sample
    assert [row.candidate for row in report.leaderboard][:1] == [sma(12, 60)]
    assert all(len(e.folds) == 3 for e in report.in_sample)
    assert all(not e.folds for e in report.out_of_sample)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 200), st.sampled_from(["rolling", "anchored"]))
def test_windows_cover_the_bars_in_order(folds: int, extra: int, mode: WalkForwardMode) -> None:
    """Rolling windows partition the bars (contiguous, disjoint, all of them); anchored
    ones start at the first bar and end where the rolling ones do."""
    stamps = [datetime(2020, 1, 1) + timedelta(hours=h) for h in range(2 * folds + extra)]
    index = {stamp.isoformat(): i for i, stamp in enumerate(stamps)}
    bounds = [(index[a], index[b]) for a, b in windows(stamps, folds, mode)]
    rolling = [(index[a], index[b]) for a, b in windows(stamps, folds, "rolling")]
    assert len(bounds) == folds
    assert [b for _, b in bounds] == [b for _, b in rolling]
    assert rolling[0][0] == 0
    assert rolling[-1][1] == len(stamps) - 1
    assert all(nxt[0] == prev[1] + 1 for prev, nxt in pairwise(rolling))
    assert all(b - a >= 1 for a, b in rolling)  # at least 2 bars each
    if mode == "anchored":
        assert {a for a, _ in bounds} == {0}
