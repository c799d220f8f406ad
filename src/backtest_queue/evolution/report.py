"""What a search leaves behind: the leaderboard, the results files and the charts.

Files written by :func:`write_outputs` into the output directory:

``results.csv``
    One row per evaluation, in-sample and out-of-sample (column ``phase``): generation
    (1-based, as in the logs), number, status, strategy, parameters, every metric (the
    columns are explained in :data:`COLUMNS`, written into ``README.txt`` too).
``results.json``
    The same evaluations plus the settings, the split, the counts by cause, the
    leaderboard and the overfitting measures (DSR per row, PBO: see :mod:`.robustness`).
``leaderboard.csv``
    The leaderboard rows (with their Deflated Sharpe Ratio).
``sharpe_by_generation.png``
    Best (among results with at least ``min_trades`` trades, the leaderboard's rule) and
    median in-sample Sharpe ratio per generation, and the best so far.
``equity_curve.png``
    The leaderboard winner's equity, in-sample then out-of-sample (see :mod:`.equity`).
``README.txt``
    What the run was (complete, or partial and why), the files and their columns.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..protocol import Metrics
from .cycle import Evaluation
from .proposer import feasible, objectives
from .search_space import Candidate

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "COLUMNS",
    "LeaderboardRow",
    "best_candidates",
    "evaluation_record",
    "leaderboard",
    "leaderboard_records",
    "leaderboard_table",
    "pareto_front",
    "plot_sharpe_by_generation",
    "sharpe_by_generation",
    "write_csv",
    "write_json",
]

#: The results files' columns that need a word, for ``README.txt`` and the docs.
COLUMNS: Final = {
    "phase": "in-sample (the search) or out-of-sample (the leaderboard's re-runs)",
    "generation": "the evolution generation, 1-based as in the logs",
    "number": "the evaluation's number (Optuna's trial number), 0-based",
    "status": "ok: a backtest ran; clone: the result of an identical candidate of this "
    "run, reused; cached: a result from the --store cache (an earlier run's backtest); "
    "failed: no result (see reason and detail)",
    "reused_from": "for a clone, the number of the evaluation whose result it reused; "
    "empty otherwise",
    "identical_results": "leaderboard: how many more candidates had exactly the same "
    "in-sample results (the same trades: a stop loss that never triggered, say) and are "
    "folded into this row, the earliest standing for them all",
    "fold_sharpes": "with --walk-forward, the Sharpe ratio of each in-sample window",
}

_METRICS: Final = (
    "sharpe", "sortino", "return_pct", "max_drawdown_pct", "trades", "win_rate",
    "profit_factor", "bars", "elapsed_ms",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderboardRow:
    """One line of the leaderboard.

    Attributes:
        rank: 1-based, by in-sample Sharpe ratio.
        candidate: the strategy.
        in_sample: its in-sample evaluation (the first one with a result).
        out_of_sample: its out-of-sample re-run, ``None`` when not run.
        pareto: whether it is on the in-sample Pareto front (no other candidate has
            both a higher Sharpe ratio and a smaller drawdown).
        alike: how many other candidates had exactly the same in-sample metrics (the
            same trades, typically: a stop loss that never triggers) and were folded
            into this row, the earliest evaluated standing for them all.
    """

    rank: int
    candidate: Candidate
    in_sample: Evaluation
    out_of_sample: Evaluation | None
    pareto: bool
    alike: int = 0


def _signature(metrics: Metrics) -> tuple[object, ...]:
    """What makes two results indistinguishable (everything but run time and name)."""
    return (
        metrics.sharpe, metrics.sortino, metrics.return_pct, metrics.max_drawdown_pct,
        metrics.trades, metrics.win_rate, metrics.profit_factor, metrics.bars,
    )  # fmt: skip


def _ranked(evaluations: Iterable[Evaluation], min_trades: int) -> list[tuple[Evaluation, int]]:
    """Distinct results by Sharpe ratio, best first, each with its count of look-alikes."""
    seen: set[Candidate] = set()
    groups: dict[tuple[object, ...], list[Evaluation]] = {}
    for evaluation in evaluations:
        m = evaluation.metrics
        if m is None or not feasible(m, min_trades):
            continue
        if evaluation.candidate in seen:
            continue
        seen.add(evaluation.candidate)
        groups.setdefault(_signature(m), []).append(evaluation)
    firsts = sorted(groups.values(), key=lambda g: (-(g[0].sharpe or 0.0), g[0].number))
    return [(group[0], len(group) - 1) for group in firsts]


def best_candidates(
    evaluations: Iterable[Evaluation], top: int = 10, *, min_trades: int = 0
) -> list[Evaluation]:
    """The ``top`` distinct candidates by Sharpe ratio, best first.

    A candidate counts once (its first evaluation with a result), and so does a group of
    candidates with exactly the same metrics (the earliest stands for the group);
    evaluations that are not :func:`~.proposer.feasible` (no defined Sharpe ratio, fewer
    than ``min_trades`` trades) are left out. Ties go to the earlier evaluation, so the order is
    deterministic.
    """
    return [evaluation for evaluation, _ in _ranked(evaluations, min_trades)[:top]]


def pareto_front(evaluations: Iterable[Evaluation], *, min_trades: int = 0) -> set[Candidate]:
    """The candidates no other candidate dominates on (Sharpe up, drawdown magnitude down),
    among those with at least ``min_trades`` trades."""
    points: dict[Candidate, tuple[float, float]] = {}
    for evaluation in evaluations:
        values = objectives(evaluation.metrics)
        if values is not None and feasible(evaluation.metrics, min_trades):
            points.setdefault(evaluation.candidate, values)
    front = set()
    for candidate, (sharpe, drawdown) in points.items():
        dominated = any(
            s >= sharpe and d <= drawdown and (s > sharpe or d < drawdown)
            for s, d in points.values()
        )
        if not dominated:
            front.add(candidate)
    return front


def leaderboard(
    evaluations: Sequence[Evaluation],
    out_of_sample: Sequence[Evaluation] = (),
    *,
    top: int = 10,
    min_trades: int = 0,
) -> list[LeaderboardRow]:
    """Rank the ``top`` candidates by in-sample Sharpe ratio (those with at least
    ``min_trades`` trades); attach their re-runs."""
    front = pareto_front(evaluations, min_trades=min_trades)
    oos = {e.candidate: e for e in out_of_sample}
    return [
        LeaderboardRow(
            rank=rank,
            candidate=e.candidate,
            in_sample=e,
            out_of_sample=oos.get(e.candidate),
            pareto=e.candidate in front,
            alike=alike,
        )
        for rank, (e, alike) in enumerate(_ranked(evaluations, min_trades)[:top], start=1)
    ]


def sharpe_by_generation(
    evaluations: Iterable[Evaluation], *, min_trades: int = 0
) -> list[tuple[int, float | None, float | None]]:
    """``(generation, best, median)`` Sharpe ratio per generation (as numbered in the
    evaluations: 1-based from :func:`.cycle.run_evolution`).

    ``best`` is over the feasible results only (at least ``min_trades`` trades: the
    leaderboard's rule, so the chart's best is a candidate the leaderboard could rank);
    ``median`` is over every defined Sharpe ratio of the generation.
    """
    defined: dict[int, list[float]] = {}
    eligible: dict[int, list[float]] = {}
    for e in evaluations:
        values = defined.setdefault(e.generation, [])
        best = eligible.setdefault(e.generation, [])
        if e.sharpe is not None:
            values.append(e.sharpe)
            if feasible(e.metrics, min_trades):
                best.append(e.sharpe)
    return [
        (g, max(eligible[g], default=None), statistics.median(v) if v else None)
        for g, v in sorted(defined.items())
    ]


def evaluation_record(evaluation: Evaluation, phase: str) -> dict[str, Any]:
    """One evaluation as a flat JSON-ready dict (metrics ``None`` when failed)."""
    c = evaluation.candidate
    record: dict[str, Any] = {
        "phase": phase,
        "generation": evaluation.generation,
        "number": evaluation.number,
        "status": evaluation.status,
        "reason": evaluation.reason,
        "detail": evaluation.detail,
        "strategy": c.name,
        "kind": c.kind,
        "params": c.param_dict,
        "sl": c.sl,
        "tp": c.tp,
        "request_id": evaluation.request_id,
        "reused_from": evaluation.source if evaluation.status == "clone" else None,
        "fold_sharpes": [m.sharpe for m in evaluation.folds] or None,
    }
    for name in _METRICS:
        record[name] = None if evaluation.metrics is None else getattr(evaluation.metrics, name)
    return record


def _row_record(row: LeaderboardRow, dsr: float | None) -> dict[str, Any]:
    def metric(e: Evaluation | None, name: str) -> Any:
        return None if e is None or e.metrics is None else getattr(e.metrics, name)

    return {
        "rank": row.rank,
        "strategy": row.candidate.name,
        "kind": row.candidate.kind,
        "params": row.candidate.describe(),
        "pareto": row.pareto,
        "identical_results": row.alike,
        "deflated_sharpe_ratio": dsr,
        "in_sample_sharpe": metric(row.in_sample, "sharpe"),
        "out_of_sample_sharpe": metric(row.out_of_sample, "sharpe"),
        "in_sample_max_drawdown_pct": metric(row.in_sample, "max_drawdown_pct"),
        "out_of_sample_max_drawdown_pct": metric(row.out_of_sample, "max_drawdown_pct"),
        "in_sample_return_pct": metric(row.in_sample, "return_pct"),
        "out_of_sample_return_pct": metric(row.out_of_sample, "return_pct"),
        "in_sample_trades": metric(row.in_sample, "trades"),
        "out_of_sample_trades": metric(row.out_of_sample, "trades"),
    }


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write flat records as CSV (dict values, e.g. ``params``, as compact JSON)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        if not records:
            return path
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        for record in records:
            writer.writerow(
                {
                    k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
                    for k, v in record.items()
                }
            )
    return path


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` as indented JSON (UTF-8)."""
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def leaderboard_records(
    rows: Sequence[LeaderboardRow], dsr: Mapping[Candidate, float] | None = None
) -> list[dict[str, Any]]:
    """The leaderboard as flat JSON-ready dicts (``dsr``: Deflated Sharpe Ratio by
    candidate, see :mod:`.robustness`)."""
    dsr = dsr or {}
    return [_row_record(row, dsr.get(row.candidate)) for row in rows]


