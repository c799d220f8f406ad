"""The whole job behind ``backtest-queue demo`` and ``evolve``, as a library call.

:func:`run_search`, inside an open dispatcher:

1. evolves strategies on the in-sample bars (the first 70 % by default) with
   :func:`~backtest_queue.evolution.cycle.run_evolution` and an Optuna sampler (TPE by
   default), each candidate scored on the whole in-sample part or, with
   ``walk_forward``, on K windows of it (:mod:`.walkforward`);
2. re-runs the best ``top`` distinct candidates (by in-sample Sharpe ratio) on the
   out-of-sample bars, through the same cycle with a :class:`ListProposer`;
3. returns a :class:`SearchReport` with the leaderboard.

:func:`write_outputs` then writes the files described in :mod:`.report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import BacktestQueueError, UsageError
from .cycle import (
    CycleHook,
    Evaluation,
    EvolutionObserver,
    GenerationSummary,
    Progress,
    ResultCache,
    RunSettings,
    run_evolution,
)
from .proposer import ListProposer, OptunaProposer, Proposer, SamplerName, feasible
from .report import (
    COLUMNS,
    LeaderboardRow,
    best_candidates,
    evaluation_record,
    leaderboard,
    leaderboard_records,
    plot_sharpe_by_generation,
    write_csv,
    write_json,
)
from .search_space import SearchSpace
from .split import SampleSplit
from .walkforward import WalkForwardMode, combiner

if TYPE_CHECKING:
    import pandas as pd

    from ..dispatcher import Dispatcher
    from .robustness import Assessment

__all__ = ["SearchConfig", "SearchFailed", "SearchReport", "run_search", "write_outputs"]

log = logging.getLogger("backtest_queue.evolution")


class SearchFailed(BacktestQueueError):
    """The search cannot go on: e.g. the whole first generation failed (wrong dataset id,
    a service that cannot run these strategies)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchConfig:
    """Settings of a search.

    Attributes:
        generations: evolution generations, >= 1.
        population: candidates per generation (NSGA-II's population), >= 1.
        sampler: the Optuna sampler, ``"tpe"``, ``"nsga2"`` or ``"random"`` (see
            :class:`OptunaProposer` and benchmarks/README.md for the measurement behind
            the default).
        seed: the optimizer's random seed (``None``: a different search every run).
        data_id: the dataset to search on.
        in_sample_fraction: share of the bars to evolve on; the rest is out-of-sample.
        top: how many of the best candidates to re-run out-of-sample and rank.
        min_trades: the fewest in-sample trades a candidate needs to rank, and to be a
            feasible solution for the optimizer (0: one trade). Sharpe ratios from a handful
            of trades are mostly luck.
        mutation_prob: NSGA-II's chance to redraw each parameter of a child. Half of
            every genome is inactive (the other kinds' parameters), so Optuna's default
            of 1 / 10 parameters mutates about one active gene every other child, and
            the demo's population collapsed onto one strategy within a few generations;
            0.4 keeps it exploring (``None``: Optuna's default).
        cash: starting cash per backtest, in the dataset's quote currency.
        commission: commission per trade, as a fraction of the trade value.
        space: the search space.
        cycle_interval: the longest an evolution cycle waits for outcomes, in seconds.
        walk_forward: K >= 2 scores every candidate on K windows of the in-sample bars
            by mean minus standard deviation of their Sharpe ratios (see
            :mod:`.walkforward`; :func:`run_search` then needs the ``windows``); 0: one
            in-sample run per candidate.
        wf_mode: the windows, ``"rolling"`` (disjoint) or ``"anchored"`` (expanding).
    """

    generations: int = 12
    population: int = 24
    sampler: SamplerName = "tpe"
    seed: int | None = 7
    data_id: str = "EURUSD-H1"
    in_sample_fraction: float = 0.7
    top: int = 10
    min_trades: int = 20
    mutation_prob: float | None = 0.4
    cash: float = 10_000.0
    commission: float = 0.0002
    space: SearchSpace = field(default_factory=SearchSpace)
    cycle_interval: float = 0.25
    walk_forward: int = 0
    wf_mode: WalkForwardMode = "rolling"


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchReport:
    """What a search found.

    Attributes:
        config: its settings.
        split: where the bars were cut.
        in_sample: every in-sample evaluation, by generation and ask order.
        out_of_sample: the re-runs of the leaderboard's candidates, best first.
        leaderboard: the best ``config.top`` candidates with both results.
        elapsed: wall time of the search, in seconds.
        min_trades: the fewest in-sample trades the leaderboard required: the
            configured minimum, or 0 when no candidate reached it.
        repeats: candidates the optimizer proposed again and re-asked (not evaluated,
            not counted: see :class:`OptunaProposer`); 0 for a proposer that does not
            count them.
        real_generations: generations as the optimizer counted them (NSGA-II: told
            trials span this many), ``None`` when it does not say.
        stopped: why the search stopped before its end (``"interrupted by SIGINT"``,
            say): the report is then partial, made of the generations finished (see
            :attr:`generations_done`), without out-of-sample re-runs; ``None`` when the
            search ran to its end.
    """

    config: SearchConfig
    split: SampleSplit
    in_sample: list[Evaluation]
    out_of_sample: list[Evaluation]
    leaderboard: list[LeaderboardRow]
    elapsed: float
    min_trades: int = 0
    repeats: int = 0
    real_generations: int | None = None
    stopped: str | None = None

    @property
    def generations_done(self) -> int:
        """In-sample generations finished (every one of them, unless :attr:`stopped`)."""
        return max((e.generation for e in self.in_sample), default=0)

    def partial(self) -> dict[str, Any] | None:
        """What a partial report holds, for the results files; ``None`` when complete."""
        if self.stopped is None:
            return None
        return {
            "stopped": self.stopped,
            "generations_done": self.generations_done,
            "generations": self.config.generations,
            "out_of_sample": "run" if self.out_of_sample else "not run",
        }

    def counts(self) -> dict[str, int]:
        """In-sample evaluations in total and by cause.

        Keys: ``evaluations``; by status ``ok`` (a backtest ran), ``clone``, ``cached``
        (from the store's result cache), ``failed`` (no result);
        ``failed:<reason>`` per outcome reason (``timeout``, ``service_error``, ...);
        ``infeasible``: results (own or reused) with fewer than ``config.min_trades``
        trades or an undefined Sharpe ratio, which the optimizer was told as constraint
        violations and the leaderboard does not rank.
        """
        counts = {"evaluations": len(self.in_sample), "ok": 0, "clone": 0, "cached": 0}
        counts["failed"] = 0
        counts["infeasible"] = 0
        for e in self.in_sample:
            counts[e.status] += 1
            if e.metrics is None:
                key = f"failed:{e.reason}"
                counts[key] = counts.get(key, 0) + 1
            elif not feasible(e.metrics, self.config.min_trades):
                counts["infeasible"] += 1
        return counts


