"""Live progress of an evolution: a rich progress bar on a terminal, log lines elsewhere.

Both classes implement :class:`~backtest_queue.evolution.cycle.EvolutionObserver`; use
:func:`make_observer` to get the right one for the console.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .cycle import GenerationSummary, Progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichBar
    from rich.progress import TaskID

__all__ = ["LogProgress", "RichProgress", "make_observer"]

log = logging.getLogger("backtest_queue.evolution")


def _sharpe(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_line(s: GenerationSummary) -> str:
    """One line for a finished generation: failed = no result (transport, service error),
    infeasible = a result with too few trades; best = best feasible Sharpe ratio;
    "from the cache" (only when there are some) = results a store kept from an earlier run."""
    done = len(s.evaluations)
    cached = f"{s.cached} from the cache, " if s.cached else ""
    return (
        f"{s.phase} generation {s.generation}/{s.generations}: {done} evaluated "
        f"({cached}{s.clones} clones, {s.failures} failed, {s.infeasible} infeasible); "
        f"Sharpe best {_sharpe(s.best_sharpe)}, "
        f"median {_sharpe(s.median_sharpe)}, best so far {_sharpe(s.best_so_far)} "
        f"[{s.elapsed:.1f} s]"
    )


class LogProgress(AbstractContextManager["LogProgress"]):
    """Progress as log lines on ``backtest_queue.evolution`` (for pipes and log files).

    One INFO line per finished generation, and a line at most every ``interval``
    seconds while a run is waiting (queue depth, pending, results). A context manager
    that does nothing, like :class:`RichProgress`'s, so the two are interchangeable.
    """

    def __init__(self, *, interval: float = 5.0) -> None:
        self._interval = interval
        self._last = time.monotonic()

    def __repr__(self) -> str:
        return f"<LogProgress interval={self._interval:g}s>"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def progress(self, progress: Progress) -> None:
        """See :meth:`EvolutionObserver.progress`."""
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        state = "connected" if progress.connected else "no service yet"
        log.info("%s: %d/%d evaluated, %d results, %d failed, %d infeasible; queued %d, "
                 "pending %d (%s); best Sharpe %s", progress.phase, progress.evaluated,
                 progress.planned, progress.results, progress.failures, progress.infeasible,
                 progress.queued, progress.pending, state,
                 _sharpe(progress.best_sharpe))  # fmt: skip

    def generation_done(self, summary: GenerationSummary) -> None:
        """See :meth:`EvolutionObserver.generation_done`."""
        self._last = time.monotonic()
        log.info("%s", summary_line(summary))


class RichProgress(AbstractContextManager["RichProgress"]):
    """A rich progress bar: phase, generation, evaluations, results, queue, best Sharpe.

    Use it as a context manager around the run (it owns a live display). Log records
    printed meanwhile appear above the bar when they go to the same console.
    """

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichBar

        self._console = console
        self._bar: RichBar = RichBar(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}[/] gen {task.fields[gen]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "results {task.fields[results]} · queued {task.fields[queued]} · "
                "pending {task.fields[pending]} · {task.fields[link]} · "
                "best Sharpe [bold]{task.fields[best]}[/]"
            ),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __repr__(self) -> str:
        return f"<RichProgress phases={list(self._tasks)}>"

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def progress(self, progress: Progress) -> None:
        """See :meth:`EvolutionObserver.progress`."""
        fields: dict[str, Any] = {
            "gen": f"{progress.generation}/{progress.generations}",
            "results": progress.results,
            "queued": progress.queued,
            "pending": progress.pending,
            "link": "connected" if progress.connected else "[yellow]no service yet[/]",
            "best": _sharpe(progress.best_sharpe),
        }
        task = self._tasks.get(progress.phase)
        if task is None:  # the fields go in at once: the bar renders from another thread
            task = self._bar.add_task(progress.phase, total=progress.planned, **fields)
            self._tasks[progress.phase] = task
        self._bar.update(task, completed=progress.evaluated, **fields)

    def generation_done(self, summary: GenerationSummary) -> None:
        """See :meth:`EvolutionObserver.generation_done`."""
        self._bar.console.print(summary_line(summary), highlight=False, style="dim")


def make_observer(console: Console) -> LogProgress | RichProgress:
    """A :class:`RichProgress` when ``console`` is a terminal, else a :class:`LogProgress`."""
    if console.is_terminal and not console.is_dumb_terminal:
        return RichProgress(console)
    return LogProgress()
