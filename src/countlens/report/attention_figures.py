"""Attention-to-items figures: a layer x head heatmap of matching-minus-non-matching attention.

Reads the attention stage's tidy table (query, weighting, layer, head, measure, mean, ci_low,
ci_high) and summary; nothing from the engine. One figure per query kind (answer position, list
words), raw attention and value-weighted attention side by side, each on its own symmetric colour
scale (value-weighted numbers are in units of the written vector's norm); a dot marks a head whose
95 % CI excludes 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from countlens.report._plt import plt, save

MEASURE = "diff_mean"
QUERY_TITLES = {"answer": "from the answer position", "items": "from each list word to the words before it"}
WEIGHTING_TITLES = {"attention": "attention weight", "value": "value-weighted (weight x ||v W_O||)"}


def _grid(t: pd.DataFrame, column: str) -> np.ndarray:
    L, H = int(t.layer.max()) + 1, int(t["head"].max()) + 1
    g = np.full((L, H), np.nan)
    g[t.layer.to_numpy(int), t["head"].to_numpy(int)] = t[column].to_numpy(float)
    return g


def attention_figures(table: pd.DataFrame, summary: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    t = table[table.measure == MEASURE]
    for query in [q for q in QUERY_TITLES if q in set(t["query"])]:
        tq = t[t["query"] == query]
        weightings = [w for w in WEIGHTING_TITLES if w in set(tq.weighting)]
        fig, axes = plt.subplots(1, len(weightings), figsize=(5.4 * len(weightings), 3.8), squeeze=False,
                                 layout="constrained")
        for ax, weighting in zip(axes[0], weightings):
            tw = tq[tq.weighting == weighting]
            g, lo, hi = _grid(tw, "mean"), _grid(tw, "ci_low"), _grid(tw, "ci_high")
            vmax = float(np.nanmax(np.abs(g))) or 1.0
            im = ax.imshow(g, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
            ys, xs = np.nonzero((lo > 0) | (hi < 0))
            ax.scatter(xs, ys, s=6, c="k", marker="o", label="95% CI excludes 0")
            ax.set_xticks(range(g.shape[1]))
            ax.set_yticks(range(g.shape[0]))
            ax.set_xlabel("query head")
            ax.set_ylabel("layer (block)")
            ax.set_title(WEIGHTING_TITLES[weighting], fontsize=9)
            fig.colorbar(im, ax=ax, label="matching - non-matching, per word")
        axes[0][0].legend(fontsize=7, loc="upper right")
        fig.suptitle(f"Attention to matching vs non-matching list words {QUERY_TITLES[query]} "
                     f"(n={summary.get('n_examples')} examples)", fontsize=10)
        paths.append(save(fig, out_dir / f"attention_heads_{query}.png"))
    return paths
