"""backtesting.py ``Strategy`` classes for the kinds of :mod:`.strategies`.

Imported only where backtests run (worker processes), because importing backtesting.py
takes about a second. Parameter meanings are documented in :mod:`.strategies`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from backtesting import Strategy
from backtesting.lib import crossover

__all__ = ["STRATEGY_CLASSES", "ema", "rsi", "sma"]


def sma(close: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average of ``close`` over ``period`` bars (NaN before it is defined)."""
    return pd.Series(close).rolling(period).mean().to_numpy()


def ema(close: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average (span ``period``), NaN for the first ``period - 1`` bars."""
    return pd.Series(close).ewm(span=period, adjust=False, min_periods=period).mean().to_numpy()


def rsi(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's relative strength index in [0, 100], NaN until ``period`` changes are seen."""
    change = pd.Series(close).diff()
    alpha = 1.0 / period
    gain = change.clip(lower=0.0).ewm(alpha=alpha, adjust=False, min_periods=period).mean()
    loss = (-change.clip(upper=0.0)).ewm(alpha=alpha, adjust=False, min_periods=period).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 100.0 - 100.0 / (1.0 + gain.to_numpy() / loss.to_numpy())
    # No losses at all: RSI is 100 (gain / 0 = inf gives exactly that); no moves: undefined.
    return np.asarray(values, dtype=float)


class _Bracketed(Strategy):  # type: ignore[misc]
    """Enters with optional stop loss / take profit as fractions of the signal bar's close."""

    stop_loss: ClassVar[float | None] = None
    take_profit: ClassVar[float | None] = None

    def _enter(self, *, long: bool) -> None:
        price = float(self.data.Close[-1])
        sign = 1.0 if long else -1.0
        sl = price * (1.0 - sign * self.stop_loss) if self.stop_loss else None
        tp = price * (1.0 + sign * self.take_profit) if self.take_profit else None
        if long:
            self.buy(sl=sl, tp=tp)
        else:
            self.sell(sl=sl, tp=tp)


class _Cross(_Bracketed):
    fast: ClassVar[int] = 10
    slow: ClassVar[int] = 40
    average: ClassVar[str] = "sma"

    def init(self) -> None:
        function = sma if self.average == "sma" else ema
        self.fast_line = self.I(function, self.data.Close, self.fast, name=f"fast_{self.average}")
        self.slow_line = self.I(function, self.data.Close, self.slow, name=f"slow_{self.average}")

    def next(self) -> None:
        if crossover(self.fast_line, self.slow_line):
            self._enter(long=True)
        elif crossover(self.slow_line, self.fast_line):
            self._enter(long=False)


class SmaCross(_Cross):
    """``sma_cross``: long on the fast SMA crossing above the slow one, short below."""

    average = "sma"


class EmaCross(_Cross):
    """``ema_cross``: long on the fast EMA crossing above the slow one, short below."""

    average = "ema"


class RsiReversion(_Bracketed):
    """``rsi_reversion``: long while RSI < lower, short while RSI > upper."""

    period: ClassVar[int] = 14
    lower: ClassVar[float] = 30.0
    upper: ClassVar[float] = 70.0

    def init(self) -> None:
        self.rsi = self.I(rsi, self.data.Close, self.period, name="rsi")

    def next(self) -> None:
        value = self.rsi[-1]
        if value < self.lower and not self.position.is_long:
            self._enter(long=True)
        elif value > self.upper and not self.position.is_short:
            self._enter(long=False)


#: strategy kind -> backtesting.py strategy class.
STRATEGY_CLASSES: dict[str, type[_Bracketed]] = {
    "sma_cross": SmaCross,
    "ema_cross": EmaCross,
    "rsi_reversion": RsiReversion,
}
