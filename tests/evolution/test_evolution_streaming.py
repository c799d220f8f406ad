"""Streamed asks (issue 14, target 2): each candidate is submitted as soon as it is asked,
and the optimizer proposes exactly what a batch ask proposes."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_queue.dispatcher import open_dispatcher
from backtest_queue.errors import UsageError
from backtest_queue.evolution.cycle import Evaluation, RunSettings, run_evolution
from backtest_queue.evolution.proposer import (
    SAMPLERS,
    OptunaProposer,
    Proposal,
    Proposer,
    SamplerName,
)
from backtest_queue.evolution.search_space import Candidate
from backtest_queue.protocol import BacktestRequest, Metrics

from evolution_helpers import fake_metrics, fake_service
from stubs import free_tcp_endpoint

RUN = RunSettings(data_id="EURUSD-H1")


def sma(fast: int, slow: int) -> Candidate:
    return Candidate.make("sma_cross", {"fast": fast, "slow": slow})


class GatedProposer:
    """Streams its candidates; after the first it waits (in its thread) for ``gate``.

    ``ask`` must not be called: a proposer with ``iter_ask`` is streamed. The code after
    the last ``yield`` records that it ran, and ``tell`` checks it ran before the tell.
    """

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.gate = threading.Event()
        self.ended: list[int] = []  # generations whose iterator ran to its end
        self.told: list[list[int]] = []
        self._next = 0

    def ask(self, count: int) -> list[Proposal]:
        raise AssertionError("ask was called although the proposer has iter_ask")

    def iter_ask(self, count: int) -> Iterator[Proposal]:
        for i in range(count):
            # The test opens the gate once the first request reached the service;
            # bounded, so a cycle that never submits it fails the test, not hangs.
            if i == 1 and not self.gate.wait(10):
                return
            candidate = self.candidates[self._next]
            self._next += 1
            yield Proposal(self._next - 1, candidate)
        self.ended.append(len(self.told))

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        assert len(self.ended) == len(self.told) + 1, "told before iter_ask ran to its end"
        self.told.append([p.number for p, _ in results])


@pytest.mark.anyio
async def test_each_candidate_reaches_the_service_before_the_next_is_asked() -> None:
    """The first candidate is submitted, and reaches the service, while the optimizer is
    still working out the second (it waits for the service to have the first): the
    services need not wait for the whole generation's asks."""
    candidates = [sma(5 + i, 40) for i in range(8)]
    proposer = GatedProposer(candidates)
    endpoint = free_tcp_endpoint()
    try:
        async with (
            fake_service(endpoint) as fake,
            open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
            anyio.create_task_group() as tg,
        ):
            evaluations: list[Evaluation] = []

            async def evolve() -> None:
                evaluations.extend(
                    await run_evolution(dispatcher, proposer, generations=2, population=4, run=RUN)
                )

            tg.start_soon(evolve)
            with anyio.fail_after(10):
                await fake.wait_received(1)
            assert [r.strategy.name for r in fake.requests] == [candidates[0].name]
            proposer.gate.set()
            with anyio.fail_after(10):
                await fake.wait_received(8)
    finally:
        proposer.gate.set()  # never leave the proposer's thread waiting
    assert [e.candidate for e in evaluations] == candidates
    assert [e.status for e in evaluations] == ["ok"] * 8
    assert proposer.told == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert proposer.ended == [0, 1]
    assert fake.names() == {c.name: 1 for c in candidates}  # (it reads batches shuffled)


class Miscounting:
    """Streams ``yields`` proposals whatever it is asked for."""

    def __init__(self, yields: int) -> None:
        self.yields = yields

    def ask(self, count: int) -> list[Proposal]:
        raise AssertionError("ask was called although the proposer has iter_ask")

    def iter_ask(self, count: int) -> Iterator[Proposal]:
        for i in range(self.yields):
            yield Proposal(i, sma(5 + i, 40))

    def tell(self, results: object) -> None:
        raise AssertionError("a miscounted generation must not be told")


@pytest.mark.anyio
@pytest.mark.parametrize(("yields", "says"), [(2, "yielded 2 proposals for 3"),
                                              (4, "more than the 3 proposals")])  # fmt: skip