class _FailFast:
    """Passes progress on; stops the search when its whole first generation failed."""

    def __init__(self, observer: EvolutionObserver | None) -> None:
        self._observer = observer

    def progress(self, progress: Progress) -> None:
        if self._observer is not None:
            self._observer.progress(progress)

    def generation_done(self, summary: GenerationSummary) -> None:
        if self._observer is not None:
            self._observer.generation_done(summary)
        if summary.generation == 1 and not any(e.ok for e in summary.evaluations):
            first = summary.evaluations[0]
            raise SearchFailed(
                f"every evaluation of the first generation failed, e.g. #{first.number}: "
                f"{first.reason}: {first.detail}"
            )


async def run_search(
    dispatcher: Dispatcher,
    config: SearchConfig,
    split: SampleSplit,
    *,
    proposer: Proposer | None = None,
    observer: EvolutionObserver | None = None,
    cycle_hook: CycleHook | None = None,
    windows: Sequence[tuple[str, str]] = (),
) -> SearchReport:
    """Evolve in-sample, re-run the best out-of-sample, rank (see the module docstring).

    Call it inside the dispatcher's ``async with`` block; it owns the dispatcher's outcome
    stream while it runs.

    Args:
        dispatcher: an open dispatcher whose services have ``config.data_id``.
        config: the search settings.
        split: the in-sample / out-of-sample bounds (see :func:`.split.split_bars`).
        proposer: the optimizer (default: :class:`OptunaProposer` with ``config.sampler``
            and ``config.seed``).
        observer: receives progress from both runs.
        cycle_hook: awaited at the end of every cycle of both runs.
        windows: with ``config.walk_forward``, its K in-sample windows as ISO-8601
            ``(start, end)`` bounds (:func:`.walkforward.windows`).

    Returns:
        The report.

    Raises:
        SearchFailed: the whole first generation failed.
        UsageError: bad settings (see :func:`run_evolution`), or ``windows`` that do not
            match ``config.walk_forward``.
    """
    started = time.monotonic()
    if config.walk_forward >= 2 and len(windows) != config.walk_forward:
        raise UsageError(
            f"walk_forward={config.walk_forward} needs as many windows, got {len(windows)}"
        )
    run = RunSettings(
        data_id=config.data_id,
        start=split.in_sample[0],
        end=split.in_sample[1],
        cash=config.cash,
        commission=config.commission,
    )
    if proposer is None:
        proposer = OptunaProposer(
            sampler=config.sampler,
            seed=config.seed,
            population=config.population,
            space=config.space,
            min_trades=config.min_trades,
            mutation_prob=config.mutation_prob,
        )
    cache = ResultCache()
    runs: list[RunSettings] = [run]
    combine = None
    if config.walk_forward >= 2:
        runs = [replace(run, start=a, end=b) for a, b in windows]
        combine = combiner(config.wf_mode)
    in_sample = await run_evolution(
        dispatcher, proposer, generations=config.generations, population=config.population,
        run=runs, combine=combine, cache=cache, observer=_FailFast(observer), cycle_hook=cycle_hook,
        cycle_interval=config.cycle_interval, phase="in-sample",
        min_trades=config.min_trades,
    )  # fmt: skip
    min_trades = config.min_trades
    if not best_candidates(in_sample, 1, min_trades=min_trades):
        log.warning("no candidate made %d trades in-sample; ranking all of them", min_trades)
        min_trades = 0
    best = [e.candidate for e in best_candidates(in_sample, config.top, min_trades=min_trades)]
    out_of_sample: list[Evaluation] = []
    if best:
        oos_run = replace(run, start=split.out_of_sample[0], end=split.out_of_sample[1])
        out_of_sample = await run_evolution(
            dispatcher, ListProposer(best), generations=1, population=len(best), run=oos_run,
            cache=cache, observer=observer, cycle_hook=cycle_hook,
            cycle_interval=config.cycle_interval, phase="out-of-sample",
        )  # fmt: skip
    else:
        log.warning("no candidate had a defined Sharpe ratio: nothing to re-run out-of-sample")
    return SearchReport(
        config=config,
        split=split,
        in_sample=in_sample,
        out_of_sample=out_of_sample,
        leaderboard=leaderboard(in_sample, out_of_sample, top=config.top, min_trades=min_trades),
        elapsed=time.monotonic() - started,
        min_trades=min_trades,
        repeats=int(getattr(proposer, "repeats", 0)),
        real_generations=getattr(proposer, "generations", None),
    )


