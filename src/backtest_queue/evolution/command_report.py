"""What ``demo`` and ``evolve`` print when a search ends, completely or not.

Results go to stdout: the leaderboard as a table, or with ``--json`` one JSON document
(:func:`summary_document`) that a script reads with ``json.loads``. Logs go to stderr.

A search interrupted (Ctrl-C, SIGTERM) or stopped by an error after some generations
finished still leaves a report: :class:`FinishedGenerations` keeps what the evolution
told its observer, and :func:`partial_report` makes a :class:`SearchReport` of it, marked
partial (``stopped``), which is written and printed like a complete one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .records import Evaluation, EvolutionObserver, GenerationSummary, Progress

if TYPE_CHECKING:
    from .robustness import Assessment
    from .search import SearchConfig, SearchReport
    from .split import SampleSplit

__all__ = [
    "FinishedGenerations",
    "counts_line",
    "partial_report",
    "print_report",
    "report_warnings",
    "summary_document",
]

log = logging.getLogger("backtest_queue.evolution")


class FinishedGenerations:
    """An observer that passes everything on and keeps the finished in-sample
    generations' evaluations, for a partial report if the search stops early."""

    def __init__(self, observer: EvolutionObserver | None) -> None:
        self._observer = observer
        self.in_sample: list[Evaluation] = []
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<FinishedGenerations evaluations={len(self.in_sample)}>"

    def progress(self, progress: Progress) -> None:
        """See :meth:`EvolutionObserver.progress`."""
        if self._observer is not None:
            self._observer.progress(progress)

    def generation_done(self, summary: GenerationSummary) -> None:
        """See :meth:`EvolutionObserver.generation_done`."""
        if summary.phase == "in-sample":
            self.in_sample.extend(summary.evaluations)
        if self._observer is not None:
            self._observer.generation_done(summary)


def partial_report(
    finished: FinishedGenerations, config: SearchConfig, split: SampleSplit, stopped: str
) -> SearchReport | None:
    """The report of the generations that finished before the search stopped.

    Returns:
        A report with ``stopped`` set and no out-of-sample re-runs, ranked like a
        complete one (falling back to no trade minimum as :func:`.search.run_search`
        does); ``None`` when no generation finished with a result to report.
    """
    from .report import best_candidates, leaderboard
    from .search import SearchReport

    if not any(e.ok for e in finished.in_sample):
        return None
    min_trades = config.min_trades
    if not best_candidates(finished.in_sample, 1, min_trades=min_trades):
        min_trades = 0
    return SearchReport(
        config=config,
        split=split,
        in_sample=list(finished.in_sample),
        out_of_sample=[],
        leaderboard=leaderboard(finished.in_sample, top=config.top, min_trades=min_trades),
        elapsed=time.monotonic() - finished.started_at,
        min_trades=min_trades,
        stopped=stopped,
    )


def report_warnings(report: SearchReport) -> list[str]:
    """What a reader of the leaderboard must not miss: a ranking without the trade
    minimum, a #1 whose out-of-sample result rests on few trades."""
    warnings = []
    wanted = report.config.min_trades
    if wanted and report.min_trades < wanted and report.leaderboard:
        warnings.append(
            f"no strategy made {wanted} in-sample trades (--min-trades): the leaderboard "
            "ranks all of them, and a Sharpe ratio from a handful of trades is mostly luck"
        )
    if report.leaderboard and report.out_of_sample:
        first = report.leaderboard[0]
        oos = first.out_of_sample
        if oos is None or oos.metrics is None:
            warnings.append("the leaderboard's #1 has no out-of-sample result")
        elif wanted and oos.metrics.trades < wanted:
            warnings.append(
                f"the leaderboard's #1 made only {oos.metrics.trades} out-of-sample "
                f"trades, fewer than --min-trades {wanted}: its out-of-sample Sharpe ratio "
                "says little"
            )
    return warnings


