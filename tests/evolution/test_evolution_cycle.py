"""The evolution cycle against a fake service on real sockets, on trio and asyncio."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from functools import partial

import anyio
import pytest
from optuna.trial import TrialState

from backtest_queue import BacktestRequest, Strategy
from backtest_queue.dispatcher import Dispatcher, open_dispatcher
from backtest_queue.evolution.cycle import (
    Evaluation,
    GenerationSummary,
    Progress,
    RunSettings,
    run_evolution,
)
from backtest_queue.evolution.proposer import (
    SAMPLERS,
    ListProposer,
    NSGAIIProposer,
    Proposal,
    SamplerName,
    objectives,
)
from backtest_queue.evolution.search import SearchConfig, run_search
from backtest_queue.evolution.search_space import Candidate, SearchSpace
from backtest_queue.evolution.split import SampleSplit

from evolution_helpers import fake_metrics, fake_service
from stubs import free_tcp_endpoint

pytestmark = pytest.mark.anyio

RUN = RunSettings(data_id="EURUSD-H1")


def sma(fast: int, slow: int, tp: float | None = None) -> Candidate:
    return Candidate.make("sma_cross", {"fast": fast, "slow": slow}, None, tp)


class Recorder:
    """An observer that keeps what it was told and signals when ``results`` reaches a count."""

    def __init__(self) -> None:
        self.snapshots: list[Progress] = []
        self.summaries: list[GenerationSummary] = []
        self._waiting: tuple[int, anyio.Event] | None = None

    def progress(self, progress: Progress) -> None:
        self.snapshots.append(progress)
        if self._waiting is not None and progress.results >= self._waiting[0]:
            self._waiting[1].set()

    def generation_done(self, summary: GenerationSummary) -> None:
        self.summaries.append(summary)

    async def wait_results(self, n: int) -> None:
        if self.snapshots and self.snapshots[-1].results >= n:
            return
        event = anyio.Event()
        self._waiting = (n, event)
        await event.wait()


async def test_clones_reuse_results_and_are_not_sent() -> None:
    """A candidate identical to one in flight or already evaluated is not sent again;
    a failed one is not reused: it is tried again in a later generation."""
    a, b, c, bad = sma(5, 20), sma(8, 30), sma(10, 50), sma(3, 40)
    proposer = ListProposer([a, b, a, bad, b, c, a, bad])
    endpoint = free_tcp_endpoint()
    refuse = lambda s: s.params == {"fast": 3, "slow": 40}  # noqa: E731
    async with (
        fake_service(endpoint, fail=refuse) as fake,
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(10):
            evaluations = await run_evolution(
                dispatcher, proposer, generations=2, population=4, run=RUN
            )
    assert [e.status for e in evaluations] == [
        "ok", "ok", "clone", "failed",  # a twice in flight: sent once
        "clone", "ok", "clone", "failed",  # a and b evaluated before; bad tried again
    ]  # fmt: skip
    assert fake.names() == {a.name: 1, b.name: 1, c.name: 1, bad.name: 2}
    assert evaluations[2].source == evaluations[0].number == 0
    assert evaluations[2].metrics == evaluations[0].metrics
    assert evaluations[4].source == 1
    assert evaluations[4].request_id == evaluations[1].request_id
    assert "reused the result of #1" in evaluations[4].detail
    assert evaluations[3].reason == "service_error"
    assert "engine_error" in evaluations[3].detail
    # What the proposer was told: clones carry the original's metrics, failures None.
    told = {p.number: m for p, m in proposer.told}
    assert told[2] == told[0] is not None
    assert told[3] is None
    assert told[7] is None


async def test_failures_are_told_as_failed_trials() -> None:
    """Engine errors become TrialState.FAIL in the Optuna study; results, those without
    trades too, become COMPLETE trials with (sharpe, |max drawdown|) and the trade
    constraint."""
    proposer = NSGAIIProposer(seed=3, population=12)
    endpoint = free_tcp_endpoint()

    def refuse(s: Strategy) -> bool:
        return s.kind == "rsi_reversion" and s.params["lower"] < 20

    async with (
        fake_service(endpoint, fail=refuse),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(10):
            evaluations = await run_evolution(
                dispatcher, proposer, generations=3, population=12, run=RUN
            )
    assert told_as_failed(proposer, evaluations) == {"service_error"}


async def test_timeouts_are_told_as_failed_trials() -> None:
    """A request the service never answers times out and is told as a failed trial."""
    proposer = NSGAIIProposer(seed=3, population=8)
    endpoint = free_tcp_endpoint()

    def ignore(s: Strategy) -> bool:
        return s.kind == "sma_cross"

    opened: list[Dispatcher] = []
    try:
        with anyio.fail_after(5):
            async with (
                fake_service(endpoint, ignore=ignore),
                open_dispatcher(
                    [endpoint], flush_interval=0.05, result_timeout=0.2, max_attempts=1
                ) as dispatcher,
            ):
                opened.append(dispatcher)
                # Connected first, so submit() hands every request over itself: the
                # flusher must still learn their deadlines (it once did not).
                await dispatcher.wait_connected()
                evaluations = await run_evolution(
                    dispatcher, proposer, generations=1, population=8, run=RUN
                )
    finally:
        for d in opened:
            d.outcomes.close()  # 'shutdown' outcomes may be left unread when it fails
    assert "timeout" in told_as_failed(proposer, evaluations)


def told_as_failed(proposer: NSGAIIProposer, evaluations: list[Evaluation]) -> set[str]:
    """Check every trial's state, values and constraint against its evaluation; return
    why trials were told as failed."""
    trials = {t.number: t for t in proposer.study.trials if "repeat_of" not in t.user_attrs}
    assert len(trials) == len(evaluations)
    reasons = set()
    for e in evaluations:
        trial = trials[e.number]
        assert trial.params["kind"] == e.candidate.kind
        if e.metrics is None:
            assert trial.state is TrialState.FAIL, e
            reasons.add(e.reason or "?")
            continue
        assert trial.state is TrialState.COMPLETE, e
        values = objectives(e.metrics)
        assert trial.values == list(values or (0.0, 0.0))
        infeasible = values is None or e.metrics.trades < max(proposer.min_trades, 1)
        assert (trial.constraints["min_trades"] > 0) == infeasible, e
    return reasons


async def test_zero_trade_results_count_toward_their_generation() -> None:
    """Results without trades (or with too few) are told as COMPLETE but infeasible,
    so NSGA-II counts them toward their generation: 4 generations asked, 4 real ones
    (when they were told as FAIL, the next generation was bred from the same parents)."""
    space = SearchSpace(kinds=("rsi_reversion",), period=(30, 50))  # > 40: no trades
    proposer = NSGAIIProposer(seed=2, population=6, space=space, min_trades=20)
    endpoint = free_tcp_endpoint()
    async with (
        fake_service(endpoint),
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(20):
            evaluations = await run_evolution(
                dispatcher, proposer, generations=4, population=6, run=RUN
            )
    assert any(e.metrics is not None and e.metrics.trades == 0 for e in evaluations)
    by_generation = Counter(
        t.system_attrs["NSGAIISampler:generation"]
        for t in proposer.study.trials
        if "repeat_of" not in t.user_attrs
    )
    assert by_generation == {0: 6, 1: 6, 2: 6, 3: 6}
    assert proposer.generations == 4
    assert told_as_failed(proposer, evaluations) == set()


def demo_split() -> SampleSplit:
    return SampleSplit(
        data_id="EURUSD-H1",
        bars=100,
        in_sample_bars=70,
        in_sample=("2017-05-01T00:00:00", "2017-07-01T00:00:00"),
        out_of_sample=("2017-07-01T01:00:00", "2017-09-01T00:00:00"),
    )


async def search_once(
    seed: int, reply_seed: int, sampler: SamplerName = "tpe"
) -> list[tuple[str, float | None, float | None]]:
    endpoint = free_tcp_endpoint()
    config = SearchConfig(generations=3, population=10, seed=seed, top=5, sampler=sampler)
    async with (
        fake_service(endpoint, reply_seed=reply_seed),
        open_dispatcher([endpoint], flush_interval=0.05, max_pending=4) as dispatcher,
    ):
        with anyio.fail_after(20):
            report = await run_search(dispatcher, config, demo_split())
    numbers = [e.number for e in report.in_sample]
    assert len(numbers) == 30
    assert numbers == sorted(set(numbers))  # ask order; repeats re-asked left gaps
    return [
        (row.candidate.name, row.in_sample.sharpe, row.out_of_sample.sharpe)
        for row in report.leaderboard
        if row.out_of_sample is not None
    ]


@pytest.mark.parametrize("sampler", SAMPLERS)
async def test_same_seed_same_leaderboard_whatever_the_reply_order(sampler: SamplerName) -> None:
    """Replies arrive in a different order each run (max_pending=4, shuffled batches);
    the generation barrier tells them in ask order, so the leaderboard is the same."""
    first = await search_once(seed=11, reply_seed=1, sampler=sampler)
    second = await search_once(seed=11, reply_seed=2, sampler=sampler)
    assert first == second
    assert len(first) == 5  # every leaderboard row has its out-of-sample re-run
    assert first != await search_once(seed=12, reply_seed=1, sampler=sampler)


async def test_stalled_cycle_still_flushes_on_connect(caplog: pytest.LogCaptureFixture) -> None:
    """The cycle submits, then stalls in its hook; a service connects meanwhile: the
    dispatcher flushes right after the connect (flush_interval is an hour, so only the
    connect event can do it) and the collector keeps collecting, all while stalled."""
    caplog.set_level(logging.INFO, logger="backtest_queue")
    candidates = [sma(5 + i, 40) for i in range(6)]
    endpoint = free_tcp_endpoint()
    stalled, release = anyio.Event(), anyio.Event()
    recorder = Recorder()
    evaluations: list[Evaluation] = []
    finished = anyio.Event()

    async def hook(progress: Progress) -> None:
        if not release.is_set():
            stalled.set()
            await release.wait()  # the stall: this cycle does not come back

    async def evolve(dispatcher: Dispatcher) -> None:
        evaluations.extend(
            await run_evolution(
                dispatcher,
                ListProposer(candidates),
                generations=1,
                population=6,
                run=RUN,
                observer=recorder,
                cycle_hook=hook,
            )
        )
        finished.set()

    async with (
        open_dispatcher([endpoint], flush_interval=3600, max_pending=None) as dispatcher,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(evolve, dispatcher)
        with anyio.fail_after(5):
            await stalled.wait()
        assert dispatcher.stats().queue.queued == 6
        assert not dispatcher.connected
        async with fake_service(endpoint) as fake:
            with anyio.fail_after(5):
                await fake.wait_received(6)  # flushed while the cycle is stalled
                await recorder.wait_results(6)  # and collected
            assert not release.is_set()
            assert evaluations == []
            flushes = [r.getMessage() for r in caplog.records if "after connect" in r.getMessage()]
            # One at the connect; the other five when its PONG set no limit (issue 13).
            assert any(m.startswith("flushed 1 queued requests") for m in flushes), flushes
            release.set()
            with anyio.fail_after(5):
                await finished.wait()
    assert [e.status for e in evaluations] == ["ok"] * 6
    assert len(recorder.summaries) == 1


class StuckProposer:
    """A proposer whose ``ask`` blocks its thread until released (a slow optimizer)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def ask(self, count: int) -> list[Proposal]:
        self.entered.set()
        assert self.release.wait(10)
        return [Proposal(i, sma(5 + i, 40)) for i in range(count)]

    def tell(self, results: object) -> None:
        pass


