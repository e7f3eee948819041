"""Wilson score intervals (stats.wilson_ci), Holm's adjustment and McNemar on known tables."""

import math

import numpy as np
import pytest

from countlens.bench import stats as bstats
from countlens.stats import interval_label, wilson_ci


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
# (Wilson score, no continuity correction), and 7/20 as statsmodels' proportion_confint(method="wilson").
@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (7, 20, 0.1812, 0.5671),
])
def test_wilson_matches_published_values(k, n, low, high):
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_does_not_collapse_at_0_and_100_percent():
    lo, hi = wilson_ci(100, 100)
    assert hi == 1.0 and lo < 1 and lo == pytest.approx(100 / (100 + 1.959964 ** 2), abs=1e-6)  # 0.96301
    assert lo == pytest.approx(0.9630, abs=1e-4)
    lo, hi = wilson_ci(0, 100)
    assert lo == 0.0 and hi > 0 and hi == pytest.approx(0.0370, abs=1e-4)
    # the bootstrap of the same 0/1 values collapses to a point
    assert bstats.bootstrap_ci(np.ones(100)) == (1.0, 1.0)


def test_wilson_level_symmetry_and_errors():
    lo95, hi95 = wilson_ci(7, 20)
    lo99, hi99 = wilson_ci(7, 20, 0.99)
    assert lo99 < lo95 < 0.35 < hi95 < hi99
    lo, hi = wilson_ci(13, 20)
    assert (lo, hi) == pytest.approx((1 - hi95, 1 - lo95), abs=1e-12)   # k/n mirrors (n-k)/n
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    for bad in [(5, 4, 0.95), (-1, 4, 0.95), (1, 4, 1.0), (1, 4, 0.0)]:
        with pytest.raises(ValueError):
            wilson_ci(*bad)
    assert interval_label() == "wilson 95%" and interval_label(0.9) == "wilson 90%"
    assert bstats.proportion_ci([True] * 7 + [False] * 13) == wilson_ci(7, 20)


def test_mcnemar_exact_on_known_tables():
    # two-sided exact: 2 x P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)
    assert bstats.mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 2 ** 7)        # 0.125
    assert bstats.mcnemar_exact(5, 0) == pytest.approx(2 / 2 ** 5)                  # 0.0625
    assert bstats.mcnemar_exact(23, 1) == pytest.approx(2 * 25 / 2 ** 24)           # 2.98e-06
    # a 2x2 table of 30 paired answers: 20 both right, 5 right only under a, 1 only under b, 4 neither
    a = np.array([1] * 20 + [1] * 5 + [0] * 1 + [0] * 4)
    b = np.array([1] * 20 + [0] * 5 + [1] * 1 + [0] * 4)
    p = bstats.paired_compare(a, b)
    assert (p.n, p.mcnemar_b, p.mcnemar_c) == (30, 5, 1)
    assert p.mcnemar_p == pytest.approx(2 * (1 + 6) / 2 ** 6)                        # 0.21875
    assert p.difference == pytest.approx(4 / 30)


def test_holm():
    assert bstats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert bstats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert bstats.holm([]) == []
