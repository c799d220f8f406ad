"""The strategy kinds the built-in engine implements, and their parameter validation.

Pure Python (no pandas, no backtesting.py), so the service process checks every request
before it is queued, and a worker checks it again to get the normalised parameters.

Kinds (all trade long and short; an opposite signal reverses the position):

``sma_cross`` - params ``fast``, ``slow``: integer periods, ``1 <= fast < slow <= 100000``.
    Long when the ``fast``-bar simple moving average of the close crosses above the
    ``slow``-bar one, short when it crosses below.
``ema_cross`` - params ``fast``, ``slow``: as ``sma_cross``, with exponential moving
    averages (span = period, no value before ``period`` bars).
``rsi_reversion`` - params ``period`` (integer, ``2 <= period <= 100000``), ``lower``,
    ``upper`` (RSI levels, ``0 < lower < upper < 100``). Wilder's RSI of the close; long
    while it is below ``lower``, short while it is above ``upper``.

Every kind accepts the strategy's optional ``sl`` / ``tp``: stop loss and take profit as
fractions of the close of the bar that signalled (0.01 = 1 %), each at least
:data:`MIN_BRACKET` (smaller ones would sit on the entry price). Integer parameters may
be sent as integral floats (``10.0``), not as ``10.5``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import ProtocolError
from ..protocol import Strategy

__all__ = [
    "KINDS",
    "MAX_PERIOD",
    "MIN_BRACKET",
    "CheckedStrategy",
    "StrategyKind",
    "check_strategy",
]

#: Largest period accepted, in bars.
MAX_PERIOD: Final = 100_000
#: Smallest ``sl`` / ``tp`` accepted, as a fraction of the price (0.0001 = 0.01 %).
MIN_BRACKET: Final = 0.0001

Params = Mapping[str, int | float]


@dataclass(frozen=True, slots=True)
class CheckedStrategy:
    """A strategy whose kind and parameters passed validation.

    Attributes:
        kind: the strategy kind, e.g. ``"sma_cross"``.
        params: the parameters, integer ones as ``int``.
        sl: stop loss as a fraction of the entry price, or ``None``.
        tp: take profit as a fraction of the entry price, or ``None``.
        min_bars: the fewest OHLCV bars a run needs to be able to trade at all.
    """

    kind: str
    params: Mapping[str, int | float]
    sl: float | None
    tp: float | None
    min_bars: int


@dataclass(frozen=True, slots=True)
class StrategyKind:
    """One strategy family: its parameter names, a checker, and a one-line summary."""

    name: str
    params: tuple[str, ...]
    summary: str
    #: Checks the (complete, known) parameters; returns them normalised and the bars needed.
    check: Callable[[Params], tuple[dict[str, int | float], int]]


def _invalid(field: str, problem: str) -> ProtocolError:
    return ProtocolError("invalid_request", f"{field}: {problem}", field=field)


def _period(params: Params, name: str, minimum: int) -> int:
    value = params[name]
    field = f"strategy.params.{name}"
    if isinstance(value, float) and not value.is_integer():
        raise _invalid(field, f"must be an integer number of bars, got {value!r}")
    period = int(value)
    if not minimum <= period <= MAX_PERIOD:
        raise _invalid(field, f"must be between {minimum} and {MAX_PERIOD} bars, got {value!r}")
    return period


def _level(params: Params, name: str) -> float:
    value = float(params[name])
    if not 0.0 < value < 100.0:
        raise _invalid(
            f"strategy.params.{name}", f"must be an RSI level in (0, 100), got {value!r}"
        )
    return value


def _check_cross(params: Params) -> tuple[dict[str, int | float], int]:
    fast = _period(params, "fast", 1)
    slow = _period(params, "slow", 2)
    if fast >= slow:
        raise _invalid(
            "strategy.params.fast", f"must be less than slow, got fast={fast} slow={slow}"
        )
    # slow - 1 bars have no average yet; a crossover needs two averaged bars, and the
    # order fills on the bar after the signal.
    return {"fast": fast, "slow": slow}, slow + 2


def _check_rsi(params: Params) -> tuple[dict[str, int | float], int]:
    period = _period(params, "period", 2)
    lower = _level(params, "lower")
    upper = _level(params, "upper")
    if lower >= upper:
        raise _invalid(
            "strategy.params.lower", f"must be less than upper, got lower={lower} upper={upper}"
        )
    # The first change is on bar 1 and Wilder's average needs `period` of them.
    return {"period": period, "lower": lower, "upper": upper}, period + 3


KINDS: Final[Mapping[str, StrategyKind]] = {
    kind.name: kind
    for kind in (
        StrategyKind(
            "sma_cross", ("fast", "slow"), "simple moving average crossover", _check_cross
        ),
        StrategyKind(
            "ema_cross", ("fast", "slow"), "exponential moving average crossover", _check_cross
        ),
        StrategyKind(
            "rsi_reversion",
            ("period", "lower", "upper"),
            "RSI mean reversion: long below lower, short above upper",
            _check_rsi,
        ),
    )
}


def _bracket(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(value) and MIN_BRACKET <= value < 1.0):
        raise _invalid(
            f"strategy.{name}", f"must be a fraction in [{MIN_BRACKET}, 1), got {value!r}"
        )
    return value


def check_strategy(strategy: Strategy) -> CheckedStrategy:
    """Validate a strategy's kind, parameters and ``sl`` / ``tp``.

    Args:
        strategy: the strategy of a decoded request.

    Returns:
        The normalised strategy and the fewest bars it needs.

    Raises:
        ProtocolError: ``invalid_request``; the message starts with the offending field,
            e.g. ``"strategy.params.fast: must be less than slow, got fast=40 slow=10"``:
            an unknown kind, an unknown or missing parameter, a non-integer or
            out-of-range period, ``fast >= slow``, ``lower >= upper``, or a bad ``sl``/``tp``.
    """
    kind = KINDS.get(strategy.kind)
    if kind is None:
        raise _invalid(
            "strategy.kind",
            f"{strategy.kind!r} is not a strategy kind this service runs; "
            f"expected one of {', '.join(sorted(KINDS))}",
        )
    expected = ", ".join(kind.params)
    for name in sorted(strategy.params):
        if name not in kind.params:
            raise _invalid(
                f"strategy.params.{name}",
                f"unknown parameter for {kind.name} (expected {expected})",
            )
    for name in kind.params:
        if name not in strategy.params:
            raise _invalid(f"strategy.params.{name}", f"missing; {kind.name} needs {expected}")
    params, min_bars = kind.check(strategy.params)
    return CheckedStrategy(
        kind=kind.name,
        params=params,
        sl=_bracket("sl", strategy.sl),
        tp=_bracket("tp", strategy.tp),
        min_bars=min_bars,
    )
