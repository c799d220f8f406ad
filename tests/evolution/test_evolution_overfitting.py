"""Deflated Sharpe Ratio and Probability of Backtest Overfitting, against the papers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backtest_queue.errors import UsageError
from backtest_queue.evolution.overfitting import (
    deflated_sharpe_ratio,
    expected_maximum_sharpe,
    moments,
    probability_of_backtest_overfitting,
)


def test_dsr_reproduces_the_papers_numerical_example() -> None:
    """Bailey and López de Prado (2014), "A numerical example": 100 trials whose
    annualised Sharpe ratios vary by 1/2, the best one annualised 2.5 over five years of
    daily returns (T = 1250, 250 days a year), skewness -3, kurtosis 10: SR0 = 0.1132
    (per day) and DSR = 0.9004."""
    days = 250
    result = deflated_sharpe_ratio(
        sharpe=2.5 / math.sqrt(days),
        observations=1250,
        skewness=-3.0,
        kurtosis=10.0,
        trials=100,
        trial_variance=0.5 / days,
    )
    assert result.benchmark == pytest.approx(0.1132, abs=5e-5)
    assert result.dsr == pytest.approx(0.9004, abs=5e-5)


def test_more_trials_raise_the_bar() -> None:
    assert expected_maximum_sharpe(1, 0.01) == 0.0
    bars = [expected_maximum_sharpe(n, 0.01) for n in (2, 10, 100, 1000)]
    assert bars == sorted(bars)
    assert bars[0] > 0
    one = deflated_sharpe_ratio(
        sharpe=0.1, observations=500, skewness=0, kurtosis=3, trials=1, trial_variance=0.01
    )
    many = deflated_sharpe_ratio(
        sharpe=0.1, observations=500, skewness=0, kurtosis=3, trials=1000, trial_variance=0.01
    )
    assert many.dsr < one.dsr
    # One trial, normal returns: the Probabilistic Sharpe Ratio against 0.
    assert one.dsr == pytest.approx(0.5 * (1 + math.erf(0.1 * math.sqrt(499) / math.sqrt(
        1 + 2 / 4 * 0.01) / math.sqrt(2))))  # fmt: skip


def test_moments_by_hand() -> None:
    """[1, 2, 3, 4]: mean 2.5, sd (ddof 1) sqrt(5/3); centred moments m2 = 1.25,
    m3 = 0, m4 = 2.5625, so skewness 0 and kurtosis 2.5625 / 1.25^2 = 1.64."""
    sharpe, skewness, kurtosis = moments([1.0, 2.0, 3.0, 4.0])
    assert sharpe == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert skewness == pytest.approx(0.0)
    assert kurtosis == pytest.approx(1.64)
    with pytest.raises(UsageError, match="not all equal"):
        moments([0.0, 0.0, 0.0])


def test_pbo_worked_by_hand() -> None:
    """Two strategies, two blocks of two rows, so two splits. Block 0: A has Sharpe
    0.02/0.01414 = 1.41, B 0.005/0.00707 = 0.71: A wins in-sample, and on block 1 A has
    -0.71 and B 1.41, so A ranks 1 of 2, w = 1/3, logit ln(1/2). The other split
    mirrors it. Both logits are below zero: PBO = 1."""
    a = [0.01, 0.03, -0.02, 0.00]
    b = [0.00, 0.01, 0.01, 0.03]
    result = probability_of_backtest_overfitting(np.column_stack([a, b]), blocks=2)
    assert result.logits == pytest.approx((math.log(0.5), math.log(0.5)))
    assert result.pbo == 1.0
    assert (result.strategies, result.blocks, result.observations) == (2, 2, 4)


def test_pbo_of_skill_and_of_none() -> None:
    """The paper's two regimes: a strategy better than the rest in every block is never
    overfit (PBO 0); with no skill at all (independent normal returns, equal means) the
    in-sample winner lands above or below the out-of-sample median by chance (PBO about
    1/2, here averaged over 20 matrices of 20 strategies x 400 periods, S = 8)."""
    rng = np.random.default_rng(12)
    noise = rng.normal(0, 0.01, size=(400, 20))
    skilled = noise.copy()
    skilled[:, 7] = np.abs(skilled[:, 7]) + 0.001
    assert probability_of_backtest_overfitting(skilled, blocks=8).pbo == 0.0
    pbos = [
        probability_of_backtest_overfitting(rng.normal(0, 0.01, (400, 20)), blocks=8).pbo
        for _ in range(20)
    ]
    assert 0.35 < float(np.mean(pbos)) < 0.65


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float64, (24, 4), elements=st.floats(-0.05, 0.05, allow_nan=False)),
    st.sampled_from([2, 4, 6]),
)
def test_pbo_is_a_probability_over_every_split(matrix: np.ndarray, blocks: int) -> None:
    result = probability_of_backtest_overfitting(matrix, blocks=blocks)
    assert len(result.logits) == math.comb(blocks, blocks // 2)
    assert 0.0 <= result.pbo <= 1.0
    assert all(math.isfinite(lam) for lam in result.logits)


@pytest.mark.parametrize(("shape", "blocks"), [((10, 1), 2), ((10, 3), 3), ((10, 3), 12)])
def test_pbo_refuses_bad_settings(shape: tuple[int, int], blocks: int) -> None:
    with pytest.raises(UsageError, match=r"must|need"):
        probability_of_backtest_overfitting(np.zeros(shape), blocks=blocks)
