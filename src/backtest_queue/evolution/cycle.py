"""The evolution cycle and its outcome collector: two sibling tasks and one memory channel.

::

    dispatcher's task group:  connector · flusher · receivers ──▶ dispatcher.outcomes
                                                                         │
    run_evolution's task group:                                          ▼
      cycle: ask ─▶ submit ─▶ maybe_flush ─▶ take ─▶ tell      ◀─inbox── collector

:func:`run_evolution` runs inside a dispatcher's ``async with`` block, so the cycle and
the collector live next to the dispatcher's connector, flusher and receivers. They share
no state with those tasks: requests go in through :meth:`Dispatcher.submit`, outcomes
come back through the dispatcher's outcome stream, which the collector drains into the
cycle's inbox (an unbounded memory channel) as they arrive. A stalled cycle therefore
stalls nothing else: the flusher still flushes right after a connect event and on its
interval, the collector still counts results for the progress display, and the
proposer's ``ask`` / ``tell`` run in a worker thread so even a CPU-bound optimizer
leaves the event loop free.

One **cycle**: if the current generation is complete, tell the proposer and ask it for
the next one, submitting each new candidate; call ``dispatcher.maybe_flush()`` (once per
cycle: the original system's contract); take the outcomes that arrived (waiting at most
``cycle_interval`` seconds for the first); report progress.

**Streamed asks**: a proposer with ``iter_ask`` (a :class:`~.proposer.StreamingProposer`,
such as :class:`~.proposer.OptunaProposer`) hands out the generation one candidate at a
time, and each is submitted as soon as it comes, so the services run the first
candidates while the optimizer samples the rest (TPE takes tens of milliseconds per
candidate: asked as one batch, a generation of 24 kept the workers idle for most of a
second at every barrier). A proposer with ``ask`` only is asked for the whole batch.

**Generation barrier**: results arrive in any order, but a generation is told to the
proposer only once every candidate in it has an outcome, in ask order. With a seeded
proposer and a deterministic engine the search is therefore reproducible: same seed,
same data, same settings, same evaluations.

**Clones**: a candidate identical to one already evaluated with the same
:class:`RunSettings` reuses its result (status ``"clone"``) and is not sent; one
identical to a candidate still in flight waits for that one's outcome. Only results are
reused: a failed evaluation (timeout, service error) is not cached, so the same
candidate in a later generation is tried again.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import UsageError
from ..exception_groups import sole_error
from ..outcome import Outcome
from ..protocol import Metrics
from .proposer import Proposal, Proposer, feasible
from .records import (
    CycleHook,
    Evaluation,
    EvolutionObserver,
    GenerationSummary,
    Progress,
    ResultCache,
    RunSettings,
    Status,
    _Cached,
)
from .search_space import Candidate

if TYPE_CHECKING:
    from ..dispatcher import Dispatcher

__all__ = [
    "CycleHook",
    "Evaluation",
    "EvolutionObserver",
    "GenerationSummary",
    "Progress",
    "ResultCache",
    "RunSettings",
    "Status",
    "run_evolution",
]

log = logging.getLogger("backtest_queue.evolution")


_Key = tuple[Candidate, RunSettings]
#: Combines the results of one candidate's runs (walk-forward windows) into one.
Combine = Callable[[Sequence[Metrics]], Metrics]


@dataclass(frozen=True, slots=True)
class _Part:
    """How one of a candidate's runs ended."""

    status: Status
    metrics: Metrics | None
    request_id: str
    source: int
    reason: str | None = None
    detail: str = ""


@dataclass(slots=True, eq=False)  # hashed by identity
class _Slot:
    proposal: Proposal
    generation: int
    keys: tuple[_Key, ...]
    parts: list[_Part | None]
    evaluation: Evaluation | None = None


