"""How much of a search's best result is selection luck: DSR and PBO.

* :func:`deflated_sharpe_ratio` - the Deflated Sharpe Ratio of Bailey and López de Prado
  (2014): the probability that the true Sharpe ratio of the strategy picked as the best
  of ``trials`` is above zero, given how many were tried, how much their Sharpe ratios
  varied and how far the picked strategy's returns are from normal (skewness,
  kurtosis).
* :func:`probability_of_backtest_overfitting` - the Probability of Backtest Overfitting
  of Bailey, Borwein, López de Prado and Zhu (2017), estimated by combinatorially
  symmetric cross-validation (CSCV): how often the strategy that is best on one half of
  the data is below the median on the other half.

Both are written from the papers (no well-kept Python library computes both: skfolio
has a DSR but no CSCV, and would bring scikit-learn and a convex solver along), with
numpy and the standard library's :class:`statistics.NormalDist`; the tests check them
against the DSR paper's worked example and against cases whose PBO is known.

References:
    D. H. Bailey, M. López de Prado, "The Deflated Sharpe Ratio: Correcting for
    Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio
    Management 40(5), 2014, pp. 94-107 (equations 2 and 3, and its numerical example).

    D. H. Bailey, J. M. Borwein, M. López de Prado, Q. J. Zhu, "The Probability of
    Backtest Overfitting", Journal of Computational Finance 20(4), 2017, pp. 39-69
    (section 2: the CSCV algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import NormalDist
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DeflatedSharpe",
    "Overfitting",
    "deflated_sharpe_ratio",
    "expected_maximum_sharpe",
    "moments",
    "probability_of_backtest_overfitting",
]

_EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def expected_maximum_sharpe(trials: int, variance: float) -> float:
    """The Sharpe ratio the best of ``trials`` skill-less strategies is expected to reach.

    ``SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))`` (Bailey and
    López de Prado 2014, the benchmark of equation 2; ``g`` is the Euler-Mascheroni
    constant, ``Z^-1`` the standard normal quantile).

    Args:
        trials: N, the number of strategies tried (>= 1; 1 gives 0: no selection).
        variance: V, the variance of their Sharpe ratios (per period, like the Sharpe
            ratio it is compared with), >= 0.

    Returns:
        SR0, per period.

    Raises:
        UsageError: ``trials < 1`` or ``variance < 0``.
    """
    if trials < 1 or not variance >= 0:
        raise UsageError(f"need trials >= 1 and variance >= 0, got {trials} and {variance}")
    if trials == 1:
        return 0.0
    return math.sqrt(variance) * (
        (1 - _EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / trials)
        + _EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (trials * math.e))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeflatedSharpe:
    """A Deflated Sharpe Ratio and what went into it (Sharpe ratios per period).

    Attributes:
        dsr: the probability, in [0, 1], that the true Sharpe ratio is above zero once
            selection is accounted for (0.95 or more: significant at 5 %).
        sharpe: the observed Sharpe ratio, per period.
        benchmark: SR0, the best Sharpe ratio luck alone is expected to give.
        trials: N.
        observations: T, the number of returns.
        skewness: of the returns.
        kurtosis: of the returns (not excess: 3 for normal returns).
    """

    dsr: float
    sharpe: float
    benchmark: float
    trials: int
    observations: int
    skewness: float
    kurtosis: float


def deflated_sharpe_ratio(
    *,
    sharpe: float,
    observations: int,
    skewness: float,
    kurtosis: float,
    trials: int,
    trial_variance: float,
) -> DeflatedSharpe:
    """The Deflated Sharpe Ratio (Bailey and López de Prado 2014, equations 2 and 3).

    ``DSR = Z((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))`` with SR0
    from :func:`expected_maximum_sharpe`. The paper's numerical example (N = 100 trials
    with annualised Sharpe variance 1/2, T = 1250 daily returns, annualised Sharpe 2.5,
    skewness -3, kurtosis 10; 250 days a year) gives SR0 = 0.1132 and DSR = 0.9004.

    Args:
        sharpe: the picked strategy's Sharpe ratio, per period (not annualised).
        observations: T, its number of returns, >= 2.
        skewness: g3 of its returns.
        kurtosis: g4 of its returns (not excess).
        trials: N, how many strategies the search tried.
        trial_variance: the variance of their Sharpe ratios, per period.

    Returns:
        The DSR and its inputs.

    Raises:
        UsageError: ``observations < 2``, or see :func:`expected_maximum_sharpe`.
    """
    if observations < 2:
        raise UsageError(f"need at least 2 returns for a DSR, got {observations}")
    benchmark = expected_maximum_sharpe(trials, trial_variance)
    spread = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe**2
    z = (sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(max(spread, 1e-12))
    return DeflatedSharpe(
        dsr=_NORMAL.cdf(z),
        sharpe=sharpe,
        benchmark=benchmark,
        trials=trials,
        observations=observations,
        skewness=skewness,
        kurtosis=kurtosis,
    )


def moments(returns: Sequence[float] | npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """``(sharpe, skewness, kurtosis)`` of a return series, per period: mean over
    standard deviation (ddof 1), and the population skewness and (non-excess) kurtosis.

    Raises:
        UsageError: fewer than 2 returns, or constant returns (no Sharpe ratio).
    """
    import numpy as np

    x = np.asarray(returns, dtype=float)
    if x.size < 2 or not float(np.std(x)) > 0:
        raise UsageError("a Sharpe ratio needs at least 2 returns that are not all equal")
    centred = x - x.mean()
    sd = float(np.sqrt(np.mean(centred**2)))
    skewness = float(np.mean(centred**3)) / sd**3
    kurtosis = float(np.mean(centred**4)) / sd**4
    return float(x.mean() / x.std(ddof=1)), skewness, kurtosis


@dataclass(frozen=True, slots=True, kw_only=True)
class Overfitting:
    """The Probability of Backtest Overfitting of a set of strategies, by CSCV.

    Attributes:
        pbo: the share of the splits in which the in-sample best strategy ranks at or
            below the out-of-sample median (logit <= 0), in [0, 1].
        logits: per split, ``ln(w / (1 - w))`` of the in-sample best strategy's relative
            out-of-sample rank ``w`` (rank / (N + 1), rank 1 = worst).
        strategies: N.
        blocks: S, the number of row blocks (the splits are the C(S, S/2) halves).
        observations: T, the rows used (a multiple of S).
    """

    pbo: float
    logits: tuple[float, ...]
    strategies: int
    blocks: int
    observations: int


def _sharpe_columns(block: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import numpy as np

    sd = block.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(sd > 0, block.mean(axis=0) / sd, 0.0)
    return np.asarray(sharpe, dtype=float)


def probability_of_backtest_overfitting(
    returns: Sequence[Sequence[float]] | npt.NDArray[np.float64], *, blocks: int = 16
) -> Overfitting:
    """PBO by combinatorially symmetric cross-validation (Bailey et al. 2017, section 2).

    The T x N matrix (one column per strategy, one row per period) is cut into ``blocks``
    consecutive blocks of equal size (the last ``T mod S`` rows are left out). For every
    way to choose S/2 blocks as the in-sample half (the rest, in order, is the
    out-of-sample half): the strategy with the best in-sample Sharpe ratio (mean / sd,
    0 for constant returns; the first on ties) is ranked among all strategies out of
    sample (1 = worst, by Sharpe ratio; ties by column order), ``w = rank / (N + 1)``,
    and the logit ``ln(w / (1 - w))`` is recorded. PBO is the share of logits <= 0: how
    often the in-sample winner is no better than the median out of sample. No skill at
    all gives about 0.5; a strategy that is best in every block gives 0.

    Args:
        returns: per-period returns, T x N, N >= 2.
        blocks: S, even, >= 2, at most T.

    Returns:
        The PBO and the logits.

    Raises:
        UsageError: fewer than 2 strategies, an odd or too large ``blocks``.
    """
    import numpy as np

    matrix = np.asarray(returns, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise UsageError(f"need a T x N return matrix with N >= 2, got shape {matrix.shape}")
    rows, strategies = matrix.shape
    if blocks < 2 or blocks % 2 or blocks > rows:
        raise UsageError(f"blocks must be even, >= 2 and <= {rows} (the rows), got {blocks}")
    size = rows // blocks
    parts = [matrix[i * size : (i + 1) * size] for i in range(blocks)]
    logits = []
    for chosen in combinations(range(blocks), blocks // 2):
        rest = [i for i in range(blocks) if i not in chosen]
        in_sample = _sharpe_columns(np.concatenate([parts[i] for i in chosen]))
        out_of_sample = _sharpe_columns(np.concatenate([parts[i] for i in rest]))
        best = int(np.argmax(in_sample))
        rank = 1 + int(np.argsort(np.argsort(out_of_sample, kind="stable"))[best])
        w = rank / (strategies + 1)
        logits.append(math.log(w / (1 - w)))
    return Overfitting(
        pbo=sum(lam <= 0 for lam in logits) / len(logits),
        logits=tuple(logits),
        strategies=strategies,
        blocks=blocks,
        observations=size * blocks,
    )
