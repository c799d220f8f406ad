"""Leaderboard, Pareto front and output files, from hand-made evaluations."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

from backtest_queue import Metrics
from backtest_queue.evolution.cycle import Evaluation, Status
from backtest_queue.evolution.report import (
    best_candidates,
    leaderboard,
    leaderboard_table,
    pareto_front,
    sharpe_by_generation,
)
from backtest_queue.evolution.search import SearchConfig, SearchReport, write_outputs
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.evolution.split import SampleSplit, split_bars


def ev(
    number: int,
    generation: int,
    fast: int,
    sharpe: float | None,
    dd: float = -5.0,
    status: Status = "ok",
) -> Evaluation:
    candidate = Candidate.make("sma_cross", {"fast": fast, "slow": 100})
    metrics = None
    if status != "failed":
        metrics = Metrics(
            strategy_name=candidate.name, sharpe=sharpe, max_drawdown_pct=dd, trades=7
        )
    return Evaluation(
        number=number,
        generation=generation,
        candidate=candidate,
        status=status,
        metrics=metrics,
        reason="timeout" if status == "failed" else None,
        request_id=f"r{number}",
    )


EVALUATIONS = [
    ev(0, 1, 10, 0.5, dd=-4.0),
    ev(1, 1, 11, 1.0, dd=-9.0),
    ev(2, 1, 12, None),  # no trades: no Sharpe
    ev(3, 1, 13, None, status="failed"),
    ev(4, 2, 11, 1.0, dd=-9.0, status="clone"),
    ev(5, 2, 14, 1.0, dd=-3.0),  # ties #1 on Sharpe, later: ranked after it
    ev(6, 2, 15, 0.2, dd=-2.0),
    ev(7, 2, 16, 0.2, dd=-2.0),  # the same results as #6: folded into its row
]


def test_leaderboard_ranks_distinct_candidates_by_sharpe() -> None:
    best = best_candidates(EVALUATIONS, top=10)
    assert [e.number for e in best] == [1, 5, 0, 6]  # #4 is #1's clone
    assert [e.number for e in best_candidates(EVALUATIONS, top=2)] == [1, 5]
    assert best_candidates(EVALUATIONS, min_trades=8) == []  # each made 7 trades
    oos = [ev(100, 0, 14, -0.3)]
    rows = leaderboard(EVALUATIONS, oos, top=3)
    assert [r.rank for r in rows] == [1, 2, 3]
    assert rows[1].out_of_sample is not None
    assert rows[1].out_of_sample.sharpe == -0.3
    assert rows[0].out_of_sample is None
    # #1 (1.0, 9) is dominated by #5 (1.0, 3); #0 by #5 too; #6 has the least drawdown.
    assert [r.pareto for r in rows] == [False, True, False]
    assert pareto_front(EVALUATIONS) == {EVALUATIONS[i].candidate for i in (5, 6, 7)}
    assert sharpe_by_generation(EVALUATIONS) == [(1, 1.0, 0.75), (2, 1.0, 0.6)]
    assert [(r.in_sample.number, r.alike) for r in leaderboard(EVALUATIONS)] == [
        (1, 0), (5, 0), (0, 0), (6, 1)
    ]  # fmt: skip
    table = leaderboard_table(rows)
    assert table.row_count == 3


def test_outputs_are_written_and_parse(tmp_path: Path) -> None:
    split = split_bars([datetime(2020, 1, d) for d in range(1, 11)], "X", fraction=0.7)
    assert (split.in_sample_bars, split.out_of_sample_bars) == (7, 3)
    assert split.in_sample == ("2020-01-01T00:00:00", "2020-01-07T00:00:00")
    assert split.out_of_sample == ("2020-01-08T00:00:00", "2020-01-10T00:00:00")
    report = SearchReport(
        config=SearchConfig(generations=2, population=4, min_trades=0),
        split=SampleSplit(
            data_id="X", bars=10, in_sample_bars=7, in_sample=("a", "b"), out_of_sample=("c", "d")
        ),
        in_sample=EVALUATIONS,
        out_of_sample=[ev(100, 0, 14, -0.3)],
        leaderboard=leaderboard(EVALUATIONS, [ev(100, 0, 14, -0.3)]),
        elapsed=1.5,
    )
    files = write_outputs(report, tmp_path / "out")
    assert set(files) == {
        "results_csv", "results_json", "leaderboard_csv", "sharpe_by_generation", "readme"
    }  # fmt: skip
    with files["results_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert rows[3]["status"] == "failed"
    assert rows[3]["sharpe"] == ""
    assert json.loads(rows[0]["params"]) == {"fast": 10, "slow": 100}
    assert rows[-1]["phase"] == "out-of-sample"
    document = json.loads(files["results_json"].read_text())
    assert document["counts"] == {
        "evaluations": 8, "ok": 6, "clone": 1, "cached": 0, "failed": 1, "failed:timeout": 1,
        "infeasible": 1,  # no Sharpe ratio (no trades)
    }  # fmt: skip
    assert document["leaderboard"][1]["out_of_sample_sharpe"] == -0.3
    assert [e["generation"] for e in document["evaluations"][:8]] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert document["complete"] is True
    assert document["partial"] is None
    # The columns that need a word are explained, in the JSON and in README.txt.
    assert {"reused_from", "identical_results", "generation"} <= set(document["columns"])
    assert "identical_results" in files["readme"].read_text()
    assert files["sharpe_by_generation"].read_bytes().startswith(b"\x89PNG")
