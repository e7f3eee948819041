"""Statistics for benchmark tables: Wilson intervals for proportions, bootstrap CIs for means and
paired differences, McNemar's exact test, Holm's adjustment, ECE.

Seeded, so the same records always give the same table (a resumed run equals an uninterrupted one).
"""

from __future__ import annotations


import numpy as np

from countlens.bench.results import PairedStats
from countlens.stats import interval_label, wilson_ci

N_BOOT = 2000
SEED = 0
LEVEL = 0.95
INTERVAL = interval_label(LEVEL)            # proportions (accuracy, slices, error rates)
CI = f"percentile bootstrap, 95%, {N_BOOT} resamples, seed {SEED} (paired differences)"
MCNEMAR = "exact binomial on the discordant pairs, two-sided"


def proportion_ci(flags, level: float = LEVEL) -> tuple[float, float]:
    """Wilson interval of the share of true values in `flags` (0/1 or bools)."""
    flags = np.asarray(flags, dtype=bool)
    return wilson_ci(int(flags.sum()), int(flags.size), level)


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of 0/1 (or real) values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (float(lo), float(hi))



def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): `countlens.stats.holm`."""
    from countlens.stats import holm as _holm

    return [float(x) for x in _holm(np.asarray(pvalues, dtype=float))] if pvalues else []


def paired_compare(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> PairedStats:
    """Accuracy of a minus b on the same examples: paired bootstrap CI and p, and McNemar."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.size
    d = a - b
    rng = np.random.default_rng(seed)
    diffs = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n else np.array([np.nan])
    lo, hi = np.quantile(diffs, [0.025, 0.975]) if n else (np.nan, np.nan)
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())) if n and d.any() else 1.0
    bb, cc = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    return PairedStats(n=n, accuracy_a=float(a.mean()) if n else float("nan"),
                  accuracy_b=float(b.mean()) if n else float("nan"), difference=float(d.mean()) if n else float("nan"),
                  ci_low=float(lo), ci_high=float(hi), bootstrap_p=float(p), mcnemar_b=bb, mcnemar_c=cc,
                  mcnemar_p=mcnemar_exact(bb, cc))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| x share."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.size == 0:
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for k in range(bins):
        m = which == k
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)
