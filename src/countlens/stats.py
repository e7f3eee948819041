"""Small statistics shared by every stage: bootstrap confidence intervals over items, and the
Wilson score interval for proportions (exact-match rates, accuracies, success rates)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

WILSON = "wilson"


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over items (NaNs dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for `successes` out of `n`.

    Unlike a bootstrap of 0/1 values it does not collapse at 0 % or 100 %: 100/100 gives
    [0.963, 1]. Matches Newcombe (1998), Table I, method 3. `n == 0` gives (nan, nan).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # clamp rounding only: the exact interval is inside [0, 1] and holds 0 (or 1) when p is 0 (or 1)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def interval_label(level: float = 0.95) -> str:
    """How summaries name the proportion interval, e.g. 'wilson 95%'."""
    return f"{WILSON} {100 * level:g}%"


def _adjust(p: np.ndarray, step) -> np.ndarray:
    """Adjusted p-values in the given order; NaNs stay NaN and are not counted in the family."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = np.minimum(step(p[order], len(ok)), 1.0)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error)."""
    return _adjust(p, lambda q, m: np.maximum.accumulate((m - np.arange(m)) * q))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjustment (false discovery rate; q-values)."""
    return _adjust(p, lambda q, m: np.minimum.accumulate((q * m / np.arange(1, m + 1))[::-1])[::-1])


def bootstrap_cells(values: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                    chunk: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per column of values [n_units, n_cells] (NaN = missing): percentile bootstrap
    over units with one resampling shared by every column."""
    x = np.asarray(values, dtype=float)
    present = np.isfinite(x)
    x0 = np.where(present, x, 0.0)
    n_units = x.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x0.sum(0) / present.sum(0)
    if n_units == 0:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(float)
    boots = np.empty((n_boot, x.shape[1]))
    complete = bool(present.all())
    pf = present.astype(float)
    for i in range(0, n_boot, chunk):
        c = counts[i:i + chunk]
        with np.errstate(invalid="ignore", divide="ignore"):
            boots[i:i + chunk] = (c @ x0) / (n_units if complete else c @ pf)
    qs = [alpha / 2, 1 - alpha / 2]
    lo = np.full(x.shape[1], np.nan)
    hi = np.full(x.shape[1], np.nan)
    finite = np.isfinite(boots)
    full = finite.all(0)  # nanquantile is slow: only for cells a resample can leave without a unit
    if full.any():
        lo[full], hi[full] = np.quantile(boots[:, full], qs, axis=0)
    part = finite.any(0) & ~full
    if part.any():
        lo[part], hi[part] = np.nanquantile(boots[:, part], qs, axis=0)
    return mean, lo, hi
