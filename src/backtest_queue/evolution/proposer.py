"""Where candidates come from: the :class:`Proposer` interface and its implementations.

A proposer is asked for a batch of candidates and later told how each one did. The
evolution cycle calls it once per generation each way, from a worker thread (so a slow
optimizer never blocks the event loop, and with it the dispatcher's flusher), never
from two threads at once. A proposer that also has ``iter_ask`` (a
:class:`StreamingProposer`) hands the candidates of a generation out one at a time, and
the cycle submits each as soon as it comes, so the services start on the first while
the optimizer works out the next.

* :class:`OptunaProposer` - Optuna's ask/tell interface with the TPE, NSGA-II (a
  genetic algorithm) or random sampler, two objectives: Sharpe ratio (maximised) and
  the magnitude of the maximum drawdown in percent (minimised), one constraint (enough
  trades). ``NSGAIIProposer`` is its old name.
* :class:`ListProposer` - a fixed list of candidates (re-runs, out-of-sample checks,
  tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from ..errors import UsageError
from ..protocol import Metrics
from .search_space import Candidate, SearchSpace

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ListProposer",
    "NSGAIIProposer",
    "OptunaProposer",
    "SAMPLERS",
    "SamplerName",
    "Proposal",
    "Proposer",
    "StreamingProposer",
    "feasible",
    "objectives",
    "told_values",
    "trades_shortfall",
]


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
    """Proposes candidates and learns from their results (an optimizer's ask/tell).

    Only :meth:`ask` and :meth:`tell` are needed. A proposer that can hand out a
    generation's candidates one at a time may also have ``iter_ask`` (see
    :class:`StreamingProposer`): the evolution cycle then uses it instead of :meth:`ask`.
    """

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


class StreamingProposer(Proposer, Protocol):
    """A :class:`Proposer` that also hands out a generation's candidates one at a time.

    The evolution cycle (:func:`~.cycle.run_evolution`) uses :meth:`iter_ask` instead of
    :meth:`ask` when a proposer has it: it takes each proposal from the iterator in a
    worker thread and submits it at once, so the services run the first candidates
    while the optimizer is still working out the rest of the generation (with TPE that
    work is tens of milliseconds per candidate). What the optimizer sees does not
    change: every proposal of a generation is still asked after the whole previous
    generation was told, and told in ask order.
    """

    def iter_ask(self, count: int) -> Iterator[Proposal]:
        """Yield ``count`` new proposals (numbers increasing), one at a time.

        The same proposals, in the same order, as :meth:`ask` with the same ``count``
        would return in the same state: ``list(iter_ask(count))`` may stand for
        ``ask(count)``. The cycle reads the iterator to its end, each step from a worker
        thread (one step at a time, never two threads at once), before it calls
        :meth:`tell`; a generator function is the natural way to write it.

        Args:
            count: how many proposals to yield, >= 1.
        """
        ...


def objectives(metrics: Metrics | None) -> tuple[float, float] | None:
    """The two objectives of a result: ``(sharpe, abs(max_drawdown_pct))``.

    Returns:
        ``None`` when there is no result, or its Sharpe ratio or drawdown is undefined
        (a run without trades, say).
    """
    if metrics is None or metrics.sharpe is None or metrics.max_drawdown_pct is None:
        return None
    return metrics.sharpe, abs(metrics.max_drawdown_pct)


def trades_shortfall(metrics: Metrics, min_trades: int) -> float:
    """How far a result is from feasible: the constraint ``trades >= max(min_trades, 1)``.

    Args:
        metrics: a result.
        min_trades: the fewest closed trades a feasible result has (0: no minimum; a
            result still needs one trade, or its Sharpe ratio means nothing).

    Returns:
        ``max(min_trades, 1) - trades``, and at least 1 when the Sharpe ratio or the
        drawdown is undefined: > 0 means infeasible (Optuna's convention).
    """
    shortfall = float(max(min_trades, 1) - metrics.trades)
    if objectives(metrics) is None:
        shortfall = max(shortfall, 1.0)
    return shortfall


def told_values(metrics: Metrics) -> tuple[float, float]:
    """What an optimizer is told for a result: :func:`objectives`, with an undefined
    Sharpe ratio or drawdown as 0.0 (a run without trades has flat equity). Only
    meaningful together with :func:`trades_shortfall`, which makes such a result
    infeasible, so it never ranks above a feasible one."""
    sharpe, drawdown = metrics.sharpe, metrics.max_drawdown_pct
    return (0.0 if sharpe is None else sharpe, 0.0 if drawdown is None else abs(drawdown))


def feasible(metrics: Metrics | None, min_trades: int) -> bool:
    """Whether a result counts: it exists, its Sharpe ratio and drawdown are defined and it
    has at least ``min_trades`` trades (and one). The leaderboard, the "best so far" of
    the progress display and of ``sharpe_by_generation.png`` and the optimizer's
    constraint all use this one rule."""
    return metrics is not None and trades_shortfall(metrics, min_trades) <= 0


def silence_optuna() -> None:
    """Set Optuna's logger to WARNING (it logs every trial at INFO)."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


#: The Optuna samplers :class:`OptunaProposer` offers.
SAMPLERS: Final = ("tpe", "nsga2", "random")
SamplerName = Literal["tpe", "nsga2", "random"]


class OptunaProposer:
    """An Optuna sampler behind the :class:`Proposer` interface, through ask/tell.

    Samplers: ``"tpe"`` (the Tree-structured Parzen Estimator, multivariate, asked a
    whole generation at a time), ``"nsga2"`` (NSGA-II, a genetic algorithm whose
    population is the evolution's) or ``"random"`` (independent draws: the baseline).
    See benchmarks/README.md for how they compare out of sample.

    Objectives: Sharpe ratio (maximise), ``abs(max_drawdown_pct)`` (minimise). Every
    result is told as a ``COMPLETE`` trial with one constraint, ``trades >=
    max(min_trades, 1)`` (see :func:`trades_shortfall`, set with
    ``Trial.set_constraint``): NSGA-II and TPE rank every feasible trial above every
    infeasible one, so a lucky handful of trades cannot lead the search, and a run without trades
    (undefined Sharpe ratio: told as 0.0, see :func:`told_values`, and infeasible) still
    counts toward its generation. Were it told as ``FAIL``, NSGA-II would not count it,
    and the next generation would be bred from the same parents: "12 generations" were
    7-11 real ones. Only an evaluation without a result (timeout, service error) is told
    as ``FAIL``: there is nothing to score. Same seed, same tells in the same order:
    same proposals.

    **Repeats** are re-asked: a candidate this proposer already proposed (whose result
    is known or coming; two trials that differ only in inactive genes are the same
    candidate) is not handed out again. Its trial is told at once as ``FAIL`` with the
    user attribute ``repeat_of`` (the first trial's number), which no sampler learns
    from and NSGA-II does not count toward a generation, and another trial is asked.
    So every proposal is a new evaluation and the budget buys distinct candidates
    (NSGA-II spent 37 % of its evaluations on repeats in a small space). In a space too
    small for the budget, after ``max_reasks`` re-asks in one :meth:`ask` a repeat is
    handed out after all; the evolution cycle then answers it from its clone table
    without running it. A candidate whose evaluation failed (no result) may be
    proposed again.

    Args:
        sampler: which Optuna sampler (see above).
        seed: the sampler's random seed (``None``: not reproducible).
        population: NSGA-II's population size (use the evolution's population).
        space: the search space.
        min_trades: the fewest closed trades a feasible result has (0: one trade).
        mutation_prob: NSGA-II's chance that a child's parameter is drawn afresh instead
            of inherited (``None``: Optuna's default, 1 / number of parameters).
        max_reasks: the most repeats re-asked per candidate asked, in one :meth:`ask`
            (0: hand repeats out).

    Attributes:
        study: the Optuna study (in memory): every trial, its state and values.
        repeats: how many repeats were re-asked (trials told ``FAIL`` as ``repeat_of``).

    Raises:
        UsageError: an unknown ``sampler``.
    """

    def __init__(
        self,
        *,
        sampler: SamplerName = "nsga2",
        seed: int | None = None,
        population: int = 16,
        space: SearchSpace | None = None,
        min_trades: int = 0,
        mutation_prob: float | None = None,
        max_reasks: int = 10,
    ) -> None:
        import optuna

        silence_optuna()
        self.space = space or SearchSpace()
        self.min_trades = min_trades
        if sampler == "nsga2":
            chosen: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(
                seed=seed, population_size=population, mutation_prob=mutation_prob
            )
        elif sampler == "tpe":
            chosen = optuna.samplers.TPESampler(seed=seed, multivariate=True)
        elif sampler == "random":
            chosen = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.sampler = sampler
        self.study: optuna.Study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=chosen
        )
        self._tells = 0
        self._trials: dict[int, optuna.Trial] = {}
        self._proposed: dict[Candidate, int] = {}  # candidate -> its first trial number
        self.max_reasks = max_reasks
        self.repeats = 0

    def __repr__(self) -> str:
        return (
            f"<OptunaProposer {self.sampler} trials={len(self.study.trials)} "
            f"open={len(self._trials)} "
            f"repeats={self.repeats}>"
        )

    @property
    def generations(self) -> int:
        """Real generations. NSGA-II: how many generations the completed trials span, as
        the sampler counts them (a generation is ``population`` completed trials).
        Others: how many batches were told."""
        from optuna.trial import TrialState

        if self.sampler != "nsga2":
            return self._tells
        key = f"{type(self.study.sampler).__name__}:generation"
        told = [
            t.system_attrs.get(key) for t in self.study.get_trials(states=[TrialState.COMPLETE])
        ]
        return 1 + max((g for g in told if g is not None), default=-1)

    def ask(self, count: int) -> list[Proposal]:
        """See :meth:`Proposer.ask`; repeats are re-asked (see the class docstring)."""
        return list(self.iter_ask(count))

    def iter_ask(self, count: int) -> Iterator[Proposal]:
        """See :meth:`StreamingProposer.iter_ask`: :meth:`ask`'s proposals, each yielded
        as soon as Optuna has sampled it (TPE samples every trial from the completed
        ones, tens of milliseconds each); repeats are re-asked before they are yielded.

        The evolution cycle calls this, not :meth:`ask` (which is ``list(iter_ask(count))``):
        a subclass that changes what is proposed overrides this method."""
        from optuna.trial import TrialState

        reasks_left = self.max_reasks * count
        asked = 0
        while asked < count:
            trial = self.study.ask()
            candidate = self.space.suggest(trial)
            first = self._proposed.get(candidate)
            if first is not None and reasks_left > 0:
                reasks_left -= 1
                self.repeats += 1
                trial.set_user_attr("repeat_of", first)
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            self._proposed.setdefault(candidate, trial.number)
            self._trials[trial.number] = trial
            asked += 1
            yield Proposal(trial.number, candidate)

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        """See :meth:`Proposer.tell`.

        Raises:
            KeyError: a proposal this proposer did not ask, or told twice.
        """
        from optuna.trial import TrialState

        self._tells += 1
        for proposal, metrics in results:
            trial = self._trials.pop(proposal.number)
            if metrics is None:
                if self._proposed.get(proposal.candidate) == proposal.number:
                    del self._proposed[proposal.candidate]  # may be proposed again
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_constraint("min_trades", trades_shortfall(metrics, self.min_trades))
            self.study.tell(trial, list(told_values(metrics)))


#: The name this class had when NSGA-II was its only sampler.
NSGAIIProposer = OptunaProposer


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