async def test_slow_proposer_blocks_nothing() -> None:
    """ask/tell run in a worker thread: while the optimizer is stuck, a service connects,
    the queue is flushed and a request submitted by someone else gets its result."""
    proposer = StuckProposer()
    endpoint = free_tcp_endpoint()
    done = anyio.Event()

    async def evolve() -> None:
        await run_evolution(dispatcher, proposer, generations=1, population=2, run=RUN)
        done.set()

    async with (
        open_dispatcher([endpoint], flush_interval=3600) as dispatcher,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(evolve)
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(partial(proposer.entered.wait, 5))
        request = BacktestRequest(strategy=sma(7, 70).strategy(), data_id="EURUSD-H1")
        state = await dispatcher.submit(request)
        assert state.reason == "not_connected"
        async with fake_service(endpoint):
            with anyio.fail_after(5):
                outcome = await dispatcher.wait(state.request_id)
            assert outcome.result == fake_metrics(request)
            assert not done.is_set()
            proposer.release.set()
            with anyio.fail_after(5):
                await done.wait()


SMALL = SearchSpace(kinds=("sma_cross",), fast=(10, 14), gap=(40, 50), bracket=(0.002, 0.003))


async def evolve_in(
    space: SearchSpace, generations: int, population: int
) -> tuple[NSGAIIProposer, list[Evaluation], int]:
    proposer = NSGAIIProposer(seed=4, population=population, space=space)
    endpoint = free_tcp_endpoint()
    async with (
        fake_service(endpoint) as fake,
        open_dispatcher([endpoint], flush_interval=0.05) as dispatcher,
    ):
        with anyio.fail_after(30):
            evaluations = await run_evolution(
                dispatcher, proposer, generations=generations, population=population, run=RUN
            )
    return proposer, evaluations, len(fake.requests)


async def test_repeats_are_reasked_so_the_budget_buys_distinct_evaluations() -> None:
    """In a small space NSGA-II breeds many repeats of its parents; each is re-asked
    (told as FAIL, repeat_of), so 5 generations of 8 are 40 distinct backtests."""
    proposer, evaluations, sent = await evolve_in(SMALL, generations=5, population=8)
    assert len({e.candidate for e in evaluations}) == len(evaluations) == 40
    assert [e.status for e in evaluations] == ["ok"] * 40
    assert sent == 40
    assert proposer.repeats > 0  # there were repeats to re-ask
    repeats = [t for t in proposer.study.trials if "repeat_of" in t.user_attrs]
    assert len(repeats) == proposer.repeats
    assert all(t.state is TrialState.FAIL for t in repeats)
    assert proposer.generations == 5  # repeats do not count toward a generation


async def test_a_space_smaller_than_the_budget_still_finishes() -> None:
    """8 candidates in all, 18 asked: re-asks are bounded, then repeats are handed out
    and answered from the clone table (not sent again)."""
    tiny = SearchSpace(kinds=("sma_cross",), fast=(10, 10), gap=(40, 41), bracket=(0.002, 0.002))
    proposer, evaluations, sent = await evolve_in(tiny, generations=3, population=6)
    assert len(evaluations) == 18
    assert len({e.candidate for e in evaluations}) == sent == 8
    assert sum(e.status == "clone" for e in evaluations) == 10
    assert proposer.repeats <= proposer.max_reasks * 18
