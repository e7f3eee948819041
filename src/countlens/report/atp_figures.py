"""AtP vs exact patching: one scatter per site kind of the cells' mean effects.

Reads `atp.cell_table`'s frame (site, layer, head, position, atp, exact, n_pairs) and `atp.compare`'s
(site, spearman, spearman_cells, ...); nothing from the engine. Points on the diagonal are cells
AtP estimates exactly; points near the x axis far from 0 are cells AtP misses (saturated
attention, cancellation: see `countlens.interp.atp`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from countlens.report._plt import plt, save

SITE_ORDER = ("resid", "attn", "mlp", "head")


def atp_figures(cells: pd.DataFrame, comparison: pd.DataFrame, out_dir: str | Path,
                metric: str = "normalised effect") -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sites = [s for s in SITE_ORDER if s in set(cells.site)]
    if not sites:
        return []
    stats = comparison.set_index("site")
    fig, axes = plt.subplots(1, len(sites), figsize=(3.9 * len(sites), 3.8), squeeze=False, layout="constrained")
    for ax, site in zip(axes[0], sites):
        c = cells[cells.site == site]
        ax.scatter(c.exact, c.atp, s=8, alpha=0.6)
        lo = float(min(c.exact.min(), c.atp.min(), 0.0))
        hi = float(max(c.exact.max(), c.atp.max(), 0.0))
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--", label="AtP = exact")
        r = stats.loc[site] if site in stats.index else None
        rho = "" if r is None else f"\nSpearman {r.spearman_cells:.2f} (cells), {r.spearman:.2f} (pair x cell)"
        ax.set_title(f"{site} (n={len(c)} cells){rho}", fontsize=9)
        ax.set_xlabel(f"exact patching ({metric})")
        ax.set_ylabel(f"AtP estimate ({metric})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Attribution patching vs exact activation patching, mean over pairs per cell", fontsize=10)
    return [save(fig, out_dir / "atp_vs_exact.png")]
