"""The backtesting engine interface, and the built-in engine on backtesting.py.

An engine is what a worker process runs for each request. Plug your own (a compiled
engine run as a subprocess, say) by implementing :class:`Engine` and passing it to
:func:`~backtest_queue.service.open_service`.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from ..errors import BacktestQueueError
from ..protocol import BacktestRequest, Metrics, Strategy
from .strategies import check_strategy

__all__ = [
    "BacktestingPyEngine",
    "Engine",
    "EngineError",
    "ServiceUnavailable",
    "finite_or_none",
    "run_backtesting_py",
]


class EngineError(BacktestQueueError):
    """A backtest could not be run; the service answers with an ``engine_error`` reply.

    The argument is one line a person can act on.
    """


class ServiceUnavailable(EngineError):
    """The backtest was not run because the service is stopping; the service answers with
    an ``unavailable`` reply, which a requester sends again (here later, or elsewhere)."""


@runtime_checkable
class Engine(Protocol):
    """Runs backtests. Must be picklable: it is pickled once and unpickled in each worker.

    ``validate`` runs in the service process (before a request is queued), ``prepare``
    and ``run`` run in the worker processes.
    """

    def validate(self, strategy: Strategy) -> int:
        """Check a strategy before it is queued; must be fast (microseconds) and pure.

        Returns:
            The fewest OHLCV bars the strategy needs; requests whose ``start`` / ``end``
            leave fewer are answered with ``invalid_request``.

        Raises:
            ProtocolError: ``invalid_request``, the message starting with the offending
                field (``"strategy.params.fast: ..."``). Anything else raised here is
                answered with ``engine_error``.
        """
        ...

    def prepare(self) -> None:
        """Get ready in a fresh worker process (import modules, start a subprocess, ...).

        Called once per worker before its first :meth:`run`. Raising here breaks the pool:
        a service that is warming up refuses to start.
        """
        ...

    def run(self, request: BacktestRequest, bars: pd.DataFrame) -> Metrics:
        """Run one backtest.

        Args:
            request: the validated request.
            bars: the OHLCV bars to use, already cut to ``request.start`` / ``end``
                (tz-naive UTC ``DatetimeIndex``; float ``Open``, ``High``, ``Low``,
                ``Close``, ``Volume``). Do not modify it.

        Returns:
            The metrics; undefined ones ``None``, never NaN. ``elapsed_ms`` is the wall
            time of the run, in milliseconds.

        Raises:
            Exception: anything; the request is answered with ``engine_error`` carrying
                ``"<ExceptionType>: <message>"``. Raise :class:`EngineError` for a message
                that stands alone.
        """
        ...


def finite_or_none(value: Any) -> float | None:
    """Return ``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number + 0.0 if math.isfinite(number) else None  # + 0.0 turns -0.0 into 0.0


class BacktestingPyEngine:
    """The built-in engine: backtesting.py (AGPL-3.0) on the strategy kinds of
    :mod:`backtest_queue.service.strategies`.

    Each run: ``Backtest(bars, cash=request.cash, commission=request.commission,
    exclusive_orders=True, finalize_trades=True)``, no spread, no margin. Orders fill at
    the next bar's open; trades still open at the end are closed on the last bar and
    counted. Metrics come from backtesting.py's statistics (risk-free rate 0):
    ``sharpe`` = "Sharpe Ratio", ``sortino`` = "Sortino Ratio", ``return_pct`` =
    "Return [%]", ``max_drawdown_pct`` = "Max. Drawdown [%]", ``trades`` = "# Trades",
    ``win_rate`` = "Win Rate [%]" / 100, ``profit_factor`` = "Profit Factor" (gross
    winning trade returns / gross losing ones; ``None`` without losing trades). The same
    request on the same bars gives the same metrics, except ``elapsed_ms``.
    """

    def __repr__(self) -> str:
        return "BacktestingPyEngine()"

    def validate(self, strategy: Strategy) -> int:
        """See :meth:`Engine.validate`."""
        return check_strategy(strategy).min_bars

    def prepare(self) -> None:
        """Import backtesting.py (about a second) so the first run is not slower."""
        from . import backtesting_strategies  # noqa: F401

    def run(self, request: BacktestRequest, bars: pd.DataFrame) -> Metrics:
        """See :meth:`Engine.run`. Silences backtesting.py's warnings during the run."""
        started = time.perf_counter()
        stats = run_backtesting_py(
            request.strategy, bars, cash=request.cash, commission=request.commission
        )
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        win_rate = finite_or_none(stats["Win Rate [%]"])
        return Metrics(
            strategy_name=request.strategy.name,
            sharpe=finite_or_none(stats["Sharpe Ratio"]),
            sortino=finite_or_none(stats["Sortino Ratio"]),
            return_pct=finite_or_none(stats["Return [%]"]),
            max_drawdown_pct=finite_or_none(stats["Max. Drawdown [%]"]),
            trades=int(stats["# Trades"]),
            win_rate=None if win_rate is None else win_rate / 100.0,
            profit_factor=finite_or_none(stats["Profit Factor"]),
            bars=len(bars),
            elapsed_ms=elapsed_ms,
        )


def run_backtesting_py(
    strategy: Strategy, bars: pd.DataFrame, *, cash: float, commission: float
) -> pd.Series:
    """Run one strategy on ``bars`` with backtesting.py, the way the service does.

    The one place that sets up ``Backtest`` (exclusive orders, trades closed at the end),
    so the demo's local equity curve and the service's metrics cannot drift apart.

    Args:
        strategy: a strategy of one of the built-in kinds.
        bars: OHLCV bars already cut to the range to run on.
        cash: starting cash.
        commission: commission per trade as a fraction of its value.

    Returns:
        backtesting.py's statistics series (with ``_equity_curve``).

    Raises:
        ProtocolError: the strategy breaks its kind's parameter rules.
    """
    from backtesting import Backtest

    from .backtesting_strategies import STRATEGY_CLASSES

    checked = check_strategy(strategy)
    with warnings.catch_warnings():
        # Cancelled orders, prices above cash, ...: expected in a search, not errors.
        warnings.simplefilter("ignore")
        backtest = Backtest(
            bars,
            STRATEGY_CLASSES[checked.kind],
            cash=cash,
            commission=commission,
            exclusive_orders=True,
            finalize_trades=True,
        )
        stats: pd.Series = backtest.run(
            **checked.params, stop_loss=checked.sl, take_profit=checked.tp
        )
    return stats