def plot_sharpe_by_generation(
    path: Path, evaluations: Sequence[Evaluation], title: str, *, min_trades: int = 0
) -> Path:
    """Draw best and median Sharpe ratio per generation, and the best so far, into a PNG
    (best: among results with at least ``min_trades`` trades, see
    :func:`sharpe_by_generation`).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = sharpe_by_generation(evaluations, min_trades=min_trades)
    generations = [g for g, _, _ in points]
    best = [b for _, b, _ in points]
    median = [m for _, _, m in points]
    so_far: list[float | None] = []
    running: float | None = None
    for b in best:
        if b is not None:
            running = b if running is None else max(running, b)
        so_far.append(running)

    def nan(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    label = f" (>= {min_trades} trades)" if min_trades else ""
    axes.plot(generations, nan(best), marker="o", label=f"best of generation{label}")
    axes.plot(generations, nan(median), marker="s", label="median of generation")
    axes.step(generations, nan(so_far), where="post", linestyle="--", label="best so far")
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel("generation")
    axes.set_ylabel("Sharpe ratio (in-sample)")
    axes.set_xticks(generations)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=110)
    return path


def leaderboard_table(
    rows: Sequence[LeaderboardRow],
    *,
    title: str = "Leaderboard",
    note: str = "",
    dsr: Mapping[Candidate, float] | None = None,
) -> Table:
    """The leaderboard as a rich table: rank, strategy, parameters, Sharpe in and out of
    sample, max drawdown (percent), trades in and out of sample, and the Deflated Sharpe
    Ratio when ``dsr`` is given; ``note`` goes in the caption."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("strategy", no_wrap=True)
    table.add_column("parameters", no_wrap=True)
    table.add_column("Sharpe IS", justify="right")
    table.add_column("Sharpe OOS", justify="right")
    table.add_column("max DD IS", justify="right")
    table.add_column("max DD OOS", justify="right")
    table.add_column("trades IS/OOS", justify="right")
    if dsr is not None:
        table.add_column("DSR", justify="right")
    for row in rows:
        i, o = row.in_sample.metrics, row.out_of_sample and row.out_of_sample.metrics
        mark = " *" if row.pareto else ""
        cells = [
            str(row.rank),
            row.candidate.kind + mark,
            row.candidate.describe() + (f" (+{row.alike} alike)" if row.alike else ""),
            _fmt(i.sharpe if i else None, "{:.2f}"),
            _fmt(o.sharpe if o else None, "{:.2f}"),
            _fmt(i.max_drawdown_pct if i else None, "{:.1f}%"),
            _fmt(o.max_drawdown_pct if o else None, "{:.1f}%"),
            f"{i.trades if i else '-'}/{o.trades if o else '-'}",
        ]
        if dsr is not None:
            cells.append(_fmt(dsr.get(row.candidate), "{:.2f}"))
        table.add_row(*cells)
    caption = [note] if note else []
    if any(row.pareto for row in rows):
        caption.append("* on the in-sample Pareto front (Sharpe up, drawdown down)")
    if dsr is not None:
        caption.append(
            "DSR: Deflated Sharpe Ratio, the probability that the in-sample Sharpe ratio "
            "beats what the search's luck alone gives (>= 0.95: significant)"
        )
    if any(row.alike for row in rows):
        caption.append("+N alike: N more candidates with exactly the same in-sample results")
    if caption:
        table.caption = "\n".join(caption)
        table.caption_justify = "left"
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)