@dataclass(slots=True)
class _Counts:
    evaluated: int = 0
    results: int = 0
    clones: int = 0
    failures: int = 0
    infeasible: int = 0
    best_sharpe: float | None = None
    generation: int = 0
    started_at: float = field(default_factory=time.monotonic)


class _Evolution:
    """The state the two sibling tasks share; only they touch it (one event loop)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        proposer: Proposer,
        *,
        generations: int,
        population: int,
        runs: Sequence[RunSettings],
        combine: Combine | None,
        cache: ResultCache,
        observer: EvolutionObserver | None,
        cycle_hook: CycleHook | None,
        cycle_interval: float,
        phase: str,
        min_trades: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._proposer = proposer
        self._generations = generations
        self._population = population
        self._runs = tuple(runs)
        self._combine = combine
        self._cache = cache
        self._observer = observer
        self._hook = cycle_hook
        self._cycle_interval = cycle_interval
        self._phase = phase
        self._min_trades = min_trades
        self._owners: dict[str, _Key] = {}  # request_id -> key
        self._waiting: dict[_Key, list[tuple[_Slot, int]]] = {}  # key -> (slot, run index)
        self._counts = _Counts()
        self._best_so_far: float | None = None
        self.evaluations: list[Evaluation] = []

    # -- the collector -----------------------------------------------------------

    async def collect(
        self,
        inbox: MemoryObjectSendStream[Outcome],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Move outcomes from the dispatcher to the cycle's inbox as they arrive."""
        with inbox:
            task_status.started()
            async for outcome in self._dispatcher.outcomes:
                if outcome.request_id in self._owners and outcome.result is not None:
                    self._counts.results += 1
                    if len(self._runs) == 1:  # else the best is known once combined
                        self._note_best(outcome.result)
                    self._report()
                inbox.send_nowait(outcome)  # unbounded: never blocks, never full

    # -- the cycle ---------------------------------------------------------------

    async def cycle(
        self, inbox: MemoryObjectReceiveStream[Outcome], done: anyio.CancelScope
    ) -> None:
        """Run cycles until the last generation is told; then cancel ``done``."""
        slots: list[_Slot] = []
        while True:
            if all(slot.evaluation is not None for slot in slots):
                if slots:
                    await self._tell(slots)
                if self._counts.generation == self._generations:
                    break
                slots = await self._ask_and_submit()
            self._dispatcher.maybe_flush()
            await self._take(inbox)
            progress = self._report()
            if self._hook is not None:
                await self._hook(progress)
        done.cancel()

    async def _ask_and_submit(self) -> list[_Slot]:
        """Ask the next generation and submit it; with ``iter_ask``, each as it comes."""
        self._counts.generation += 1
        iter_ask: Callable[[int], Iterator[Proposal]] | None
        iter_ask = getattr(self._proposer, "iter_ask", None)
        if iter_ask is None:
            proposals = await anyio.to_thread.run_sync(
                self._proposer.ask, self._population, abandon_on_cancel=True
            )
            if len(proposals) != self._population:
                raise UsageError(f"the proposer returned {len(proposals)} proposals for "
                                 f"{self._population} asked")  # fmt: skip
            slots = [self._slot(p) for p in proposals]
            for slot in slots:
                await self._place(slot)
            return slots
        # Streamed: the services start on the first candidates while the optimizer
        # samples the rest (issue 14). Its asks still all follow the last tell.
        proposals_it = await anyio.to_thread.run_sync(
            iter_ask, self._population, abandon_on_cancel=True
        )
        slots = []
        while len(slots) < self._population:
            last = len(slots) == self._population - 1
            proposal = await anyio.to_thread.run_sync(
                _next_proposal, proposals_it, last, self._population, abandon_on_cancel=True
            )
            if proposal is None:
                raise UsageError(f"the proposer's iter_ask yielded {len(slots)} proposals for "
                                 f"{self._population} asked")  # fmt: skip
            slots.append(self._slot(proposal))
            await self._place(slots[-1])
        return slots

    def _slot(self, proposal: Proposal) -> _Slot:
        return _Slot(
            proposal,
            self._counts.generation,  # 1-based, as in the logs and results files
            tuple((proposal.candidate, run) for run in self._runs),
            [None] * len(self._runs),
        )

    async def _place(self, slot: _Slot) -> None:
        for index, key in enumerate(slot.keys):
            cached = self._cache._get(key)
            if cached is not None:
                slot.parts[index] = _Part("clone", cached.metrics, cached.request_id,
                                          cached.number)  # fmt: skip
                continue
            waiting = self._waiting.get(key)
            if waiting is not None:  # an identical candidate is in flight: share its outcome
                waiting.append((slot, index))
                continue
            request = key[1].request_for(slot.proposal.candidate)
            self._waiting[key] = [(slot, index)]
            self._owners[request.request_id] = key
            await self._dispatcher.submit(request)
        self._finish(slot)

    async def _take(self, inbox: MemoryObjectReceiveStream[Outcome]) -> None:
        """Apply the outcomes that arrived, waiting up to ``cycle_interval`` for one."""
        arrived: list[Outcome] = []
        try:
            with anyio.move_on_after(self._cycle_interval):
                arrived.append(await inbox.receive())
            while True:
                arrived.append(inbox.receive_nowait())
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            if self._owners:
                raise UsageError(
                    f"the dispatcher's outcome stream ended with {len(self._owners)} "
                    "evaluations outstanding"
                ) from None
        for outcome in arrived:
            self._apply(outcome)

    def _apply(self, outcome: Outcome) -> None:
        key = self._owners.pop(outcome.request_id, None)
        if key is None:
            log.debug("ignored an outcome for request %s: not this evolution's",
                      outcome.request_id)  # fmt: skip
            return
        waiting = self._waiting.pop(key)
        number = waiting[0][0].proposal.number
        if outcome.result is not None:
            self._cache._put(key, _Cached(outcome.result, outcome.request_id, number))
        for i, (slot, index) in enumerate(waiting):
            if outcome.result is None:
                part = _Part("failed", None, outcome.request_id, number, outcome.reason,
                             outcome.detail)  # fmt: skip
            else:
                status: Status = "clone" if i else ("cached" if outcome.cached else "ok")
                part = _Part(status, outcome.result, outcome.request_id, number)
            slot.parts[index] = part
        for slot in dict.fromkeys(slot for slot, _ in waiting):
            self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        """Turn a slot whose runs all ended into its evaluation."""
        parts = [part for part in slot.parts if part is not None]
        if slot.evaluation is not None or len(parts) < len(slot.parts):
            return
        p = slot.proposal
        failed = [part for part in parts if part.status == "failed"]
        if failed:
            first = failed[0]
            slot.evaluation = Evaluation(
                number=p.number, generation=slot.generation, candidate=p.candidate,
                status="failed", reason=first.reason, detail=first.detail,
                request_id=first.request_id, source=first.source,
            )  # fmt: skip
            self._counts.evaluated += 1
            self._counts.failures += 1
            log.warning("evaluation #%d (%s) failed: %s %s", p.number, p.candidate.name,
                        first.reason, first.detail)  # fmt: skip
            return
        results = [part.metrics for part in parts if part.metrics is not None]
        metrics = results[0] if len(results) == 1 else self._combined(results)
        clone = all(part.status == "clone" for part in parts)
        # "ok" when a backtest ran for it; "cached" when the store's cache had every
        # result it did not reuse from an identical candidate.
        status: Status = "clone" if clone else "ok"
        if not clone and not any(part.status == "ok" for part in parts):
            status = "cached"
        source = parts[0].source if clone else p.number
        detail = {"clone": f"reused the result of #{source}", "cached": "from the store's "
                  "result cache (an earlier run's backtest)"}.get(status, "")  # fmt: skip
        slot.evaluation = Evaluation(
            number=p.number, generation=slot.generation, candidate=p.candidate,
            status=status, metrics=metrics, detail=detail,
            request_id=parts[0].request_id, source=source,
            folds=tuple(results) if len(results) > 1 else (),
        )  # fmt: skip
        self._counts.evaluated += 1
        if not feasible(metrics, self._min_trades):
            self._counts.infeasible += 1
        if clone:
            self._counts.clones += 1
        if clone or len(results) > 1:
            self._note_best(metrics)

    def _combined(self, results: list[Metrics]) -> Metrics:
        if self._combine is None:  # run_evolution refuses several runs without it
            raise UsageError("several runs per candidate need a combine function")
        return self._combine(results)

    def _note_best(self, metrics: Metrics) -> None:
        if feasible(metrics, self._min_trades):
            self._counts.best_sharpe = _best(self._counts.best_sharpe, metrics.sharpe)

    async def _tell(self, slots: list[_Slot]) -> None:
        evaluations = [slot.evaluation for slot in slots if slot.evaluation is not None]
        results = [(slot.proposal, e.metrics) for slot, e in zip(slots, evaluations, strict=True)]
        await anyio.to_thread.run_sync(self._proposer.tell, results, abandon_on_cancel=True)
        self.evaluations.extend(evaluations)
        if self._observer is not None:
            self._observer.generation_done(self._summary(evaluations))

    def _summary(self, evaluations: Sequence[Evaluation]) -> GenerationSummary:
        sharpes = [e.sharpe for e in evaluations if e.sharpe is not None]
        eligible = [e.sharpe for e in evaluations if feasible(e.metrics, self._min_trades)]
        best = max((s for s in eligible if s is not None), default=None)
        self._best_so_far = _best(self._best_so_far, best)
        return GenerationSummary(
            phase=self._phase,
            generation=self._counts.generation,
            generations=self._generations,
            evaluations=tuple(evaluations),
            best_sharpe=best,
            median_sharpe=statistics.median(sharpes) if sharpes else None,
            best_so_far=self._best_so_far,
            clones=sum(e.status == "clone" for e in evaluations),
            cached=sum(e.status == "cached" for e in evaluations),
            failures=sum(e.status == "failed" for e in evaluations),
            infeasible=sum(
                e.metrics is not None and not feasible(e.metrics, self._min_trades)
                for e in evaluations
            ),
            elapsed=time.monotonic() - self._counts.started_at,
        )

    def _report(self) -> Progress:
        counts = self._counts
        queue = self._dispatcher.queue
        progress = Progress(
            phase=self._phase,
            generation=counts.generation,
            generations=self._generations,
            planned=self._generations * self._population,
            evaluated=counts.evaluated,
            results=counts.results,
            clones=counts.clones,
            failures=counts.failures,
            infeasible=counts.infeasible,
            queued=queue.queued,
            pending=queue.pending,
            connected=self._dispatcher.connected,
            best_sharpe=counts.best_sharpe,
            elapsed=time.monotonic() - counts.started_at,
        )
        if self._observer is not None:
            self._observer.progress(progress)
        return progress


