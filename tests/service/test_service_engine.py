"""The backtesting.py engine, run in this process on the real built-in data."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_queue.protocol import BacktestRequest, Metrics, Strategy
from backtest_queue.service.datasets import Catalog, load_catalog
from backtest_queue.service.engine import BacktestingPyEngine, Engine, finite_or_none

KIND_PARAMS: dict[str, dict[str, Any]] = {
    "sma_cross": {"fast": 10, "slow": 40},
    "ema_cross": {"fast": 12, "slow": 26},
    "rsi_reversion": {"period": 14, "lower": 30, "upper": 70},
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def engine() -> BacktestingPyEngine:
    engine = BacktestingPyEngine()
    engine.prepare()
    return engine


def request(kind: str, data_id: str = "GOOG-D1", **extra: Any) -> BacktestRequest:
    strategy = Strategy(name=f"{kind}-test", kind=kind, params=KIND_PARAMS[kind], **extra)
    return BacktestRequest(request_id="r", strategy=strategy, data_id=data_id)


def assert_wire_clean(metrics: Metrics) -> None:
    body = msgspec.json.encode(metrics)
    text = body.decode()
    assert "NaN" not in text
    assert "Infinity" not in text
    for key, value in json.loads(text).items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    if metrics.win_rate is not None:
        assert 0.0 <= metrics.win_rate <= 1.0
    if metrics.max_drawdown_pct is not None:
        assert metrics.max_drawdown_pct <= 0.0
    assert metrics.elapsed_ms > 0.0


def test_the_engine_implements_the_protocol(engine: BacktestingPyEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.validate(request("sma_cross").strategy) == 42


@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_each_kind_runs_on_real_data(
    engine: BacktestingPyEngine, catalog: Catalog, kind: str
) -> None:
    bars = catalog.get("EURUSD-H1").bars.iloc[:1500]
    metrics = engine.run(request(kind, "EURUSD-H1"), bars)
    assert metrics.strategy_name == f"{kind}-test"
    assert metrics.bars == 1500
    assert metrics.trades > 0
    assert metrics.sharpe is not None
    assert metrics.return_pct is not None
    assert_wire_clean(metrics)


@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_stop_loss_and_take_profit_change_the_run(
    engine: BacktestingPyEngine, catalog: Catalog, kind: str
) -> None:
    bars = catalog.get("GOOG-D1").bars
    plain = engine.run(request(kind), bars)
    bracketed = engine.run(request(kind, sl=0.02, tp=0.04), bars)
    assert plain.return_pct != bracketed.return_pct
    assert_wire_clean(bracketed)


def test_same_request_same_metrics(engine: BacktestingPyEngine, catalog: Catalog) -> None:
    bars = catalog.get("EURUSD-H1").bars
    first = engine.run(request("ema_cross", "EURUSD-H1", sl=0.01), bars)
    second = engine.run(request("ema_cross", "EURUSD-H1", sl=0.01), bars)
    assert msgspec.structs.replace(first, elapsed_ms=1.0) == msgspec.structs.replace(
        second, elapsed_ms=1.0
    )


def test_undefined_metrics_are_null(engine: BacktestingPyEngine, catalog: Catalog) -> None:
    # 45 daily bars and a 40-bar slow average: no crossover, no trade.
    metrics = engine.run(request("sma_cross"), catalog.get("GOOG-D1").bars.iloc[:45])
    assert metrics.trades == 0
    assert (metrics.sharpe, metrics.win_rate, metrics.profit_factor) == (None, None, None)
    assert metrics.return_pct == 0.0
    assert_wire_clean(metrics)
    assert b'"sharpe":null' in msgspec.json.encode(metrics)


def test_finite_or_none() -> None:
    assert finite_or_none(float("nan")) is None
    assert finite_or_none(float("inf")) is None
    assert finite_or_none(None) is None
    assert finite_or_none("x") is None
    assert str(finite_or_none(-0.0)) == "0.0"
    assert finite_or_none(2) == 2.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(KIND_PARAMS)),
    a=st.integers(1, 60),
    b=st.integers(2, 120),
    level=st.floats(1.0, 49.0),
    start=st.integers(0, 1500),
    bracket=st.one_of(st.none(), st.floats(0.0001, 0.5)),
    data_id=st.sampled_from(["EURUSD-H1", "GOOG-D1", "BTCUSD-MN1"]),
)
def test_metrics_are_always_finite_or_null(
    engine: BacktestingPyEngine,
    catalog: Catalog,
    kind: str,
    a: int,
    b: int,
    level: float,
    start: int,
    bracket: float | None,
    data_id: str,
) -> None:
    fast, slow = min(a, b - 1), b
    params: dict[str, Any] = (
        {"period": max(a, 2), "lower": level, "upper": 100.0 - level}
        if kind == "rsi_reversion"
        else {"fast": fast, "slow": slow}
    )
    strategy = Strategy(name="h", kind=kind, params=params, sl=bracket, tp=bracket)
    bars = catalog.get(data_id).bars
    bars = bars.iloc[min(start, len(bars) - 130) :][:600]
    metrics = engine.run(BacktestRequest(strategy=strategy, data_id=data_id), bars)
    assert metrics.bars == len(bars)
    assert_wire_clean(metrics)