def counts_line(report: SearchReport) -> str:
    """The in-sample evaluations by cause, for people: e.g. ``288 in-sample evaluations
    (281 run, 0 from the store's cache, 7 clones reused; 2 failed: 2 timeout; 31
    infeasible: fewer than 20 trades) and 10 out-of-sample re-runs in 37.6 s``."""
    counts = report.counts()
    causes = [f"{n} {key.removeprefix('failed:')}" for key, n in sorted(counts.items())
              if key.startswith("failed:")]  # fmt: skip
    failed = f"{counts['failed']} failed" + (f": {', '.join(causes)}" if causes else "")
    minimum = max(report.config.min_trades, 1)
    oos_cached = sum(e.status == "cached" for e in report.out_of_sample)
    oos_run = sum(e.status == "ok" for e in report.out_of_sample)
    oos = f"{len(report.out_of_sample)} out-of-sample re-runs"
    if report.out_of_sample:
        oos += f" ({oos_run} run, {oos_cached} from the store's cache)"
    elif report.stopped is not None:
        oos = "no out-of-sample re-runs (stopped before)"
    return (
        f"{counts['evaluations']} in-sample evaluations ({counts['ok']} run, "
        f"{counts['cached']} from the store's cache, {counts['clone']} clones reused; "
        f"{failed} (no result); {counts['infeasible']} infeasible (fewer than "
        f"{minimum} trades or no Sharpe ratio)) and {oos} in {report.elapsed:.1f} s; "
        f"{report.repeats} repeats re-asked"
        + ("" if report.real_generations is None else f", {report.real_generations} real "
           "generations")
    )  # fmt: skip


def summary_document(
    report: SearchReport,
    files: dict[str, Path],
    assessment: Assessment | None,
) -> dict[str, Any]:
    """The leaderboard and the summary as one JSON-ready document (``--json``).

    Keys: ``complete`` (bool), ``partial`` (``None`` or what was done: see
    :meth:`SearchReport.partial`), ``data_id``, ``split``, ``counts`` (by cause, as in
    ``results.json``), ``summary`` (the counts line), ``elapsed_s``, ``leaderboard``
    (rows as in ``leaderboard.csv``), ``overfitting`` (DSR and PBO, or ``None``),
    ``warnings`` and ``files`` (role -> path).
    """
    from dataclasses import asdict

    from .report import leaderboard_records

    dsr = None if assessment is None else {c: d.dsr for c, d in assessment.dsr.items()}
    return {
        "backtest_queue_version": __version__,
        "complete": report.stopped is None,
        "partial": report.partial(),
        "data_id": report.config.data_id,
        "split": {**asdict(report.split), "out_of_sample_bars": report.split.out_of_sample_bars},
        "counts": report.counts(),
        "summary": counts_line(report),
        "elapsed_s": round(report.elapsed, 3),
        "leaderboard": leaderboard_records(report.leaderboard, dsr),
        "overfitting": None if assessment is None else assessment.record(),
        "warnings": report_warnings(report),
        "files": {role: str(path) for role, path in files.items()},
    }


def print_report(
    console: Any,
    report: SearchReport,
    files: dict[str, Path],
    assessment: Assessment | None,
    *,
    as_json: bool = False,
) -> None:
    """Print the leaderboard, the counts, the warnings, the overfitting measures and the
    files to ``console`` (a rich console on stdout); with ``as_json``, print
    :func:`summary_document` instead, as one JSON document."""
    if as_json:
        text = json.dumps(summary_document(report, files, assessment), indent=2)
        console.file.write(text + "\n")
        console.file.flush()
        return
    from .report import leaderboard_table
    from .robustness import describe

    split = report.split
    title = (
        f"Top {len(report.leaderboard)} on {report.config.data_id}: in-sample "
        f"{split.in_sample[0][:10]}..{split.in_sample[1][:10]}, out-of-sample "
        f"{split.out_of_sample[0][:10]}..{split.out_of_sample[1][:10]}"
    )
    if report.stopped is not None:
        title = (
            f"PARTIAL ({report.stopped} after {report.generations_done} of "
            f"{report.config.generations} generations; in-sample only): {title}"
        )
    note = ""
    if report.min_trades:
        note = f"ranked: strategies with at least {report.min_trades} in-sample trades"
    elif report.config.min_trades:
        note = (
            f"ranked: all strategies (none made --min-trades {report.config.min_trades} "
            "in-sample trades)"
        )
    if report.config.walk_forward >= 2:
        note += (
            f"{'; ' if note else ''}Sharpe IS: mean - sd of the Sharpe ratios over "
            f"{report.config.walk_forward} {report.config.wf_mode} in-sample windows"
        )
    dsr = None if assessment is None else {c: d.dsr for c, d in assessment.dsr.items()}
    console.print(leaderboard_table(report.leaderboard, title=title, note=note, dsr=dsr))
    console.print(counts_line(report), highlight=False, soft_wrap=True)
    for warning in report_warnings(report):
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if assessment is not None:
        console.print(describe(assessment), highlight=False, soft_wrap=True)
    for path in files.values():
        console.print(f"  wrote {path}", highlight=False, soft_wrap=True)
