"""Per-cell statistics for patching grids: a bootstrap CI, a sign-flip test and a correction per grid.

A patching (or AtP, or attention) grid is a long table with one effect per unit (a pair, an
example) and cell (site, layer, head, position). A heatmap of cell means invites reading every
bright cell as a finding; with ~30 layers x ~120 positions x 4 sites = 14 400 cells, a few dozen
cells at |mean| > 2 SE are expected from noise alone. So each cell gets:

  mean, ci_low, ci_high   percentile bootstrap over units (shared resampling for every cell:
                          one [n_boot, n_units] multinomial count matrix times the [n_units, n_cells]
                          value matrix, so the whole grid costs one matrix product)
  p                       two-sided sign-flip (permutation) test of mean = 0: under the null the
                          per-unit effects are symmetric about 0, so flipping signs at random gives
                          the null distribution of the mean, again one [n_perm, n_units] x
                          [n_units, n_cells] product; p = (1 + #{|flipped| >= |observed|}) / (1 + n_perm)
  p_adj, significant      a correction over every cell of the grid

Correction: Benjamini-Hochberg (false discovery rate) is the default. A patching grid is a
screen: many cells are expected to carry the count (every layer at the changed word, the late
layers at the answer) and the question is which bright cells to believe, so a 5 % share of
false discoveries is the right guarantee, and it keeps power as the grid grows. Holm (family-wise
error: no false positive at all with 95 % probability) is there for small confirmatory families,
e.g. the few cells AtP picks for exact patching. Holm also needs the Monte Carlo p-value floor
1 / (1 + n_perm) to be below alpha / n_cells, which a 14 400-cell grid cannot reach with a cheap
n_perm; the frame's attrs say when that is the case (`p_floor`, `holm_can_reject`).

NaNs (a pair without that position) are missing values: each cell uses the units it has.
`countlens.stats` holds the vectorised bootstrap and the two corrections (the benchmark's
comparisons use the same Holm).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from countlens.stats import benjamini_hochberg, bootstrap_cells, holm

CELL = ("site", "layer", "head", "position")
CORRECTIONS = ("bh", "holm")


def sign_flip_p(values: np.ndarray, n_perm: int = 10000, seed: int = 0, chunk: int = 1000) -> np.ndarray:
    """Two-sided sign-flip p-value of mean = 0 per column of values [n_units, n_cells] (NaN = missing).

    With n_units <= 12 every sign pattern is enumerated (exact p); otherwise n_perm random ones.
    A column whose values are all 0 gets p = 1; one without values gets NaN."""
    x = np.asarray(values, dtype=float)
    present = np.isfinite(x)
    x0 = np.where(present, x, 0.0)
    n_units = x.shape[0]
    n = present.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = np.abs(x0.sum(0)) / n
    if n_units <= 12:
        signs = 1.0 - 2.0 * ((np.arange(2 ** n_units)[:, None] >> np.arange(n_units)) & 1)
        extra = 0  # the identity pattern is one of the enumerated ones
    else:
        rng = np.random.default_rng(seed)
        signs = None
        extra = 1
    total = n_perm if signs is None else len(signs)
    hits = np.zeros(x.shape[1])
    tol = 1e-12 * np.maximum(1.0, obs)  # ties count as at least as extreme
    for i in range(0, total, chunk):
        s = signs[i:i + chunk] if signs is not None else \
            rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, total - i), n_units))
        with np.errstate(invalid="ignore", divide="ignore"):
            flipped = np.abs(s @ x0) / n
        hits += (flipped >= obs - tol).sum(0)
    p = (hits + extra) / (total + extra)
    p[n == 0] = np.nan
    return p


def cell_stats(table: pd.DataFrame, value: str = "value", cells: Sequence[str] = CELL, unit: str = "pair",
               correction: str = "bh", alpha: float = 0.05, n_boot: int = 2000, n_perm: int = 10000,
               seed: int = 0) -> pd.DataFrame:
    """One row per cell: n, mean, ci_low, ci_high (bootstrap 95 %), p (sign flip), p_adj, significant.

    `table` holds one `value` per (unit, cell): filter a patching table to one metric and one
    direction first (a ValueError names the duplicated cells otherwise). `correction` is "bh"
    (default, see the module docstring) or "holm"; significant = p_adj < alpha. attrs: n_cells,
    n_units, correction, alpha, p_floor (the smallest p the test can give) and holm_can_reject.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    cells = list(cells)
    missing = [c for c in [*cells, unit, value] if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {missing}")
    dup = table.duplicated([unit, *cells])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} rows repeat a ({unit}, cell): filter to one metric and direction "
                         f"first (e.g. {table.loc[dup, cells].iloc[0].to_dict()})")
    wide = table.pivot(index=unit, columns=cells, values=value)
    x = wide.to_numpy(dtype=float)
    mean, lo, hi = bootstrap_cells(x, n_boot, seed, alpha)
    p = sign_flip_p(x, n_perm, seed)
    p_adj = benjamini_hochberg(p) if correction == "bh" else holm(p)
    out = wide.columns.to_frame(index=False)
    out["n"] = np.isfinite(x).sum(0)
    out["mean"], out["ci_low"], out["ci_high"] = mean, lo, hi
    out["p"], out["p_adj"] = p, p_adj
    out["significant"] = np.nan_to_num(p_adj, nan=1.0) < alpha
    m = int(np.isfinite(p).sum())
    floor = 1.0 / (1 + n_perm) if x.shape[0] > 12 else 2.0 / 2 ** x.shape[0]
    out.attrs.update(n_cells=m, n_units=int(x.shape[0]), correction=correction, alpha=alpha,
                     p_floor=floor, holm_can_reject=bool(m and floor * m < alpha))
    return out
