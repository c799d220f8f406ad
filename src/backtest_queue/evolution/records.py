"""What the evolution cycle takes and gives: run settings, evaluations, the result
cache, progress snapshots and the observer interface (see :mod:`.cycle`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from ..protocol import BacktestRequest, Metrics
from .search_space import Candidate

__all__ = [
    "CycleHook",
    "Evaluation",
    "EvolutionObserver",
    "GenerationSummary",
    "Progress",
    "ResultCache",
    "RunSettings",
    "Status",
]

#: How an evaluation ended: a result, a reused result, a result from a store's cache, or
#: no result.
Status = Literal["ok", "clone", "cached", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """What every request of a search shares besides the strategy.

    Attributes:
        data_id: the service's dataset id, e.g. ``"EURUSD-H1"``.
        start: inclusive ISO-8601 lower bound on the bars used, or ``None``.
        end: inclusive ISO-8601 upper bound on the bars used, or ``None``.
        cash: starting cash, in the dataset's quote currency.
        commission: commission per trade, as a fraction of the trade value.
    """

    data_id: str = "EURUSD-H1"
    start: str | None = None
    end: str | None = None
    cash: float = 10_000.0
    commission: float = 0.0002

    def request_for(self, candidate: Candidate) -> BacktestRequest:
        """A new request (fresh ``request_id``) for ``candidate`` with these settings."""
        return BacktestRequest(
            strategy=candidate.strategy(),
            data_id=self.data_id,
            start=self.start,
            end=self.end,
            cash=self.cash,
            commission=self.commission,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """How one proposal was evaluated.

    Attributes:
        number: the proposal's number (Optuna's trial number for an OptunaProposer).
        generation: the generation it belongs to, 1-based (as in the logs, the
            generation summaries and ``results.csv``).
        candidate: the strategy.
        status: ``"ok"`` (a result from the service), ``"clone"`` (the result of an
            identical candidate of this run, reused), ``"cached"`` (a result from the
            dispatcher's store: an earlier run's backtest, not run again), ``"failed"``
            (no result; see ``reason``).
        metrics: the result, ``None`` when failed.
        reason: why it failed (an outcome's reason: ``"timeout"``, ``"disconnected"``,
            ``"service_error"``, ``"shutdown"``), ``None`` otherwise.
        detail: one line for people (the service's error, or which evaluation a clone
            reused).
        request_id: the request whose outcome this is (for a clone, the original's).
        source: for a clone, the number of the evaluation whose result it reused; else
            its own number (``reused_from`` in the results files, empty unless a clone).
        folds: with walk-forward windows, the result of each window in order (``metrics``
            is then their combination, see :mod:`.walkforward`); else empty.
    """

    number: int
    generation: int
    candidate: Candidate
    status: Status
    metrics: Metrics | None = None
    reason: str | None = None
    detail: str = ""
    request_id: str | None = None
    source: int = -1
    folds: tuple[Metrics, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether it has a result (its own or a clone's)."""
        return self.metrics is not None

    @property
    def sharpe(self) -> float | None:
        """The Sharpe ratio, ``None`` when failed or undefined."""
        return None if self.metrics is None else self.metrics.sharpe


@dataclass(frozen=True, slots=True)
class _Cached:
    metrics: Metrics
    request_id: str
    number: int


class ResultCache:
    """Results by ``(candidate, run settings)``: what makes clones free.

    Share one between :func:`run_evolution` calls to reuse results across them.
    """

    def __init__(self) -> None:
        self._results: dict[tuple[Candidate, RunSettings], _Cached] = {}
        self.hits = 0

    def __repr__(self) -> str:
        return f"<ResultCache results={len(self._results)} hits={self.hits}>"

    def __len__(self) -> int:
        return len(self._results)

    def _get(self, key: tuple[Candidate, RunSettings]) -> _Cached | None:
        cached = self._results.get(key)
        if cached is not None:
            self.hits += 1
        return cached

    def _put(self, key: tuple[Candidate, RunSettings], cached: _Cached) -> None:
        self._results.setdefault(key, cached)


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """A snapshot of a running evolution, for progress displays.

    Attributes:
        phase: a label for the run, e.g. ``"in-sample"``.
        generation: the generation being evaluated, 1-based (0 before the first ask).
        generations: how many generations the run has.
        planned: evaluations the run will make (``generations * population``).
        evaluated: evaluations finished (results, clones and failures).
        results: results that reached the collector (clones not counted).
        clones: evaluations that reused an identical candidate's result.
        failures: evaluations that ended without a result (timeout, lost connection,
            service error: see :attr:`Evaluation.reason`).
        infeasible: evaluations with a result that does not count: fewer than the run's
            ``min_trades`` trades (or none), or an undefined Sharpe ratio (see
            :func:`~.proposer.feasible`).
        queued: requests in the dispatcher's send queue now.
        pending: requests in flight now.
        connected: whether a service is up.
        best_sharpe: the best Sharpe ratio of a feasible result so far in this run (the
            leaderboard's rule), or ``None``.
        elapsed: seconds since the run started.
    """

    phase: str
    generation: int
    generations: int
    planned: int
    evaluated: int
    results: int
    clones: int
    failures: int
    infeasible: int
    queued: int
    pending: int
    connected: bool
    best_sharpe: float | None
    elapsed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationSummary:
    """One finished generation.

    Attributes:
        phase: the run's label.
        generation: 1-based.
        generations: how many the run has.
        evaluations: the generation's evaluations, in ask order.
        best_sharpe: the generation's best Sharpe ratio among feasible results (the
            leaderboard's rule; ``None``: none).
        median_sharpe: the median of all its defined Sharpe ratios, feasible or not.
        best_so_far: the best feasible Sharpe ratio of the run up to and including it.
        clones: its evaluations that were clones.
        failures: its evaluations without a result.
        infeasible: its evaluations with a result that does not count (too few trades).
        elapsed: seconds since the run started.
        cached: its evaluations whose result came from the store's cache.
    """

    phase: str
    generation: int
    generations: int
    evaluations: tuple[Evaluation, ...]
    best_sharpe: float | None
    median_sharpe: float | None
    best_so_far: float | None
    clones: int
    failures: int
    infeasible: int
    elapsed: float
    cached: int = 0


class EvolutionObserver(Protocol):
    """Receives progress from a running evolution (called on the event loop: be quick)."""

    def progress(self, progress: Progress) -> None:
        """A snapshot after each cycle and each arriving outcome."""
        ...

    def generation_done(self, summary: GenerationSummary) -> None:
        """A generation finished and was told to the proposer."""
        ...


#: Awaited at the end of every cycle with its progress snapshot. A slow hook stalls the
#: cycle - and only the cycle.
CycleHook = Callable[[Progress], Awaitable[None]]
