"""Where candidates come from: the :class:`Proposer` interface and its implementations.

A proposer is asked for a batch of candidates and later told how each one did. The
evolution cycle calls it once per generation each way, from a worker thread (so a slow
optimizer never blocks the event loop, and with it the dispatcher's flusher), never
from two threads at once.

* :class:`NSGAIIProposer` - Optuna's ask/tell interface with the NSGA-II sampler (a
  genetic algorithm), two objectives: Sharpe ratio (maximised) and the magnitude of the
  maximum drawdown in percent (minimised).
* :class:`ListProposer` - a fixed list of candidates (re-runs, out-of-sample checks,
  tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol import Metrics
from .search_space import Candidate, SearchSpace

if TYPE_CHECKING:
    import optuna

__all__ = ["ListProposer", "NSGAIIProposer", "Proposal", "Proposer", "objectives"]


@dataclass(frozen=True, slots=True)
class Proposal:
    """One candidate a proposer asked to be evaluated.

    Attributes:
        number: the proposer's id for it, unique within the proposer (Optuna's trial
            number for :class:`NSGAIIProposer`), increasing in ask order.
        candidate: the strategy to evaluate.
    """

    number: int
    candidate: Candidate


class Proposer(Protocol):
    """Proposes candidates and learns from their results (an optimizer's ask/tell)."""

    def ask(self, count: int) -> list[Proposal]:
        """Return ``count`` new proposals (numbers increasing)."""
        ...

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        """Report how every proposal of the last :meth:`ask` did, in ask order.

        Args:
            results: ``(proposal, metrics)`` pairs; ``metrics`` is ``None`` when the
                evaluation failed (timeout, service error, ...): a failed trial, not a
                score.
        """
        ...


def objectives(metrics: Metrics | None) -> tuple[float, float] | None:
    """The two objectives of a result: ``(sharpe, abs(max_drawdown_pct))``.

    Returns:
        ``None`` when there is no result, or its Sharpe ratio or drawdown is undefined
        (a run without trades, say): such a trial is told as failed, never given an
        invented score.
    """
    if metrics is None or metrics.sharpe is None or metrics.max_drawdown_pct is None:
        return None
    return metrics.sharpe, abs(metrics.max_drawdown_pct)


def silence_optuna() -> None:
    """Set Optuna's logger to WARNING (it logs every trial at INFO)."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


class NSGAIIProposer:
    """Optuna's NSGA-II behind the :class:`Proposer` interface.

    Objectives: Sharpe ratio (maximise), ``abs(max_drawdown_pct)`` (minimise). A failed
    evaluation, or one whose objectives are undefined, is told as ``TrialState.FAIL``.
    With ``min_trades``, a result with fewer trades is a *constraint violation*
    (``min_trades - trades > 0``): NSGA-II ranks every feasible trial above it, so a
    lucky handful of trades cannot lead the search. Same seed, same tells in the same
    order: same proposals.

    Args:
        seed: the sampler's random seed (``None``: not reproducible).
        population: NSGA-II's population size (use the evolution's population).
        space: the search space.
        min_trades: the fewest closed trades a feasible result has (0: no constraint).
        mutation_prob: the chance that a child's parameter is drawn afresh instead of
            inherited (``None``: Optuna's default, 1 / number of parameters).

    Attributes:
        study: the Optuna study (in memory): every trial, its state and values.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        population: int = 16,
        space: SearchSpace | None = None,
        min_trades: int = 0,
        mutation_prob: float | None = None,
    ) -> None:
        import optuna

        silence_optuna()
        self.space = space or SearchSpace()
        self.min_trades = min_trades
        # Optuna 5 takes constraints per trial (set_constraint); before it, through
        # constraints_func, which Optuna 5 deprecates with a FutureWarning.
        self._per_trial = hasattr(optuna.trial.Trial, "set_constraint")
        options: dict[str, Any] = {}
        if min_trades > 0 and not self._per_trial:
            options["constraints_func"] = _trades_constraint
        sampler = optuna.samplers.NSGAIISampler(
            seed=seed, population_size=population, mutation_prob=mutation_prob, **options
        )
        self.study: optuna.Study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=sampler
        )
        self._trials: dict[int, optuna.Trial] = {}

    def __repr__(self) -> str:
        return f"<NSGAIIProposer trials={len(self.study.trials)} open={len(self._trials)}>"

    def ask(self, count: int) -> list[Proposal]:
        """See :meth:`Proposer.ask`."""
        proposals = []
        for _ in range(count):
            trial = self.study.ask()
            self._trials[trial.number] = trial
            proposals.append(Proposal(trial.number, self.space.suggest(trial)))
        return proposals

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        """See :meth:`Proposer.tell`.

        Raises:
            KeyError: a proposal this proposer did not ask, or told twice.
        """
        from optuna.trial import TrialState

        for proposal, metrics in results:
            trial = self._trials.pop(proposal.number)
            values = objectives(metrics)
            if values is None or metrics is None:
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            if self.min_trades > 0:
                shortfall = float(self.min_trades - metrics.trades)
                if self._per_trial:
                    trial.set_constraint("min_trades", shortfall)
                else:
                    trial.set_user_attr(_SHORTFALL, shortfall)
            self.study.tell(trial, list(values))


_SHORTFALL = "min_trades_shortfall"


def _trades_constraint(trial: optuna.trial.FrozenTrial) -> list[float]:
    """``constraints_func`` for Optuna < 5: the shortfall stored at tell time."""
    return [float(trial.user_attrs.get(_SHORTFALL, 0.0))]


class ListProposer:
    """Proposes a fixed list of candidates, in order; remembers what it was told.

    Args:
        candidates: what to propose.

    Attributes:
        told: every ``(proposal, metrics)`` told so far, in order.
    """

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        self._left = list(candidates)
        self._next = 0
        self.told: list[tuple[Proposal, Metrics | None]] = []

    def __repr__(self) -> str:
        return f"<ListProposer left={len(self._left)} told={len(self.told)}>"

    def ask(self, count: int) -> list[Proposal]:
        """See :meth:`Proposer.ask`.

        Raises:
            ValueError: fewer than ``count`` candidates are left.
        """
        if count > len(self._left):
            raise ValueError(f"asked for {count} candidates, {len(self._left)} left")
        batch, self._left = self._left[:count], self._left[count:]
        proposals = [Proposal(self._next + i, c) for i, c in enumerate(batch)]
        self._next += count
        return proposals

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        """See :meth:`Proposer.tell`."""
        self.told.extend(results)
