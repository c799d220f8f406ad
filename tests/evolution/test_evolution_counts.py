"""What a search reports about itself: the best so far under ``min_trades`` and the
evaluations that did not count, by cause (fake service, real sockets, both backends)."""

from __future__ import annotations

import anyio
import pytest

from backtest_queue import Strategy
from backtest_queue.dispatcher import open_dispatcher
from backtest_queue.evolution.cycle import GenerationSummary, Progress
from backtest_queue.evolution.proposer import ListProposer
from backtest_queue.evolution.report import sharpe_by_generation
from backtest_queue.evolution.search import SearchConfig, SearchReport, run_search
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.split import SampleSplit

from evolution_helpers import fake_service
from stubs import free_tcp_endpoint

pytestmark = pytest.mark.anyio

SPLIT = SampleSplit(
    data_id="EURUSD-H1",
    bars=100,
    in_sample_bars=70,
    in_sample=("2017-05-01T00:00:00", "2017-07-01T00:00:00"),
    out_of_sample=("2017-07-01T01:00:00", "2017-09-01T00:00:00"),
)

LUCKY = Candidate.make("sma_cross", {"fast": 12, "slow": 240})  # 5 trades, Sharpe 3.2
SOLID = Candidate.make("sma_cross", {"fast": 12, "slow": 60}, tp=0.02)  # 20 trades, 1.3
WEAK = Candidate.make("ema_cross", {"fast": 20, "slow": 80})  # 20 trades
SILENT = Candidate.make("rsi_reversion", {"period": 45, "lower": 30, "upper": 70})  # 0 trades
REFUSED = Candidate.make("sma_cross", {"fast": 3, "slow": 40})  # an engine_error reply


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Progress] = []
        self.summaries: list[GenerationSummary] = []

    def progress(self, progress: Progress) -> None:
        self.snapshots.append(progress)

    def generation_done(self, summary: GenerationSummary) -> None:
        self.summaries.append(summary)


async def search(candidates: list[Candidate], recorder: Recorder) -> SearchReport:
    config = SearchConfig(generations=2, population=len(candidates) // 2, min_trades=20, top=3)
    endpoint = free_tcp_endpoint()

    def refuse(s: Strategy) -> bool:
        return s.params == {"fast": 3, "slow": 40}

    async with (
        fake_service(endpoint, fail=refuse),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(20):
            return await run_search(
                dispatcher, config, SPLIT, proposer=ListProposer(candidates), observer=recorder
            )


async def test_best_so_far_follows_the_leaderboards_min_trades() -> None:
    """A 5-trade strategy with the highest Sharpe ratio is not "best so far" - not in the
    progress line, the generation summaries or the chart's data - when the leaderboard
    does not rank it (--min-trades 20): all of them show the leaderboard's #1."""
    recorder = Recorder()
    report = await search([LUCKY, WEAK, SOLID, LUCKY], recorder)
    top = report.leaderboard[0]
    assert top.candidate == SOLID
    assert LUCKY not in {row.candidate for row in report.leaderboard}
    in_sample = [p for p in recorder.snapshots if p.phase == "in-sample"]
    assert in_sample[-1].best_sharpe == top.in_sample.sharpe
    assert all(p.best_sharpe is None or p.best_sharpe <= top.in_sample.sharpe for p in in_sample)
    first, second = (s for s in recorder.summaries if s.phase == "in-sample")
    assert first.best_sharpe == first.best_so_far == WEAK_SHARPE
    assert second.best_sharpe == second.best_so_far == top.in_sample.sharpe
    points = sharpe_by_generation(report.in_sample, min_trades=report.config.min_trades)
    assert [best for _, best, _ in points] == [WEAK_SHARPE, top.in_sample.sharpe]
    assert (points[0][2] or 0.0) > WEAK_SHARPE  # the median: of all of them


WEAK_SHARPE = round(1.0 - 8 / 30 - 20 / 120 + 0.1 + 0.3 - 0.2, 6)


async def test_evaluations_that_do_not_count_are_reported_by_cause() -> None:
    """'0 failed' once hid every result told to the optimizer as failed: a search now
    counts failures without a result by reason and infeasible results (too few trades,
    none) apart, in the report, the generation summaries and the printed line."""
    recorder = Recorder()
    report = await search([REFUSED, SILENT, SOLID, LUCKY, WEAK, REFUSED], recorder)
    counts = report.counts()
    assert counts["evaluations"] == 6
    assert counts["failed"] == counts["failed:service_error"] == 2
    assert counts["infeasible"] == 2  # SILENT (no trades) and LUCKY (5 trades)
    assert counts["ok"] == 4
    summaries = [s for s in recorder.summaries if s.phase == "in-sample"]
    assert [(s.failures, s.infeasible) for s in summaries] == [(1, 1), (1, 1)]
    last_in_sample = [p for p in recorder.snapshots if p.phase == "in-sample"][-1]
    assert (last_in_sample.failures, last_in_sample.infeasible) == (2, 2)
    from backtest_queue.evolution.command_common import counts_line

    line = counts_line(report)
    assert "2 failed: 2 service_error" in line
    assert "2 infeasible (fewer than 20 trades" in line
