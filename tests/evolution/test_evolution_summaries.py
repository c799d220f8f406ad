"""Honest summaries (issue 11, §7): what the footer claims about trades, the warnings
about a #1 resting on few trades, and the counts by cause.

``evolve`` runs in-process against the fake service (invented metrics, 20 trades per
strategy, 5 for the "lucky" ones) in a portal thread, as in the evolve command's tests.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from backtest_queue.evolution import command_evolve
from backtest_queue.evolution.command_report import counts_line, report_warnings
from backtest_queue.evolution.records import Evaluation, Status
from backtest_queue.evolution.report import leaderboard
from backtest_queue.evolution.search import SearchConfig, SearchReport, write_outputs
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.split import SampleSplit
from backtest_queue.protocol import Metrics

from evolution_helpers import FakeService, fake_service
from stubs import free_tcp_endpoint


def evolve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command_evolve.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.command = "evolve"
    return args


@contextmanager
def fake_in_thread() -> Iterator[FakeService]:
    with start_blocking_portal(backend="trio") as portal:
        endpoint = free_tcp_endpoint()
        with portal.wrap_async_context_manager(fake_service(endpoint)) as fake:
            yield fake


def ev(number: int, generation: int, fast: int, sharpe: float, status: Status = "ok") -> Evaluation:
    candidate = Candidate.make("sma_cross", {"fast": fast, "slow": 100})
    metrics = Metrics(strategy_name=candidate.name, sharpe=sharpe, max_drawdown_pct=-5.0,
                      trades=25)  # fmt: skip
    return Evaluation(number=number, generation=generation, candidate=candidate, status=status,
                      metrics=metrics, request_id=f"r{number}")  # fmt: skip


def test_no_strategy_meets_min_trades_the_footer_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every fake strategy makes at most 20 trades: with --min-trades 21 none ranks by
    the rule, so the footer must not claim "at least 21 trades"; both the table and the
    JSON warn."""
    common = ("--generations", "1", "--population", "4", "--top", "2", "--min-trades", "21")
    with fake_in_thread() as fake:
        table = evolve_args("--connect", fake.endpoint, *common, "--out", str(tmp_path / "a"))
        assert command_evolve.run(table) == 0
        printed = capsys.readouterr().out
        as_json = evolve_args("--connect", fake.endpoint, *common, "--json",
                              "--out", str(tmp_path / "b"))  # fmt: skip
        assert command_evolve.run(as_json) == 0
        document = json.loads(capsys.readouterr().out)
    assert "at least 21" not in printed
    assert "ranked: all strategies (none made --min-trades 21 in-sample trades)" in printed
    assert "warning: no strategy made 21 in-sample trades" in printed
    assert any(w.startswith("no strategy made 21 in-sample trades") for w in document["warnings"])
    assert any("#1 made only" in w for w in document["warnings"])  # 20 (or 5) < 21


def report_with(oos_trades: int, *, min_trades: int = 20, ranked_by: int = 20) -> SearchReport:
    in_sample = [ev(0, 1, 10, 1.0), ev(1, 1, 11, 0.5)]
    oos = ev(100, 1, 10, 0.9)
    metrics = Metrics(strategy_name=oos.candidate.name, sharpe=0.9, trades=oos_trades)
    oos = replace(oos, metrics=metrics)
    split = SampleSplit(data_id="X", bars=10, in_sample_bars=7, in_sample=("a", "b"),
                        out_of_sample=("c", "d"))  # fmt: skip
    return SearchReport(
        config=SearchConfig(generations=1, population=2, min_trades=min_trades),
        split=split,
        in_sample=in_sample,
        out_of_sample=[oos],
        leaderboard=leaderboard(in_sample, [oos], min_trades=0),
        elapsed=1.0,
        min_trades=ranked_by,
    )


def test_a_first_with_few_out_of_sample_trades_is_warned_about() -> None:
    assert report_warnings(report_with(4)) == [
        "the leaderboard's #1 made only 4 out-of-sample trades, fewer than --min-trades 20: "
        "its out-of-sample Sharpe ratio says little"
    ]
    assert report_warnings(report_with(20)) == []
    assert report_warnings(report_with(4, min_trades=0, ranked_by=0)) == []  # no minimum asked


def test_counts_say_what_ran_and_what_came_from_the_cache() -> None:
    report = report_with(30)
    cached = [ev(2, 2, 12, 0.1, status="cached"), ev(3, 2, 13, 0.2, status="cached")]
    report = replace(report, in_sample=report.in_sample + cached)
    line = counts_line(report)
    assert line.startswith(
        "4 in-sample evaluations (2 run, 2 from the store's cache, 0 clones reused;"
    ), line
    assert report.counts()["cached"] == 2


@pytest.mark.parametrize("resumable", [True, False])
def test_a_partial_report_says_how_to_go_on_only_with_a_store_to_resume_from(
    tmp_path: Path, resumable: bool
) -> None:
    """An interrupted run without --store was told to "rerun with the same --store"."""
    partial = replace(report_with(30), out_of_sample=[], stopped="interrupted by SIGTERM")
    files = write_outputs(partial, tmp_path, resumable=resumable)
    readme = files["readme"].read_text()
    assert "PARTIAL: interrupted by SIGTERM" in readme
    assert ("with the same --store to resume" in readme) == resumable
    assert ("kept no --store, so a rerun starts over: add --store PATH" in readme) != resumable