def write_outputs(
    report: SearchReport,
    out_dir: Path,
    *,
    bars: pd.DataFrame | None = None,
    assessment: Assessment | None = None,
    resumable: bool = True,
) -> dict[str, Path]:
    """Write the results files and charts (see :mod:`.report`) into ``out_dir``.

    Args:
        report: what :func:`run_search` returned.
        out_dir: the output directory (created if missing; files in it are replaced).
        bars: the dataset's bars, to draw the winner's equity curve; ``None`` skips it.
        assessment: DSR and PBO (:func:`.robustness.assess`), written into
            ``results.json`` (``overfitting``) and the leaderboard files.
        resumable: whether the run kept a ``--store`` (a partial report's README then
            says to rerun with it; without one, that a rerun starts over).

    Returns:
        File role -> path, for the files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [evaluation_record(e, "in-sample") for e in report.in_sample]
    records += [evaluation_record(e, "out-of-sample") for e in report.out_of_sample]
    dsr = None if assessment is None else {c: d.dsr for c, d in assessment.dsr.items()}
    board = leaderboard_records(report.leaderboard, dsr)
    config = asdict(report.config)
    document: dict[str, Any] = {
        "backtest_queue_version": __version__,
        "complete": report.stopped is None,
        "partial": report.partial(),
        "config": config,
        "split": {**asdict(report.split), "out_of_sample_bars": report.split.out_of_sample_bars},
        "counts": report.counts(),
        "repeats_reasked": report.repeats,
        "real_generations": report.real_generations,
        "elapsed_s": round(report.elapsed, 3),
        "overfitting": None if assessment is None else assessment.record(),
        "leaderboard": board,
        "columns": dict(COLUMNS),
        "evaluations": records,
    }
    files = {
        "results_csv": write_csv(out_dir / "results.csv", records),
        "results_json": write_json(out_dir / "results.json", document),
        "leaderboard_csv": write_csv(out_dir / "leaderboard.csv", board),
        "sharpe_by_generation": plot_sharpe_by_generation(
            out_dir / "sharpe_by_generation.png",
            report.in_sample,
            f"{report.config.data_id} in-sample ({report.split.in_sample_bars} bars), "
            f"population {report.config.population}, {report.config.sampler}, "
            f"seed {report.config.seed}",
            min_trades=report.min_trades,
        ),
    }
    if bars is not None and report.leaderboard:
        files["equity_curve"] = _write_equity(report, out_dir, bars)
    files["readme"] = _write_readme(out_dir / "README.txt", report, files, resumable)
    return files


def resume_hint(resumable: bool) -> str:
    """How to go on after an interrupt: with a ``--store``, rerun; without, start over."""
    if resumable:
        return (
            "rerun the same command with the same --store to resume: the finished "
            "backtests come from its cache"
        )
    return "this run kept no --store, so a rerun starts over: add --store PATH to make it resumable"


def _write_readme(
    path: Path, report: SearchReport, files: dict[str, Path], resumable: bool = True
) -> Path:
    """A few lines a person opening the directory reads first."""
    config = report.config
    hint = resume_hint(resumable)
    if report.stopped is None:
        state = f"complete: {config.generations} generations of {config.population}"
    else:
        state = (
            f"PARTIAL: {report.stopped} after {report.generations_done} of "
            f"{config.generations} generations of {config.population}; the leaderboard "
            "ranks the in-sample results of the generations done"
            + ("" if report.out_of_sample else ", without out-of-sample re-runs")
            + f". {hint[0].upper()}{hint[1:]}."
        )
    lines = [
        f"backtest-queue {__version__} search on {config.data_id} with {config.sampler}, "
        f"seed {config.seed}",
        state,
        "",
        "files:",
        *(f"  {p.name}" for p in files.values()),
        "",
        "columns:",
        *(f"  {name}: {text}" for name, text in COLUMNS.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_equity(report: SearchReport, out_dir: Path, bars: pd.DataFrame) -> Path:
    from .equity import equity_segments, plot_equity

    row = report.leaderboard[0]
    cut = report.split.in_sample_bars
    run = RunSettings(cash=report.config.cash, commission=report.config.commission)
    segments = equity_segments(
        row.candidate, [("in-sample", bars.iloc[:cut]), ("out-of-sample", bars.iloc[cut:])], run
    )
    for segment, evaluation in zip(segments, (row.in_sample, row.out_of_sample), strict=True):
        # Under walk-forward the in-sample result combines windows: nothing to compare.
        combined = evaluation is not None and bool(evaluation.folds)
        reported = None if evaluation is None or evaluation.metrics is None or combined else (
            evaluation.metrics.return_pct
        )  # fmt: skip
        if reported is not None and abs(reported - segment.return_pct) > 1e-6 * max(
            1.0, abs(reported)
        ):
            log.warning("the %s equity curve (return %.4f %%) disagrees with the service's "
                        "result (%.4f %%): is the service running another engine?",
                        segment.label, segment.return_pct, reported)  # fmt: skip
    title = f"#1 {row.candidate.kind} {row.candidate.describe()} on {report.config.data_id}"
    return plot_equity(out_dir / "equity_curve.png", title, segments, report.config.cash)
