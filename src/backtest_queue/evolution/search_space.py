"""The strategies a search may propose: :class:`Candidate` and :class:`SearchSpace`.

The space covers the built-in service's strategy kinds (see
:mod:`backtest_queue.service.strategies`) and the optional stop loss / take profit:

=================  ==========================================================
``kind``           ``sma_cross``, ``ema_cross`` or ``rsi_reversion``
``fast``           moving-average period in bars, integer, log-uniform
``slow``           ``fast + gap``; ``gap`` in bars, integer, log-uniform
``period``         RSI period in bars, integer
``lower/upper``    RSI levels (integers), ``lower < 50 < upper``
``sl / tp``        ``None`` or a fraction of the entry price, in steps of 0.001
=================  ==========================================================

Every trial suggests *every* parameter, the inactive ones included, so a genetic
optimizer works on one fixed-length genome (Optuna's NSGA-II only crosses over the
parameters that all trials share). A :class:`Candidate` keeps only its kind's
parameters, so two trials that differ in inactive genes only are the same candidate: a
clone, which the evolution cycle does not run twice.

Pure Python: no Optuna import; anything with Optuna's ``suggest_*`` methods will do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..protocol import Strategy

__all__ = ["KINDS", "Candidate", "SearchSpace", "TrialLike"]

#: The strategy kinds of the built-in backtest service.
KINDS: Final = ("sma_cross", "ema_cross", "rsi_reversion")
#: Decimal places kept of ``sl`` / ``tp`` (steps of 0.001 = 0.1 %).
_BRACKET_DIGITS: Final = 3


class TrialLike(Protocol):
    """What :meth:`SearchSpace.suggest` needs from a trial (``optuna.Trial`` fits)."""

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        """Suggest an integer in ``[low, high]``."""
        ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        """Suggest a float in ``[low, high]``."""
        ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """Suggest one of ``choices``."""
        ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """One strategy to evaluate: hashable, so identical candidates compare equal.

    Attributes:
        kind: the strategy kind, e.g. ``"sma_cross"``.
        params: the kind's parameters as ``(name, value)`` pairs sorted by name.
        sl: stop loss as a fraction of the entry price (0.01 = 1 %), or ``None``.
        tp: take profit as a fraction of the entry price, or ``None``.
    """

    kind: str
    params: tuple[tuple[str, int | float], ...]
    sl: float | None = None
    tp: float | None = None

    @classmethod
    def make(
        cls,
        kind: str,
        params: Mapping[str, int | float],
        sl: float | None = None,
        tp: float | None = None,
    ) -> Candidate:
        """Build a candidate from a parameter mapping (``sl`` / ``tp`` rounded to 0.001)."""
        return cls(kind, tuple(sorted(params.items())), _round(sl), _round(tp))

    @property
    def param_dict(self) -> dict[str, int | float]:
        """The parameters as a dict."""
        return dict(self.params)

    @property
    def name(self) -> str:
        """A short stable name, e.g. ``"sma_cross-10-40-sl0.010-tp0.020"`` (<= 128 chars)."""
        parts = [self.kind, *(_number(v) for _, v in self.params)]
        if self.sl is not None:
            parts.append(f"sl{self.sl:.3f}")
        if self.tp is not None:
            parts.append(f"tp{self.tp:.3f}")
        return "-".join(parts)[:128]

    def describe(self) -> str:
        """The parameters for people, e.g. ``"fast=10 slow=40 sl=1.0% tp=2.0%"`` (an unset
        ``sl`` / ``tp`` is left out)."""
        parts = [f"{k}={_number(v)}" for k, v in self.params]
        if self.sl is not None:
            parts.append(f"sl={self.sl * 100:.1f}%")
        if self.tp is not None:
            parts.append(f"tp={self.tp * 100:.1f}%")
        return " ".join(parts)

    def strategy(self) -> Strategy:
        """The wire-protocol strategy for this candidate."""
        return Strategy(
            name=self.name, kind=self.kind, params=self.param_dict, sl=self.sl, tp=self.tp
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchSpace:
    """Bounds of the strategy search (bars for periods, fractions for ``sl`` / ``tp``).

    Attributes:
        kinds: the strategy kinds to propose.
        fast: ``(low, high)`` of the fast moving-average period.
        gap: ``(low, high)`` of ``slow - fast``.
        period: ``(low, high)`` of the RSI period.
        lower: ``(low, high)`` of the RSI level to go long below.
        upper: ``(low, high)`` of the RSI level to go short above.
        bracket: ``(low, high)`` of ``sl`` and ``tp`` when they are used.

    Raises:
        ValueError: on construction, when a range is empty or breaks the service's rules
            (``fast >= 1``, ``gap >= 1``, ``period >= 2``, ``0 < lower < upper < 100``,
            ``0 < bracket < 1`` in multiples of 0.001) or a kind is unknown.
    """

    kinds: tuple[str, ...] = KINDS
    fast: tuple[int, int] = (2, 60)
    gap: tuple[int, int] = (2, 180)
    period: tuple[int, int] = (5, 50)
    lower: tuple[int, int] = (10, 45)
    upper: tuple[int, int] = (55, 90)
    bracket: tuple[float, float] = (0.002, 0.05)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        for name, minimum in (("fast", 1), ("gap", 1), ("period", 2)):
            lo, hi = getattr(self, name)
            if not minimum <= lo <= hi:
                raise ValueError(
                    f"{name} must be (low, high) with {minimum} <= low <= high, got {(lo, hi)!r}"
                )
        if not 0 < self.lower[0] <= self.lower[1] < self.upper[0] <= self.upper[1] < 100:
            raise ValueError(
                "lower and upper must be RSI level ranges with 0 < lower[0] <= lower[1] < "
                f"upper[0] <= upper[1] < 100, got {self.lower!r} and {self.upper!r}"
            )
        lo, hi = self.bracket
        on_grid = all(abs(v * 1000 - round(v * 1000)) < 1e-9 for v in self.bracket)
        if not (0.0 < lo <= hi < 1.0 and on_grid):
            raise ValueError(
                "bracket must be (low, high) inside (0, 1), multiples of 0.001, "
                f"got {self.bracket!r}"
            )

    def suggest(self, trial: TrialLike) -> Candidate:
        """Draw one candidate, suggesting every parameter (see the module docstring).

        Args:
            trial: an ``optuna.Trial`` or anything with the same ``suggest_*`` methods.

        Returns:
            The candidate; its parameters always pass the service's validation.
        """
        kind = str(trial.suggest_categorical("kind", list(self.kinds)))
        fast = trial.suggest_int("fast", *self.fast, log=True)
        gap = trial.suggest_int("gap", *self.gap, log=True)
        period = trial.suggest_int("period", *self.period)
        lower = trial.suggest_int("lower", *self.lower)
        upper = trial.suggest_int("upper", *self.upper)
        use_sl = bool(trial.suggest_categorical("use_sl", [True, False]))
        sl = trial.suggest_float("sl", *self.bracket, step=0.001)
        use_tp = bool(trial.suggest_categorical("use_tp", [True, False]))
        tp = trial.suggest_float("tp", *self.bracket, step=0.001)
        params: dict[str, int | float]
        if kind == "rsi_reversion":
            params = {"period": period, "lower": lower, "upper": upper}
        else:
            params = {"fast": fast, "slow": fast + gap}
        return Candidate.make(kind, params, sl if use_sl else None, tp if use_tp else None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _BRACKET_DIGITS)


def _number(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