async def test_a_stream_of_the_wrong_length_is_refused(yields: int, says: str) -> None:
    """An ``iter_ask`` that yields too few or too many proposals is the caller's error
    (raised as the documented UsageError), and the generation is not told."""
    endpoint = free_tcp_endpoint()
    async with (
        fake_service(endpoint),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        # As itself, not in a group of one (docs/concurrency.md, "Exceptions").
        with anyio.fail_after(10), pytest.raises(UsageError, match=says):
            await run_evolution(
                dispatcher, Miscounting(yields), generations=1, population=3, run=RUN
            )


class BatchMiscounting:
    """Asked for a batch, returns one proposal too few (no ``iter_ask``)."""

    def ask(self, count: int) -> list[Proposal]:
        return [Proposal(i, sma(5 + i, 40)) for i in range(count - 1)]

    def tell(self, results: object) -> None:
        raise AssertionError("a miscounted generation must not be told")


@pytest.mark.anyio
async def test_a_batch_of_the_wrong_length_is_refused_as_a_usage_error() -> None:
    endpoint = free_tcp_endpoint()
    async with (
        fake_service(endpoint),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with (
            anyio.fail_after(10),
            pytest.raises(UsageError, match="returned 2 proposals for 3") as raised,
        ):
            await run_evolution(
                dispatcher, BatchMiscounting(), generations=1, population=3, run=RUN
            )
    # Not chained to the group it came in (a traceback would show the error twice).
    assert not isinstance(raised.value.__context__, BaseExceptionGroup)


def told_metrics(candidate: Candidate) -> Metrics | None:
    """What the fake service answers for ``candidate``; ``None`` (a failure) for some."""
    request = BacktestRequest(strategy=candidate.strategy(), data_id="EURUSD-H1")
    if candidate.kind == "ema_cross" and candidate.param_dict.get("fast", 0) % 5 == 0:
        return None
    return fake_metrics(request)


@settings(max_examples=6)
@given(
    sampler=st.sampled_from(SAMPLERS),
    seed=st.integers(0, 2**32 - 1),
    population=st.integers(2, 12),  # NSGA-II needs 2
    max_reasks=st.integers(0, 3),
)
def test_streamed_asks_propose_what_batch_asks_propose(
    sampler: SamplerName, seed: int, population: int, max_reasks: int
) -> None:
    """Same seed, same tells: ``iter_ask`` yields the very proposals ``ask`` returns, in
    the same order, generation after generation (repeats re-asked alike)."""
    kwargs: dict[str, Any] = {"sampler": sampler, "seed": seed, "population": population,
              "max_reasks": max_reasks, "min_trades": 20}  # fmt: skip
    batch, streamed = OptunaProposer(**kwargs), OptunaProposer(**kwargs)
    for _ in range(4):
        asked = batch.ask(population)
        assert list(streamed.iter_ask(population)) == asked
        results = [(p, told_metrics(p.candidate)) for p in asked]
        batch.tell(results)
        streamed.tell(results)
    assert streamed.repeats == batch.repeats
    assert [t.params for t in streamed.study.trials] == [t.params for t in batch.study.trials]


class BatchOnly:
    """An :class:`OptunaProposer` behind the plain protocol: ``ask`` and ``tell`` only."""

    def __init__(self, proposer: OptunaProposer) -> None:
        self._proposer = proposer

    def ask(self, count: int) -> list[Proposal]:
        return self._proposer.ask(count)

    def tell(self, results: Sequence[tuple[Proposal, Metrics | None]]) -> None:
        self._proposer.tell(results)


async def evolve_with(proposer: Proposer, reply_seed: int) -> list[Evaluation]:
    endpoint = free_tcp_endpoint()
    async with (
        fake_service(endpoint, reply_seed=reply_seed),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(30):
            return await run_evolution(dispatcher, proposer, generations=4, population=10, run=RUN)


@pytest.mark.anyio
@pytest.mark.parametrize("sampler", SAMPLERS)
async def test_streamed_evolution_evaluates_what_a_batch_evolution_does(
    sampler: SamplerName,
) -> None:
    """The same seed streamed (replies in one order) and asked in batches (replies in
    another) evaluates the same candidates with the same results, in the same order."""

    def proposer() -> OptunaProposer:
        return OptunaProposer(sampler=sampler, seed=5, population=10, min_trades=20)

    streamed = await evolve_with(proposer(), reply_seed=1)
    batched = await evolve_with(BatchOnly(proposer()), reply_seed=2)

    def key(e: Evaluation) -> tuple[object, ...]:
        return (e.number, e.generation, e.candidate, e.status, e.metrics, e.source)

    assert [key(e) for e in streamed] == [key(e) for e in batched]
    assert len(streamed) == 40
