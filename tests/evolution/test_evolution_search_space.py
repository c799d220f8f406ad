"""The search space: what it proposes is valid, covers the kinds, and clones compare equal."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from optuna.trial import TrialState

from backtest_queue import Metrics
from backtest_queue.errors import UsageError
from backtest_queue.evolution.proposer import (
    SAMPLERS,
    ListProposer,
    NSGAIIProposer,
    OptunaProposer,
    SamplerName,
)
from backtest_queue.evolution.search_space import KINDS, Candidate, SearchSpace
from backtest_queue.service.strategies import check_strategy


class RandomTrial:
    """A stand-in for ``optuna.Trial`` drawing uniformly (log ignored), to test the space
    alone: pure Python, thousands of draws in milliseconds."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        self.params[name] = value = self.rng.randint(low, high)
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        assert step is not None
        self.params[name] = value = low + step * self.rng.randint(0, round((high - low) / step))
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = value = self.rng.choice(list(choices))
        return value


def test_every_suggestion_is_valid_for_the_service_and_covers_the_space() -> None:
    space = SearchSpace()
    rng = random.Random(0)
    seen_kinds: set[str] = set()
    seen_sl: set[float | None] = set()
    seen_tp: set[float | None] = set()
    for _ in range(3000):
        candidate = space.suggest(RandomTrial(rng))
        checked = check_strategy(candidate.strategy())  # raises if the service would refuse
        assert checked.params == candidate.param_dict
        seen_kinds.add(candidate.kind)
        for value, seen in ((candidate.sl, seen_sl), (candidate.tp, seen_tp)):
            seen.add(value)
            assert value is None or 0.002 <= value <= 0.05
            assert value is None or round(value, 3) == value
        if candidate.kind == "rsi_reversion":
            assert set(candidate.param_dict) == {"period", "lower", "upper"}
            assert 5 <= candidate.param_dict["period"] <= 50
        else:
            fast, slow = candidate.param_dict["fast"], candidate.param_dict["slow"]
            assert 2 <= fast <= 60
            assert fast + 2 <= slow <= fast + 180
        assert len(candidate.name) <= 128
    assert seen_kinds == set(KINDS)
    assert None in seen_sl
    assert None in seen_tp
    assert {0.002, 0.05} <= seen_sl  # both bounds are reachable
    assert len(seen_tp) == 50  # None and 49 steps of 0.001


def test_nsga2_proposals_are_valid_and_reproducible() -> None:
    """Through Optuna itself (no warnings: pytest turns them into errors)."""
    first = NSGAIIProposer(seed=5, population=8).ask(40)
    second = NSGAIIProposer(seed=5, population=8).ask(40)
    assert [p.candidate for p in first] == [p.candidate for p in second]
    numbers = [p.number for p in first]
    assert numbers == sorted(set(numbers))
    assert len({p.candidate for p in first}) == 40  # no repeats handed out
    for p in first:
        check_strategy(p.candidate.strategy())
    assert len({p.candidate.kind for p in first}) == 3


def test_min_trades_makes_few_trades_infeasible() -> None:
    """A result with fewer trades than the minimum is a constraint violation: NSGA-II's
    best trials are the feasible ones even when an infeasible one scores higher."""
    proposer = NSGAIIProposer(seed=1, population=4, min_trades=20)
    proposals = proposer.ask(4)
    results = [
        Metrics(strategy_name="x", sharpe=sharpe, max_drawdown_pct=-2.0, trades=trades)
        for sharpe, trades in ((3.0, 5), (1.0, 20), (0.5, 40), (2.0, 19))
    ]
    proposer.tell(list(zip(proposals, results, strict=True)))
    assert [t.number for t in proposer.study.best_trials] == [1]
    assert all(t.state is TrialState.COMPLETE for t in proposer.study.trials)


def test_candidates_that_differ_in_inactive_genes_are_clones() -> None:
    a = Candidate.make("sma_cross", {"slow": 40, "fast": 10}, 0.0100000001, None)
    b = Candidate.make("sma_cross", {"fast": 10, "slow": 40}, 0.01)
    assert a == b
    assert hash(a) == hash(b)
    assert a.name == "sma_cross-10-40-sl0.010"
    assert a.describe() == "fast=10 slow=40 sl=1.0%"
    rsi = Candidate.make("rsi_reversion", {"period": 14, "lower": 30, "upper": 70.5}, tp=0.02)
    assert rsi.name == "rsi_reversion-30-14-70.5-tp0.020"
    assert rsi.strategy().params == {"lower": 30, "period": 14, "upper": 70.5}


@pytest.mark.parametrize(
    "settings",
    [
        {"kinds": ()},
        {"kinds": ("sma_cross", "macd")},
        {"fast": (0, 10)},
        {"gap": (5, 4)},
        {"period": (1, 10)},
        {"lower": (10, 60), "upper": (55, 90)},
        {"upper": (55, 100)},
        {"bracket": (0.0, 0.05)},
        {"bracket": (0.0025, 0.05)},
    ],
)
def test_bad_bounds_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        SearchSpace(**settings)


def test_list_proposer() -> None:
    proposer = ListProposer([Candidate.make("sma_cross", {"fast": 1, "slow": 2})] * 3)
    assert [p.number for p in proposer.ask(2)] == [0, 1]
    with pytest.raises(ValueError, match="asked for 2 candidates, 1 left"):
        proposer.ask(2)


def test_the_cli_can_list_the_commands_without_the_heavy_imports() -> None:
    """The CLI imports every command module to list it: ours must not pull in Optuna,
    pandas, matplotlib or rich until a command runs."""
    code = (
        "import sys, backtest_queue.evolution as e, backtest_queue.evolution.command_demo, "
        "backtest_queue.evolution.command_evolve\n"
        "heavy = {'optuna', 'pandas', 'matplotlib', 'rich'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_tells_results_as_complete_with_the_trade_constraint(
    sampler: SamplerName,
) -> None:
    proposer = OptunaProposer(sampler=sampler, seed=3, population=4, min_trades=20)
    for _ in range(3):
        proposals = proposer.ask(4)
        assert len({p.candidate for p in proposals}) == 4
        results = [
            Metrics(strategy_name="x", sharpe=sharpe, max_drawdown_pct=dd, trades=trades)
            for sharpe, dd, trades in ((1.0, -2.0, 30), (None, None, 0), (2.0, -1.0, 5),
                                       (0.5, -3.0, 20))
        ]  # fmt: skip
        proposer.tell(list(zip(proposals, results, strict=True)))
    told = [t for t in proposer.study.trials if "repeat_of" not in t.user_attrs]
    assert [t.state for t in told] == [TrialState.COMPLETE] * 12
    assert [t.constraints["min_trades"] > 0 for t in told[:4]] == [False, True, True, False]
    assert proposer.generations == 3


def test_an_unknown_sampler_is_refused() -> None:
    with pytest.raises(UsageError, match="sampler must be one of tpe, nsga2, random"):
        OptunaProposer(sampler="cmaes")  # type: ignore[arg-type]