def _next_proposal(proposals: Iterator[Proposal], last: bool, count: int) -> Proposal | None:
    """The next proposal of a streamed ask (run in a worker thread); ``None`` at the end.

    After the ``last`` one expected, the iterator is read to its end, so a generator's
    code after its last ``yield`` runs before the generation is told.

    Raises:
        UsageError: the iterator yields more than ``count`` proposals.
    """
    proposal = next(proposals, None)
    if last and proposal is not None and next(proposals, None) is not None:
        raise UsageError(f"the proposer's iter_ask yielded more than the {count} proposals asked")
    return proposal


def _best(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else max(current, value)


async def run_evolution(
    dispatcher: Dispatcher,
    proposer: Proposer,
    *,
    generations: int,
    population: int,
    run: RunSettings | Sequence[RunSettings],
    combine: Combine | None = None,
    cache: ResultCache | None = None,
    observer: EvolutionObserver | None = None,
    cycle_hook: CycleHook | None = None,
    cycle_interval: float = 0.25,
    phase: str = "in-sample",
    min_trades: int = 0,
) -> list[Evaluation]:
    """Evolve strategies through a dispatcher: the cycle and the collector as siblings.

    Call it inside the dispatcher's ``async with`` block. While it runs it owns
    ``dispatcher.outcomes`` (do not read that stream elsewhere meanwhile; use
    :meth:`Dispatcher.wait` for your own requests). It returns once every generation
    has been told to the proposer; requests it submitted have all had their outcome.

    Args:
        dispatcher: an open dispatcher; services may come and go.
        proposer: where candidates come from (see :class:`Proposer`); with ``iter_ask``
            (:class:`~.proposer.StreamingProposer`) each candidate is submitted as soon as
            it is asked.
        generations: how many generations (asks of ``population`` candidates), >= 1.
        population: candidates per generation, >= 1.
        run: dataset, bar range, cash and commission for every request; or several
            (walk-forward windows, say): each candidate is then run with each, and its
            evaluation's metrics are ``combine`` of the results (in ``run`` order), its
            ``folds`` the results. It fails when any of its runs fails; it is a clone
            when every run reused a result.
        combine: how to combine the results of several runs (see
            :func:`.walkforward.combiner`); required with several.
        cache: results to reuse for clones (default: a fresh one); results of this run
            are added to it.
        observer: receives progress snapshots and generation summaries.
        cycle_hook: awaited at the end of every cycle (instrumentation, tests).
        cycle_interval: the longest a cycle waits for an outcome, in seconds; the cycle
            runs at least this often, so ``maybe_flush`` does too.
        phase: a label for progress reports.
        min_trades: the fewest trades a result needs to count as the best so far (the
            leaderboard's rule, :func:`~.proposer.feasible`); fewer is reported as
            infeasible.

    Returns:
        Every evaluation, in generation and ask order (``generations * population``).

    Raises:
        UsageError: bad settings, a proposer that returned (or yielded) the wrong number
            of proposals, or a dispatcher whose outcome stream ended before every
            outcome arrived (it was closed).
        DispatcherClosed: the dispatcher's block ended while submitting.
    """
    if generations < 1 or population < 1:
        raise UsageError(
            f"generations and population must be >= 1, got {generations} and {population}"
        )
    runs = [run] if isinstance(run, RunSettings) else list(run)
    if not runs or (len(runs) > 1 and combine is None):
        raise UsageError("run must be one RunSettings, or several with a combine function")
    if min_trades < 0:
        raise UsageError(f"min_trades must be >= 0, got {min_trades}")
    if not (cycle_interval > 0 and math.isfinite(cycle_interval)):
        raise UsageError(f"cycle_interval must be > 0 seconds, got {cycle_interval!r}")
    evolution = _Evolution(
        dispatcher, proposer, generations=generations, population=population, runs=runs,
        combine=combine, cache=cache if cache is not None else ResultCache(), observer=observer,
        cycle_hook=cycle_hook, cycle_interval=cycle_interval, phase=phase,
        min_trades=min_trades,
    )  # fmt: skip
    inbox_send, inbox = anyio.create_memory_object_stream[Outcome](math.inf)
    unwrapped: BaseException | None = None
    try:
        with inbox_send, inbox:  # closed here too, should a task never get to start
            async with anyio.create_task_group() as tg:
                await tg.start(evolution.collect, inbox_send)
                tg.start_soon(evolution.cycle, inbox, tg.cancel_scope)
    except BaseExceptionGroup as group:
        # One failure (a UsageError, say) comes out as itself, not in a group of one.
        unwrapped = sole_error(group)
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped  # here, not in the except: not chained to the group
    return evolution.evaluations
