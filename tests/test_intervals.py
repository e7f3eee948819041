"""Wilson score intervals (stats.wilson_ci), Holm's adjustment and McNemar on known tables."""

import math

import numpy as np
import pandas as pd
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


WILSON_50_OF_50 = 50 / (50 + 1.959964 ** 2)   # 0.92865: the lower bound of 50 right out of 50


def test_probe_accuracy_at_100_percent_has_a_wilson_interval_below_1():
    """A probe that is right on all 50 held-out examples: [0.929, 1], not the bootstrap's [1, 1]."""
    from countlens.interp.probe_fit import Cell, FitConfig, fit_cell

    y = np.repeat(np.arange(5), 10)
    rng = np.random.default_rng(0)
    x = (np.eye(5)[y] * 5 + rng.normal(0, 0.1, (50, 5))).astype(np.float32)   # the count, one-hot: separable
    cell = Cell(key=0, position="last", item=-1, rows=np.arange(50), examples=np.arange(50), y=y,
                y_control=rng.integers(0, 3, 50), y_shuffled=rng.permutation(y), fold=np.arange(50) % 5)
    fit = fit_cell(x, cell, FitConfig(n_boot=200), ("control",), baselines=True)
    acc, lo, hi = fit.metrics["logistic_accuracy"]
    assert acc == 1.0 and hi == 1.0
    assert lo == pytest.approx(WILSON_50_OF_50, abs=1e-6) and lo < 0.93
    # the majority class (10 of 50 right) gets the same kind of interval
    assert fit.metrics["majority_accuracy"][1:] == pytest.approx(wilson_ci(10, 50))
    # selectivity is a mean of paired differences: still a bootstrap, an interval around its value
    sel, s_lo, s_hi = fit.metrics["selectivity"]
    assert s_lo < sel < s_hi or s_lo == sel == s_hi


def test_steering_success_at_100_and_0_percent_has_wilson_intervals():
    from countlens.interp.steering import SteerOptions, summarize

    rows = []
    for i in range(50):
        n = i % 5
        for vector, answer in (("mean-diff", n + 1), ("random", n)):
            rows.append({"example": str(i), "n": n, "vector": vector, "layer": "1", "scale": 1.0, "answer": answer,
                         "base_answer": n})
    t = pd.DataFrame(rows)
    t["target"] = t.n + 1
    t["success"] = (t.answer == t.target).astype(float)
    t["shift"] = t.answer - t.base_answer
    s, _ = summarize(t, ["emb", "1", "2"], 3, SteerOptions(vectors=("mean-diff", "random")), 5)
    best = s["mean-diff"]["best"]
    assert best["success_rate"] == 1.0 and best["n"] == 50 and best["ci_high"] == 1.0
    assert best["ci_low"] == pytest.approx(WILSON_50_OF_50, abs=1e-6)
    assert best["control_success_rate"] == 0.0 and best["control_ci_low"] == 0.0
    assert best["control_ci_high"] == pytest.approx(1 - WILSON_50_OF_50, abs=1e-6)
    assert s["interval"].startswith("wilson 95%")


def test_probe_text_table_is_in_percent_with_wilson_intervals_and_aligned():
    from countlens.report.text import probe_table

    row = {"accuracy": 1.0, "ci_low": 0.9287, "ci_high": 1.0, "control_accuracy": 0.2, "selectivity": 0.8, "r2": 0.97}
    s = {"n_examples": 50, "site": "resid", "split": "random", "folds": 5,
         "per_layer": [{"layer": "emb", **row, "accuracy": 0.2, "ci_low": 0.1124, "ci_high": 0.3304,
                        "selectivity": -0.00001}, {"layer": 3, **row}],
         "majority": {"accuracy": 0.2}, "best_layer": {"layer": 3, **row}}
    lines = probe_table(s)
    assert "Wilson" in lines[0] and "Wilson 95%" in lines[1]
    assert "100.0% [92.9%, 100.0%]" in lines[3] and "20.0% [11.2%, 33.0%]" in lines[2]
    assert "-0.0" not in lines[2]
    # columns line up: each column ends at the same character in the header and every row
    ends = [[m.end() for m in __import__("re").finditer(r"\S+(?: \S+)*", line)] for line in lines[1:4]]
    assert ends[0][1:] == ends[1][1:] == ends[2][1:]
