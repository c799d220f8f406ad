"""Strategy kinds: parameter validation names the offending field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue.errors import ProtocolError
from backtest_queue.protocol import Strategy
from backtest_queue.service.strategies import KINDS, MAX_PERIOD, check_strategy


def strategy(kind: str, params: dict[str, Any], **extra: Any) -> Strategy:
    return Strategy(name="s", kind=kind, params=params, **extra)


@pytest.mark.parametrize(
    ("kind", "params", "normalised", "min_bars"),
    [
        ("sma_cross", {"fast": 10, "slow": 40}, {"fast": 10, "slow": 40}, 42),
        ("ema_cross", {"fast": 1, "slow": 2}, {"fast": 1, "slow": 2}, 4),
        ("sma_cross", {"fast": 5.0, "slow": 20.0}, {"fast": 5, "slow": 20}, 22),
        (
            "rsi_reversion",
            {"period": 14, "lower": 30, "upper": 70.5},
            {"period": 14, "lower": 30.0, "upper": 70.5},
            17,
        ),
    ],
)
def test_valid_strategies_are_normalised(
    kind: str, params: dict[str, Any], normalised: dict[str, Any], min_bars: int
) -> None:
    checked = check_strategy(strategy(kind, params, sl=0.01, tp=0.02))
    assert checked.kind == kind
    assert dict(checked.params) == normalised
    assert all(type(checked.params[k]) is type(v) for k, v in normalised.items())
    assert (checked.sl, checked.tp, checked.min_bars) == (0.01, 0.02, min_bars)


@pytest.mark.parametrize(
    ("kind", "params", "extra", "field", "words"),
    [
        ("macd", {}, {}, "strategy.kind", "ema_cross, rsi_reversion, sma_cross"),
        ("sma_cross", {"fast": 10}, {}, "strategy.params.slow", "missing"),
        ("sma_cross", {"fast": 10, "slow": 40, "x": 1}, {}, "strategy.params.x", "unknown"),
        ("sma_cross", {"fast": 40, "slow": 10}, {}, "strategy.params.fast", "less than slow"),
        ("ema_cross", {"fast": 10, "slow": 10}, {}, "strategy.params.fast", "less than slow"),
        ("sma_cross", {"fast": -3, "slow": 10}, {}, "strategy.params.fast", "between 1"),
        ("sma_cross", {"fast": 0, "slow": 10}, {}, "strategy.params.fast", "between 1"),
        ("sma_cross", {"fast": 2.5, "slow": 10}, {}, "strategy.params.fast", "integer"),
        ("ema_cross", {"fast": 2, "slow": MAX_PERIOD + 1}, {}, "strategy.params.slow", "between"),
        (
            "rsi_reversion",
            {"period": 1, "lower": 30, "upper": 70},
            {},
            "strategy.params.period",
            "",
        ),
        ("rsi_reversion", {"period": 14, "lower": 0, "upper": 70}, {}, "strategy.params.lower", ""),
        (
            "rsi_reversion",
            {"period": 14, "lower": 30, "upper": 100},
            {},
            "strategy.params.upper",
            "",
        ),
        (
            "rsi_reversion",
            {"period": 14, "lower": 70, "upper": 30},
            {},
            "strategy.params.lower",
            "",
        ),
        ("sma_cross", {"fast": 1, "slow": 2}, {"sl": 1e-6}, "strategy.sl", "[0.0001, 1)"),
        ("sma_cross", {"fast": 1, "slow": 2}, {"tp": 1e-9}, "strategy.tp", "[0.0001, 1)"),
    ],
)
def test_invalid_strategies_name_the_field(
    kind: str, params: dict[str, Any], extra: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_strategy(strategy(kind, params, **extra))
    assert caught.value.code == "invalid_request"
    assert caught.value.message.startswith(f"{field}: ")
    assert words in caught.value.message


def test_every_kind_is_documented() -> None:
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.summary
        assert kind.params


@given(
    kind=st.sampled_from([*KINDS, "other"]),
    params=st.dictionaries(
        st.sampled_from(["fast", "slow", "period", "lower", "upper", "zz"]),
        st.one_of(st.integers(-(10**7), 10**7), st.floats(allow_nan=False, allow_infinity=False)),
    ),
)
def test_check_strategy_accepts_or_names_a_field(kind: str, params: dict[str, Any]) -> None:
    error: ProtocolError | None = None
    try:
        checked = check_strategy(strategy(kind, params))
    except ProtocolError as exc:
        error = exc
    if error is None:
        assert checked.min_bars >= 4
        assert set(checked.params) == set(KINDS[kind].params)
    else:
        assert error.code == "invalid_request"
        assert error.message.startswith("strategy.")
