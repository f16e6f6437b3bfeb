"""The intervals of estimates from random chips, against hand-computed values and by coverage."""

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.statistics import mean_interval, wilson_interval, yield_estimate


def wilson_by_root_finding(passed: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval by its definition: every p with |passed/total - p| <= z sqrt(p (1 - p) / total),
    i.e. the roots of (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0."""
    p_hat, k = passed / total, z * z / total
    roots = np.sort(np.roots([1 + k, -(2 * p_hat + k), p_hat * p_hat]).real)
    return float(max(roots[0], 0.0)), float(min(roots[1], 1.0))


@pytest.mark.parametrize("passed, total, low, high", [
    (0, 5, 0.0, 0.4345),  # published values (e.g. Brown, Cai & DasGupta 2001; Newcombe 1998)
    (5, 5, 0.5655, 1.0),
    (487, 1000, 0.4561, 0.5180),
])
def test_wilson_interval_hand_values(passed, total, low, high):
    assert wilson_interval(passed, total) == pytest.approx((low, high), abs=1e-4)
    assert wilson_interval(passed, total) == pytest.approx(wilson_by_root_finding(passed, total), abs=1e-12)


def test_wilson_interval_rejects_impossible_counts():
    for passed, total in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match="passed"):
            wilson_interval(passed, total)


@pytest.mark.parametrize("rate, chips", [(0.9, 50), (0.5, 20), (0.98, 1000)])
def test_wilson_interval_covers_the_true_yield(rate, chips):
    """Simulated binomial populations at a known yield: the 95 % interval holds it about 95 % of the time."""
    rng = np.random.default_rng(7)
    passed = rng.binomial(chips, rate, size=4000)
    covered = np.mean([low <= rate <= high for low, high in (wilson_interval(int(k), chips) for k in passed)])
    assert 0.92 <= covered <= 0.985, covered


def test_mean_interval_is_students_t_and_covers_the_mean():
    values = [0.86, 0.87, 0.855, 0.88, 0.862]
    mean, sem = np.mean(values), np.std(values, ddof=1) / np.sqrt(5)
    assert mean_interval(values) == pytest.approx((mean - 2.776445 * sem, mean + 2.776445 * sem), rel=1e-6)
    assert np.isnan(mean_interval([0.9])).all()  # one value: no spread known
    rng = np.random.default_rng(3)
    samples = rng.normal(0.88, 0.01, size=(4000, 5))
    covered = np.mean([low <= 0.88 <= high for low, high in map(mean_interval, samples)])
    assert 0.935 <= covered <= 0.965, covered
    assert stats.t.ppf(0.975, 4) == pytest.approx(2.776445, rel=1e-6)


def test_yield_estimate_counts_the_spec_itself_as_passing():
    assert yield_estimate([0.9, 0.89, 0.8], 0.89) == pytest.approx((2 / 3, *wilson_interval(2, 3)))
    assert yield_estimate([0.9], 0.95, exact=True) == (0.0, 0.0, 0.0)  # a condition without randomness: exact
