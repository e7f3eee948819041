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
